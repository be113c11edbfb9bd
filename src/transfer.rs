//! Streaming one server file into DEST, chunk by chunk over one query (no round trip per
//! chunk), plain with built-in functions or zlib-compressed through the PL/Python helper.

use std::io::Read;

use postgres::fallible_iterator::FallibleIterator;

use crate::dest::{Dest, DestError, FileWriter, SafePath};
use crate::pg::sql;
use crate::pg::{PgError, Session};

/// How chunks travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `pg_read_binary_file`, nothing created on the server.
    Plain,
    /// The session-local PL/Python helper, zlib at this level (0–9).
    Zlib(u32),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Plain => write!(f, "none"),
            Method::Zlib(l) => write!(f, "zlib:{l}"),
        }
    }
}

/// The result of one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Copied(u64),
    /// The file does not exist (any more) on the server: normal during a backup.
    Vanished,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error("{path}: {message}")]
    Data { path: String, message: String },
}

impl TransferError {
    /// True when the child cannot go on with other files (connection gone, DEST unwritable),
    /// false when only this file failed.
    pub fn is_fatal(&self) -> bool {
        match self {
            TransferError::Pg(e) => e.connection_lost(),
            TransferError::Dest(DestError::Io { .. }) => true,
            TransferError::Dest(_) => false,
            TransferError::Data { .. } => false,
        }
    }
}

/// Copies files from one session into DEST.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub method: Method,
    pub chunk: u64,
    pub sync: bool,
}

fn pg_err(what: &str, e: postgres::Error) -> TransferError {
    TransferError::Pg(PgError::query(what, e))
}

impl Transfer {
    /// Creates what the method needs in this session (the pg_temp helper for zlib).
    pub fn prepare(&self, s: &mut Session) -> Result<(), PgError> {
        if let Method::Zlib(_) = self.method {
            s.execute(
                sql::CREATE_ZLIB_READER,
                &[],
                "could not create the compression helper",
            )
            .map_err(|e| PgError::Compression(e.to_string()))?;
        }
        Ok(())
    }

    /// Copies server file `src` (relative to the data directory) to `dst` below DEST.
    pub fn fetch(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
    ) -> Result<Outcome, TransferError> {
        match self.method {
            Method::Plain => self.fetch_plain(s, src, dest, dst),
            Method::Zlib(level) => self.fetch_zlib(s, src, dest, dst, level),
        }
    }

    fn fetch_plain(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
    ) -> Result<Outcome, TransferError> {
        let path = src.as_string();
        let what = format!("could not read \"{path}\"");
        let chunk = self.chunk as i64;
        let mut rows = s.stream(sql::READ_PLAIN, &[&path, &chunk], &what)?;
        let mut out: Option<FileWriter> = None;
        let mut size = 0u64;
        while let Some(row) = rows.next().map_err(|e| pg_err(&what, e))? {
            let Some(sz) = row
                .try_get::<_, Option<i64>>(0)
                .map_err(|e| pg_err(&what, e))?
            else {
                return Ok(Outcome::Vanished);
            };
            let w = match out.as_mut() {
                Some(w) => w,
                None => {
                    size = sz.max(0) as u64;
                    out.insert(dest.create_file(dst)?)
                }
            };
            let data = row
                .try_get::<_, Option<&[u8]>>(1)
                .map_err(|e| pg_err(&what, e))?;
            match data {
                None if size == 0 => {}
                // Removed while we were reading it.
                None => return Ok(Outcome::Vanished),
                Some(d) => {
                    // A file that shrank gives short chunks: zero-fill up to the size listed,
                    // as core does; WAL replay repairs the contents.
                    let want = self.chunk.min(size - w.written()) as usize;
                    w.write(&d[..d.len().min(want)])?;
                    if d.len() < want {
                        w.write_zeros((want - d.len()) as u64)?;
                    }
                }
            }
        }
        match out {
            Some(w) => Ok(Outcome::Copied(w.finish(self.sync)?)),
            None => Err(TransferError::Data {
                path,
                message: "the server returned no rows".into(),
            }),
        }
    }

    fn fetch_zlib(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        level: u32,
    ) -> Result<Outcome, TransferError> {
        let path = src.as_string();
        let what = format!("could not read \"{path}\"");
        let chunk = self.chunk as i64;
        let level = level as i32;
        let mut rows = s.stream(sql::READ_ZLIB, &[&path, &chunk, &level], &what)?;
        let mut out: Option<FileWriter> = None;
        let mut size = 0u64;
        let mut buf = Vec::with_capacity(self.chunk as usize);
        while let Some(row) = rows.next().map_err(|e| pg_err(&what, e))? {
            let data: &[u8] = row.try_get(0).map_err(|e| pg_err(&what, e))?;
            let w = match out.as_mut() {
                Some(w) => w,
                None => {
                    let header: [u8; 8] = data.try_into().map_err(|_| TransferError::Data {
                        path: path.clone(),
                        message: "bad size header from the compression helper".into(),
                    })?;
                    size = i64::from_be_bytes(header).max(0) as u64;
                    out = Some(dest.create_file(dst)?);
                    continue;
                }
            };
            buf.clear();
            flate2::read::ZlibDecoder::new(data)
                .take(self.chunk + 1)
                .read_to_end(&mut buf)
                .map_err(|e| TransferError::Data {
                    path: path.clone(),
                    message: format!("corrupt compressed chunk: {e}"),
                })?;
            if buf.len() as u64 > self.chunk || w.written() + buf.len() as u64 > size {
                return Err(TransferError::Data {
                    path,
                    message: "the server sent more data than the file size".into(),
                });
            }
            w.write(&buf)?;
        }
        match out {
            None => Ok(Outcome::Vanished),
            Some(mut w) => {
                // Shrank while being read: zero-fill to the size the helper saw at open.
                let short = size - w.written();
                w.write_zeros(short)?;
                Ok(Outcome::Copied(w.finish(self.sync)?))
            }
        }
    }
}
