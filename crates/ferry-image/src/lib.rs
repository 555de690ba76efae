//! The ferry image: a directory of small, checksummed protobuf records plus raw page files.
//!
//! Every record file has this layout (little-endian):
//!
//! ```text
//! +--------+---------+------+--------------+--------+----------+-----------------+
//! | 0..8   | 8..12   |12..16| 16..24       | 24..28 | 28..32   | 32..            |
//! | magic  | version | kind | payload len  | crc32  | reserved | protobuf payload|
//! +--------+---------+------+--------------+--------+----------+-----------------+
//! ```
//!
//! Page files (`pages-PID.img`) start with a one-page header (magic, version) and then hold raw
//! pages at page-aligned offsets, so restore can copy them straight from the page cache.
//! `inventory.img` is written last and lists every other file with its size and checksum:
//! restore checks all of them before it creates a single process, so a truncated or corrupted
//! image is refused as a whole.
//!
//! This crate has no Linux dependency so its decoders can be fuzzed and tested anywhere.

#![forbid(unsafe_code)]

pub mod dir;
pub mod hex;
pub mod schema;
pub mod sign;

pub use dir::{ImageReader, ImageSink, ImageWriter, StreamFile};
pub use schema::*;

use prost::Message;

/// Magic at the start of every record file.
pub const RECORD_MAGIC: [u8; 8] = *b"FERRYIMG";
/// Magic at the start of every page file.
pub const PAGES_MAGIC: [u8; 8] = *b"FERRYPGS";
/// Version of the on-disk format (independent of the tool's version).
pub const FORMAT_VERSION: u32 = 10;
/// Oldest format version this build can read.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// Size of a record header.
pub const HEADER_LEN: usize = 32;
/// Largest record payload accepted before decoding (metadata only; pages live elsewhere).
pub const MAX_RECORD_LEN: u64 = 256 << 20;
/// Page size used by the image format.
pub const PAGE_SIZE: u64 = 4096;

/// The kind of record a file holds; checked on read so files cannot be swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordKind {
    Inventory = 1,
    Process = 2,
    /// `signature.img` (see [`sign`]).
    Signature = 3,
}

