//! Text columns as the server's bytes. The server does not check that file names or
//! tablespace locations are valid in any encoding, and the driver's `String` refuses (and
//! `Row::get` panics on) what is not UTF-8.

use std::error::Error;
use std::path::PathBuf;

use postgres::types::{FromSql, Type};

/// A `text` (or `name`, `varchar`) value, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawText(pub Vec<u8>);

impl RawText {
    /// For messages: invalid bytes as U+FFFD.
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// A path with exactly these bytes.
    pub fn path(&self) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(&self.0))
    }
}

impl<'a> FromSql<'a> for RawText {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<RawText, Box<dyn Error + Sync + Send>> {
        Ok(RawText(raw.to_vec()))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TEXT | Type::NAME | Type::VARCHAR | Type::BPCHAR | Type::UNKNOWN)
    }
}
