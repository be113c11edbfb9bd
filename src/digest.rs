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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    /// Lowercase hex as in the manifest (CRC-32C: its four bytes in little-endian order),
    /// `None` for no checksum.
    pub fn finish(self) -> Option<String> {
        match self {
            Digest::None => None,
            Digest::Crc32c(c) => Some(hex(&c.to_le_bytes())),
            Digest::Sha224(h) => Some(hex(&h.finalize())),
            Digest::Sha256(h) => Some(hex(&h.finalize())),
            Digest::Sha384(h) => Some(hex(&h.finalize())),
            Digest::Sha512(h) => Some(hex(&h.finalize())),
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
        d.finish()
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
}
