//! Image signatures: XEdDSA (the Signal specification, revision 1) over the node's X25519 key.
//!
//! A node's migration key (`ferry keygen`: `node.key`, `node.pub`, `trusted`) is an X25519 key
//! pair. XEdDSA signs with that same private key and verifies with the same 32-byte public key
//! that `trusted` files already list, so existing key directories sign and verify images as
//! they are, with no second key to create, distribute or trust. The signature is an Ed25519
//! signature by the Edwards form of the key (sign bit 0): any Ed25519 verifier accepts it given
//! that Edwards public key.
//!
//! What is signed is [`SIGNED_PREFIX`] followed by the image digest: the BLAKE3 hash of the
//! whole `inventory.img`, which lists every other file with its size and BLAKE3 digest.

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{clamp_integer, Scalar};
use sha2::{Digest, Sha512};

/// Domain separation: a signature over an image can never be taken for one over anything else
/// a node key signs (the Noise handshake signs nothing; this keeps it so for future uses).
pub const SIGNED_PREFIX: &[u8] = b"ferry image signature v1\0";

/// The name of the scheme, as recorded in `ImageSignature.scheme`.
pub const SCHEME: &str = "xeddsa-25519-sha512";

/// A node's private X25519 key, used to sign images.
#[derive(Clone)]
pub struct SigningKey {
    private: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", crate::hex::hex(&self.public()))
    }
}

impl SigningKey {
    /// The raw private key bytes as `node.key` holds them (clamped when used, as X25519 does).
    pub fn from_bytes(private: [u8; 32]) -> SigningKey {
        SigningKey { private }
    }

    /// The X25519 public key (what `node.pub` and `trusted` hold).
    pub fn public(&self) -> [u8; 32] {
        MontgomeryPoint::mul_base_clamped(self.private).to_bytes()
    }

    /// Sign `msg` (XEdDSA, with 64 fresh random bytes).
    pub fn sign(&self, msg: &[u8]) -> Result<[u8; 64], getrandom::Error> {
        let mut z = [0u8; 64];
        getrandom::fill(&mut z)?;
        Ok(self.sign_with(msg, &z))
    }

    /// XEdDSA sign with the given random bytes `z`.
    fn sign_with(&self, msg: &[u8], z: &[u8; 64]) -> [u8; 64] {
        let k = Scalar::from_bytes_mod_order(clamp_integer(self.private));
        let e = EdwardsPoint::mul_base_clamped(self.private).compress().to_bytes();
        let mut a_pub = e;
        a_pub[31] &= 0x7f;
        let a = if e[31] & 0x80 != 0 { -k } else { k };
        // r = hash1(a || M || Z): hash_i prefixes 2^256 - 1 - i as 32 little-endian bytes.
        let mut prefix = [0xffu8; 32];
        prefix[0] = 0xfe;
        let r = wide(Sha512::new().chain_update(prefix).chain_update(a.as_bytes()).chain_update(msg).chain_update(z));
        let big_r = (&r * ED25519_BASEPOINT_TABLE).compress().to_bytes();
        let h = wide(Sha512::new().chain_update(big_r).chain_update(a_pub).chain_update(msg));
        let s = r + h * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&big_r);
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }
}

fn wide(h: Sha512) -> Scalar {
    let mut out = [0u8; 64];
    out.copy_from_slice(&h.finalize());
    Scalar::from_bytes_mod_order_wide(&out)
}

/// Whether `bytes` (little-endian, 256 bits) is a field element below p = 2^255 - 19.
fn below_p(bytes: &[u8; 32]) -> bool {
    if bytes[31] & 0x80 != 0 {
        return false;
    }
    !(bytes[31] == 0x7f && bytes[1..31].iter().all(|&b| b == 0xff) && bytes[0] >= 0xed)
}

/// XEdDSA verify: whether `sig` is a signature of `msg` by the X25519 public key `public`.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    if !below_p(public) {
        return false;
    }
    let mut r = [0u8; 32];
    r.copy_from_slice(&sig[..32]);
    let mut s = [0u8; 32];
    s.copy_from_slice(&sig[32..]);
    let mut ry = r;
    ry[31] &= 0x7f;
    if !below_p(&ry) {
        return false;
    }
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s)) else { return false };
    let Some(a) = MontgomeryPoint(*public).to_edwards(0) else { return false };
    let a_pub = a.compress().to_bytes();
    // (The Edwards key must itself decode: it does, as it came from a point; but a small-order
    // key would let anything verify, so refuse those.)
    if a.is_small_order() || CompressedEdwardsY(r).decompress().is_none() {
        return false;
    }
    let h = wide(Sha512::new().chain_update(r).chain_update(a_pub).chain_update(msg));
    let check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&(-h), &a, &s);
    check.compress().to_bytes() == r
}

/// The message an image signature covers: the prefix and the image digest.
pub fn signed_message(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = SIGNED_PREFIX.to_vec();
    m.extend_from_slice(digest);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes([seed; 32])
    }

    #[test]
    fn signs_and_verifies() {
        for seed in 1..20u8 {
            let k = key(seed);
            let sig = k.sign(b"hello").expect("random");
            assert!(verify(&k.public(), b"hello", &sig), "seed {seed}");
            assert!(!verify(&k.public(), b"hellp", &sig), "seed {seed}: other message");
            assert!(!verify(&key(seed + 100).public(), b"hello", &sig), "seed {seed}: other key");
            for i in 0..64 {
                let mut bad = sig;
                bad[i] ^= 1;
                assert!(!verify(&k.public(), b"hello", &bad), "seed {seed}: flipped bit in byte {i}");
            }
        }
    }

    /// A fixed vector, checked independently: the signature verifies as a plain Ed25519
    /// signature (Python `cryptography`'s Ed25519PublicKey) under the Edwards key
    /// y = (u - 1) / (u + 1) with sign bit 0, and the X25519 public key is what X25519 derives from the private key.
    #[test]
    fn fixed_vector() {
        let k = SigningKey::from_bytes(core::array::from_fn(|i| i as u8 * 7 + 3));
        let z = core::array::from_fn(|i| (i as u8).wrapping_mul(13));
        let sig = k.sign_with(b"ferry", &z);
        assert_eq!(crate::hex::hex(&k.public()), VECTOR_PUB);
        assert_eq!(crate::hex::hex(&sig), VECTOR_SIG);
        assert!(verify(&k.public(), b"ferry", &sig));
    }

    const VECTOR_PUB: &str = "bb50ff9e82a574cfbf820e97f60fb9c143ec7415cf514f8cfd98eff59e059614";
    const VECTOR_SIG: &str = concat!(
        "1d314515589e81fe690e77ae2d2e21889e805922f58bd9e6f19036561625db49",
        "e32c96dded33d973c927c85b0a1195ef3b4b536199a6b8cf5960cd1f88112f0c"
    );
}
