//! `/proc/PID/auxv`: the ELF auxiliary vector the kernel gave the process at exec. ferry
//! stores it so the restored `mm` reports the same vector (`prctl(PR_SET_MM_AUXV)`) and reads
//! `AT_SYSINFO_EHDR` from it to find the vDSO.
//!
//! The file is binary: native-endian `u64` (type, value) pairs ending with `AT_NULL`.

use crate::ParseError;

/// The `a_type` that ends the vector.
pub const AT_NULL: u64 = 0;

/// Parse `/proc/PID/auxv` into (type, value) pairs, up to and including `AT_NULL`; bytes after
/// it are ignored.
pub fn parse_auxv(bytes: &[u8]) -> Result<Vec<(u64, u64)>, ParseError> {
    let mut out = Vec::new();
    for pair in bytes.chunks(16) {
        let (Some(key), Some(value)) = (pair.get(..8).and_then(word), pair.get(8..).and_then(word)) else {
            return Err(ParseError::AuxvLength { len: bytes.len() });
        };
        out.push((key, value));
        if key == AT_NULL {
            return Ok(out);
        }
    }
    Err(ParseError::AuxvUnterminated)
}

fn word(b: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(pairs: &[(u64, u64)]) -> Vec<u8> {
        pairs.iter().flat_map(|(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes())).collect()
    }

    #[test]
    fn stops_at_at_null() {
        let mut b = bytes(&[(33, 0x7fff_0000), (6, 4096), (AT_NULL, 0)]);
        b.extend_from_slice(&[0xff; 20]);
        assert_eq!(parse_auxv(&b), Ok(vec![(33, 0x7fff_0000), (6, 4096), (AT_NULL, 0)]));
    }

    #[test]
    fn unterminated_or_truncated_is_an_error() {
        assert_eq!(parse_auxv(&[]), Err(ParseError::AuxvUnterminated));
        assert_eq!(parse_auxv(&bytes(&[(6, 4096)])), Err(ParseError::AuxvUnterminated));
        let b = bytes(&[(6, 4096), (AT_NULL, 0)]);
        for cut in [1, 8, 15] {
            assert_eq!(parse_auxv(&b[..16 + cut]), Err(ParseError::AuxvLength { len: 16 + cut }));
        }
        assert_eq!(ParseError::AuxvLength { len: 20 }.to_string(), "auxv length 20 is not a multiple of 16");
    }
}
