//! Per-file checksums for the backup manifest, computed as the bytes stream through
//! (CRC-32C with the `crc32c` crate's hardware path, SHA-2 with `sha2`).

use sha2::Digest as _;
use std::fmt;
use std::str::FromStr;

/// `--manifest-checksums`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    None,
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Algorithm, String> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Algorithm::None,
            "CRC32C" => Algorithm::Crc32c,
            "SHA224" => Algorithm::Sha224,
            "SHA256" => Algorithm::Sha256,
            "SHA384" => Algorithm::Sha384,
            "SHA512" => Algorithm::Sha512,
            _ => {
                return Err(format!(
                    "invalid checksum algorithm {s:?}: use NONE, CRC32C, SHA224, SHA256, SHA384 or SHA512"
                ))
            }
        })
    }
}

impl fmt::Display for Algorithm {
    /// The name used in the manifest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::None => "NONE",
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Sha224 => "SHA224",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha384 => "SHA384",
            Algorithm::Sha512 => "SHA512",
        })
    }
}

/// A running checksum.
pub enum Digest {
    None,
    Crc32c(u32),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

/// A finished checksum. CRC-32C stays a number (so that the pieces of a large file can be
/// combined); SHA-2 is its bytes. Rendered as hex only where text is needed: the wire
/// protocol and the manifest (CRC-32C as its four bytes in little-endian order, as core
/// writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Crc32c(u32),
    Sha(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChecksumError {
    #[error("checksum {0:?} is not hex")]
    NotHex(String),
    #[error("checksum {0:?} has the length of no checksum algorithm (CRC-32C: 4 bytes, SHA-2: 28, 32, 48 or 64)")]
    Length(String),
}

impl Checksum {
    /// The CRC-32C value, `None` for a SHA-2 checksum.
    pub fn crc32c(&self) -> Option<u32> {
        match self {
            Checksum::Crc32c(c) => Some(*c),
            Checksum::Sha(_) => None,
        }
    }
}

impl fmt::Display for Checksum {
    /// Lowercase hex, as in the manifest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checksum::Crc32c(c) => f.write_str(&hex::encode(c.to_le_bytes())),
            Checksum::Sha(b) => f.write_str(&hex::encode(b)),
        }
    }
}

impl FromStr for Checksum {
    type Err = ChecksumError;
    /// The hex text of [`fmt::Display`]; the length tells the algorithm.
    fn from_str(s: &str) -> Result<Checksum, ChecksumError> {
        let bytes = hex::decode(s).map_err(|_| ChecksumError::NotHex(s.chars().take(200).collect()))?;
        match bytes.len() {
            4 => Ok(Checksum::Crc32c(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))),
            28 | 32 | 48 | 64 => Ok(Checksum::Sha(bytes)),
            _ => Err(ChecksumError::Length(s.chars().take(200).collect())),
        }
    }
}

impl Digest {
    pub fn new(a: Algorithm) -> Digest {
        match a {
            Algorithm::None => Digest::None,
            Algorithm::Crc32c => Digest::Crc32c(0),
            Algorithm::Sha224 => Digest::Sha224(sha2::Sha224::new()),
            Algorithm::Sha256 => Digest::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => Digest::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => Digest::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Digest::None => {}
            Digest::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            Digest::Sha224(h) => h.update(data),
            Digest::Sha256(h) => h.update(data),
            Digest::Sha384(h) => h.update(data),
            Digest::Sha512(h) => h.update(data),
        }
    }

    /// The checksum, `None` for no checksum.
    pub fn finish(self) -> Option<Checksum> {
        match self {
            Digest::None => None,
            Digest::Crc32c(c) => Some(Checksum::Crc32c(c)),
            Digest::Sha224(h) => Some(Checksum::Sha(h.finalize().to_vec())),
            Digest::Sha256(h) => Some(Checksum::Sha(h.finalize().to_vec())),
            Digest::Sha384(h) => Some(Checksum::Sha(h.finalize().to_vec())),
            Digest::Sha512(h) => Some(Checksum::Sha(h.finalize().to_vec())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(a: Algorithm, data: &[u8]) -> Option<String> {
        let mut d = Digest::new(a);
        // In pieces, as chunks arrive.
        for piece in data.chunks(2) {
            d.update(piece);
        }
        d.finish().map(|c| c.to_string())
    }

    #[test]
    fn as_postgres_writes_them() {
        // Values observed in manifests written by PostgreSQL 15 (see postgres-facts §6).
        assert_eq!(sum(Algorithm::Crc32c, b"15\n").as_deref(), Some("8a744722"));
        assert_eq!(sum(Algorithm::Crc32c, b"").as_deref(), Some("00000000"));
        assert_eq!(sum(Algorithm::Sha256, b"").unwrap().len(), 64);
        assert_eq!(
            sum(Algorithm::Sha224, b"abc").as_deref(),
            Some("23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7")
        );
        assert_eq!(sum(Algorithm::Sha512, b"").unwrap().len(), 128);
        assert_eq!(sum(Algorithm::None, b"x"), None);
        assert_eq!("sha384".parse::<Algorithm>().unwrap(), Algorithm::Sha384);
        assert!("md5".parse::<Algorithm>().is_err());
    }

    #[test]
    fn checksums_are_typed_and_read_back_from_their_hex() {
        let crc: Checksum = "8a744722".parse().unwrap();
        assert_eq!(crc, Checksum::Crc32c(crc32c::crc32c(b"15\n")));
        assert_eq!(crc.crc32c(), Some(0x2247748a));
        assert_eq!(crc.to_string(), "8a744722");
        // Upper case is read, lower case is written.
        assert_eq!("8A744722".parse::<Checksum>().unwrap(), crc);
        let sha = sum(Algorithm::Sha224, b"abc").unwrap();
        let typed: Checksum = sha.parse().unwrap();
        assert_eq!((typed.crc32c(), typed.to_string()), (None, sha));
        for len in [28, 32, 48, 64] {
            assert!(matches!(hex::encode(vec![7u8; len]).parse(), Ok(Checksum::Sha(b)) if b.len() == len));
        }
        // Odd length, not hex, or the length of no algorithm: never a checksum.
        for bad in ["", "abc", "8a74472", "8a7447zz", "+a744722", "8a74472200", &"ab".repeat(20)] {
            assert!(bad.parse::<Checksum>().is_err(), "{bad:?}");
        }
    }
}