/// Why an image file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{file}: i/o error")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A step of writing an image failed; `file` is the file's name in the image directory
    /// (never the hidden name it is written under until the commit).
    #[error("cannot {action} {file}")]
    Write {
        action: &'static str,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a ferry image file (bad magic)")]
    BadMagic { file: String },
    #[error(
        "{file}: format version {version} is not supported (this ferry reads {MIN_FORMAT_VERSION}..={FORMAT_VERSION})"
    )]
    Version { file: String, version: u32 },
    #[error("{file}: holds a record of kind {found}, expected {expected}")]
    Kind { file: String, found: u32, expected: u32 },
    #[error("{file}: record of {len} bytes exceeds the {MAX_RECORD_LEN}-byte limit")]
    TooLarge { file: String, len: u64 },
    #[error("{file}: truncated (expected {expected} bytes, found {found})")]
    Truncated { file: String, expected: u64, found: u64 },
    #[error("{file}: checksum mismatch (the file is corrupted)")]
    Checksum { file: String },
    #[error("{file}: cannot decode record")]
    Decode {
        file: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{dir}: incomplete image (no inventory.img: the dump did not finish)")]
    Incomplete { dir: String },
    #[error("{file}: listed in the inventory but missing")]
    Missing { file: String },
    #[error("{file}: {what}")]
    Invalid { file: String, what: String },
    #[error("{file}: is {what}, not a regular file")]
    NotRegular { file: String, what: &'static str },
    #[error("{file}: BLAKE3 digest mismatch (the file was corrupted or changed after the dump)")]
    Digest { file: String },
    #[error("{dir}: image is not signed (no signature.img), refused by --verify")]
    Unsigned { dir: String },
    #[error("{file}: signed by key {key}, which is not in the trusted list")]
    Untrusted { file: String, key: String },
    #[error("{file}: bad signature (the image was changed after it was signed)")]
    BadSignature { file: String },
}

/// Encode a record file (header + payload).
pub fn encode_record<M: Message>(kind: RecordKind, msg: &M) -> Vec<u8> {
    let payload = msg.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Check and decode a record file's bytes. `file` names it in errors.
pub fn decode_record<M: Message + Default>(file: &str, kind: RecordKind, bytes: &[u8]) -> Result<M, ImageError> {
    let file = file.to_string();
    if bytes.len() < HEADER_LEN {
        if bytes.len() >= 8 && bytes[..8] != RECORD_MAGIC {
            return Err(ImageError::BadMagic { file });
        }
        return Err(ImageError::Truncated { file, expected: HEADER_LEN as u64, found: bytes.len() as u64 });
    }
    if bytes[..8] != RECORD_MAGIC {
        return Err(ImageError::BadMagic { file });
    }
    let version = le_u32(bytes, 8);
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(ImageError::Version { file, version });
    }
    let found = le_u32(bytes, 12);
    if found != kind as u32 {
        return Err(ImageError::Kind { file, found, expected: kind as u32 });
    }
    let len = le_u64(bytes, 16);
    if len > MAX_RECORD_LEN {
        return Err(ImageError::TooLarge { file, len });
    }
    let payload = &bytes[HEADER_LEN..];
    if (payload.len() as u64) != len {
        return Err(ImageError::Truncated { file, expected: HEADER_LEN as u64 + len, found: bytes.len() as u64 });
    }
    if crc32fast::hash(payload) != le_u32(bytes, 24) {
        return Err(ImageError::Checksum { file });
    }
    M::decode(payload).map_err(|source| ImageError::Decode { file, source })
}

/// The first page of a page file.
pub fn pages_header() -> Vec<u8> {
    let mut h = vec![0u8; PAGE_SIZE as usize];
    h[..8].copy_from_slice(&PAGES_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Magic of a compressed page file (`dump --compress`): after the header page, one zstd stream
/// of what would follow it in a plain page file, whose offsets the page runs keep. A ferry that
/// does not know it refuses the file (bad magic) instead of reading it as pages.
pub const PAGES_ZSTD_MAGIC: [u8; 8] = *b"FERRYPGZ";

/// The first page of a compressed page file.
pub fn pages_header_zstd() -> Vec<u8> {
    let mut h = pages_header();
    h[..8].copy_from_slice(&PAGES_ZSTD_MAGIC);
    h
}

/// Whether a (checked) page file header is that of a compressed page file.
pub fn pages_compressed(header: &[u8]) -> bool {
    header.len() >= 8 && header[..8] == PAGES_ZSTD_MAGIC
}

/// Check a page file's header page.
pub fn check_pages_header(file: &str, header: &[u8]) -> Result<(), ImageError> {
    let file = file.to_string();
    if header.len() < 12 {
        return Err(ImageError::Truncated { file, expected: PAGE_SIZE, found: header.len() as u64 });
    }
    if header[..8] != PAGES_MAGIC && header[..8] != PAGES_ZSTD_MAGIC {
        return Err(ImageError::BadMagic { file });
    }
    let version = le_u32(header, 8);
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(ImageError::Version { file, version });
    }
    Ok(())
}

/// Name of the record file of process `pid`.
pub fn process_file(pid: i32) -> String {
    format!("process-{pid}.img")
}

/// Name of the page file of process `pid`.
pub fn pages_file(pid: i32) -> String {
    format!("pages-{pid}.img")
}

/// Name of the inventory file.
pub const INVENTORY: &str = "inventory.img";

/// Name of the signature file (`dump --sign`): not listed in the inventory, which it signs.
pub const SIGNATURE: &str = "signature.img";

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Process {
        Process {
            pid: 42,
            comm: "x".into(),
            mm: Some(Mm {
                vmas: vec![Vma { start: 0x1000, end: 0x3000, kind: VmaKind::Anon as i32, ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode_record(RecordKind::Process, &sample());
        let back: Process = decode_record("p", RecordKind::Process, &bytes).expect("decodes");
        assert_eq!(back, sample());
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = encode_record(RecordKind::Process, &sample());
        for i in 0..bytes.len() {
            if (28..32).contains(&i) {
                continue; // reserved
            }
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode_record::<Process>("p", RecordKind::Process, &b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let bytes = encode_record(RecordKind::Process, &sample());
        for n in 0..bytes.len() {
            assert!(decode_record::<Process>("p", RecordKind::Process, &bytes[..n]).is_err());
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn wrong_kind_is_refused() {
        let bytes = encode_record(RecordKind::Process, &sample());
        let e = decode_record::<Inventory>("inv", RecordKind::Inventory, &bytes).unwrap_err();
        assert!(matches!(e, ImageError::Kind { .. }));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn huge_length_is_refused_before_decoding() {
        let mut bytes = encode_record(RecordKind::Process, &sample());
        bytes[16..24].copy_from_slice(&(MAX_RECORD_LEN + 1).to_le_bytes());
        let e = decode_record::<Process>("p", RecordKind::Process, &bytes).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }));
    }

    #[test]
    fn json_renders() {
        let s = serde_json::to_string(&sample()).expect("json");
        assert!(s.contains("\"pid\":42"));
    }
}
