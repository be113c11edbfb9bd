//! The line protocol between the master and its children (and a person at a terminal).
//!
//! Requests go to a child's stdin, one per line: `SRC` or `SRC<TAB>DST`, both paths relative
//! to the data directory / DEST; or a batch of small files, `batch<TAB>N` followed by N
//! request lines, which the worker reads with one query. Results come back on the child's stdout, one per line, fields
//! separated by a TAB, always starting with a keyword (see `docs/protocol.md`):
//!
//! ```text
//! hello   pgbb  2  0.1.0  worker        greeting, first line a child prints
//! ok      8192  base/1/1259  8a744722  1764077306  2048  1
//!                                       file written: size, manifest checksum (- if none),
//!                                       server mtime (Unix seconds), bytes over the network,
//!                                       data pages verified (optional, only when not 0)
//! progress  1048576                     bytes of the current file so far (when asked)
//! badpage base/1/16384  7  442A  449B   page 7 failed its checksum twice (before the ok)
//! vanished      base/1/t3_99            file gone on the server (a normal result)
//! error   ../x  unsafe path: ...        this file could not be copied
//! fatal   connection lost: ...          the child cannot go on and exits non-zero (a worker of
//!                                       a run reconnects first: see `crate::retry`)
//! done    7                             WAL child: finished, 7 files copied
//! ```
//!
//! Paths and messages escape `\`, TAB, CR and LF as `\\`, `\t`, `\r`, `\n`, and other control
//! characters as `\xHH`, so any name fits on one line.

use std::fmt;

use crate::digest::Checksum;

/// Version of this protocol; a child that greets with another one is refused.
pub const PROTOCOL_VERSION: u32 = 4;
/// Longest request line a child accepts (bytes, without the newline): an incremental file's
/// block list can take most of it (a 1 GB segment's changed blocks, as runs).
pub const MAX_LINE: usize = 1 << 20;
/// Most request lines a `batch` header may announce.
pub const MAX_BATCH: usize = 1000;
/// The first field of a batch header. A request for a file of this name escapes it
/// (`\x62atch`), so that no request line is ever taken for a header.
const BATCH: &str = "batch";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("empty line")]
    Empty,
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("NUL byte in line")]
    Nul,
    #[error("bad escape sequence in {0:?}")]
    BadEscape(String),
    #[error(
        "wrong number of fields (SRC, SRC<TAB>DST, SRC<TAB>DST<TAB>compare[<TAB>OFFSET<TAB>LENGTH] or SRC<TAB>DST<TAB>OFFSET<TAB>LENGTH)"
    )]
    TooManyFields,
    #[error("bad OFFSET<TAB>LENGTH in {0:?}")]
    BadRange(String),
    #[error("unrecognised message {0:?}")]
    Unknown(String),
    #[error("bad block list in {0:?} (incr<TAB>TRUNCATION<TAB>BLOCKS: ascending block numbers or runs N+COUNT, comma-separated, - for none)")]
    BadBlocks(String),
    #[error("bad batch header {0:?} (batch<TAB>N, N from 1 to {MAX_BATCH}; a file named batch is written \\x62atch)")]
    BadBatch(String),
}

/// A `batch<TAB>N` header: `None` if `line` is no header (a request line), else the number of
/// request lines that follow it. A line whose first field is `batch` is always a header.
pub fn batch_header(line: &str) -> Option<Result<usize, ProtocolError>> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (first, rest) = line.split_once('\t')?;
    if first != BATCH {
        return None;
    }
    let bad = || ProtocolError::BadBatch(line.chars().take(200).collect());
    Some(match rest.parse::<usize>() {
        Ok(n) if (1..=MAX_BATCH).contains(&n) && rest.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(bad()),
    })
}

/// The lines of a batch of `reqs` (a single request goes as its own line, without header).
pub fn batch_lines(reqs: &[Request]) -> String {
    let mut out = String::new();
    if reqs.len() > 1 {
        out.push_str(&format!("{BATCH}\t{}\n", reqs.len()));
    }
    for r in reqs {
        out.push_str(&r.to_line());
    }
    out
}

/// Escapes a path (any bytes) or message so that it fits in one field of one line; bytes
/// that are not UTF-8 become `\xHH`.
pub fn escape(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => push_hex_escape(&mut out, c as u8),
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            push_hex_escape(&mut out, b);
        }
    }
    out
}

fn push_hex_escape(out: &mut String, b: u8) {
    out.push_str("\\x");
    out.push_str(&hex::encode([b]));
}

/// Reverses [`escape`]: the raw bytes.
pub fn unescape(s: &str) -> Result<Vec<u8>, ProtocolError> {
    let bad = || ProtocolError::BadEscape(s.chars().take(200).collect());
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => out.push(b'\\'),
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'x') => {
                let mut byte = [0u8];
                hex::decode_to_slice(b.get(i + 2..i + 4).ok_or_else(bad)?, &mut byte).map_err(|_| bad())?;
                out.push(byte[0]);
                i += 2;
            }
            _ => return Err(bad()),
        }
        i += 2;
    }
    Ok(out)
}

/// [`unescape`] for text fields (messages, versions): invalid UTF-8 is replaced.
pub fn unescape_text(s: &str) -> Result<String, ProtocolError> {
    unescape(s).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A path for a message (invalid UTF-8 shown as `\xHH`).
pub fn show(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(s) => s.to_string(),
        Err(_) => escape(path),
    }
}

/// One request: copy `src` (relative to the data directory) to `dst` (relative to DEST).
/// Paths are raw bytes: file names need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub src: Vec<u8>,
    pub dst: Vec<u8>,
    /// Only these bytes (offset, length) of the file: the master splits large files among
    /// workers. DST's temporary name is written at that offset and left for the master to
    /// rename when every piece is in.
    pub range: Option<(u64, u64)>,
    /// `--delta`: DST holds an older copy of the file; only the blocks that differ travel
    /// (`SRC<TAB>DST<TAB>compare`, a whole file; with `<TAB>OFFSET<TAB>LENGTH`, that piece of
    /// it, compared in DST itself, which the master cuts to its size when every piece is in).
    pub compare: bool,
    /// `-i`: DST is an `INCREMENTAL.*` file holding only these blocks of SRC
    /// (`SRC<TAB>DST<TAB>incr<TAB>TRUNCATION<TAB>BLOCKS`).
    pub incremental: Option<BlockList>,
}

/// Most blocks one incremental file may list (a 128 GB segment of 8 kB blocks; PostgreSQL's
/// default is 131072, and pg_combinebackup refuses more than its build's segment size).
pub const MAX_BLOCKS: u64 = 1 << 24;

/// The blocks of one relation segment file that an incremental backup sends, relative to the
/// segment's start and ascending, and the length the file is cut to when it is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList {
    pub truncation: u32,
    pub blocks: Vec<u32>,
}

impl BlockList {
    /// The BLOCKS field: runs of consecutive blocks as `N+COUNT`, single ones as `N`,
    /// comma-separated; `-` for none.
    pub fn field(&self) -> String {
        if self.blocks.is_empty() {
            return "-".into();
        }
        let mut out = String::new();
        let mut i = 0;
        while i < self.blocks.len() {
            let start = self.blocks[i];
            let mut n = 1;
            while i + n < self.blocks.len() && u64::from(self.blocks[i + n]) == u64::from(start) + n as u64 {
                n += 1;
            }
            if !out.is_empty() {
                out.push(',');
            }
            if n == 1 {
                out.push_str(&start.to_string());
            } else {
                out.push_str(&format!("{start}+{n}"));
            }
            i += n;
        }
        out
    }

    /// Reads a BLOCKS field (see [`BlockList::field`]): strictly ascending, within u32.
    pub fn parse(truncation: &str, field: &str) -> Result<BlockList, ProtocolError> {
        let bad = || ProtocolError::BadBlocks(format!("{truncation}\t{}", field.chars().take(200).collect::<String>()));
        let num = |s: &str| -> Result<u64, ProtocolError> {
            if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse::<u64>().map_err(|_| bad())
        };
        let truncation = u32::try_from(num(truncation)?).map_err(|_| bad())?;
        let mut blocks: Vec<u32> = Vec::new();
        if field != "-" {
            for run in field.split(',') {
                let (start, n) = match run.split_once('+') {
                    Some((s, n)) => (num(s)?, num(n)?),
                    None => (num(run)?, 1),
                };
                let end = start.checked_add(n).filter(|&e| n >= 1 && e <= 1 << 32).ok_or_else(bad)?;
                if blocks.last().is_some_and(|&l| u64::from(l) >= start) || blocks.len() as u64 + n > MAX_BLOCKS {
                    return Err(bad());
                }
                blocks.extend((start..end).map(|b| b as u32));
            }
        }
        Ok(BlockList { truncation, blocks })
    }
}

impl Request {
    /// A whole file, copied to the same path.
    pub fn whole(path: &[u8]) -> Request {
        Request { src: path.to_vec(), dst: path.to_vec(), range: None, compare: false, incremental: None }
    }

    pub fn parse(line: &str) -> Result<Request, ProtocolError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > MAX_LINE {
            return Err(ProtocolError::TooLong);
        }
        if line.contains('\0') {
            return Err(ProtocolError::Nul);
        }
        if line.is_empty() {
            return Err(ProtocolError::Empty);
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let src = unescape(fields[0])?;
        let dst = match fields.get(1) {
            Some(d) => unescape(d)?,
            None => src.clone(),
        };
        let compare = matches!(fields.len(), 3 | 5) && fields[2] == "compare";
        let incremental = match fields.as_slice() {
            [_, _, "incr", trunc, blocks, ..] => Some(BlockList::parse(trunc, blocks)?),
            _ => None,
        };
        let range = match fields.len() {
            1 | 2 => None,
            3 if compare => None,
            5 if incremental.is_some() => None,
            4 | 5 | 7 if (fields.len() == 7) == incremental.is_some() && (fields.len() == 5) == compare => {
                let num =
                    |s: &str| s.parse::<u64>().map_err(|_| ProtocolError::BadRange(line.chars().take(200).collect()));
                let (off, len) = (num(fields[fields.len() - 2])?, num(fields[fields.len() - 1])?);
                if len == 0 || off.checked_add(len).is_none() {
                    return Err(ProtocolError::BadRange(line.chars().take(200).collect()));
                }
                Some((off, len))
            }
            _ => return Err(ProtocolError::TooManyFields),
        };
        if src.is_empty() || dst.is_empty() {
            return Err(ProtocolError::Empty);
        }
        if src.contains(&0) || dst.contains(&0) {
            return Err(ProtocolError::Nul);
        }
        Ok(Request { src, dst, range, compare, incremental })
    }

    pub fn to_line(&self) -> String {
        // Never the first field of a batch header.
        let src = match escape(&self.src) {
            s if s == BATCH => "\\x62atch".to_string(),
            s => s,
        };
        if self.compare {
            let range = self.range.map_or(String::new(), |(off, len)| format!("\t{off}\t{len}"));
            return format!("{src}\t{}\tcompare{range}\n", escape(&self.dst));
        }
        if let Some(b) = &self.incremental {
            let range = self.range.map_or(String::new(), |(off, len)| format!("\t{off}\t{len}"));
            return format!("{src}\t{}\tincr\t{}\t{}{range}\n", escape(&self.dst), b.truncation, b.field());
        }
        if let Some((off, len)) = self.range {
            return format!("{src}\t{}\t{off}\t{len}\n", escape(&self.dst));
        }
        if self.src == self.dst {
            format!("{src}\n")
        } else {
            format!("{src}\t{}\n", escape(&self.dst))
        }
    }
}

/// One result line from a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Hello {
        protocol: u32,
        version: String,
        role: String,
    },
    Ok {
        size: u64,
        path: Vec<u8>,
        checksum: Option<Checksum>,
        mtime: i64,
        wire: u64,
        /// Data pages whose checksum was compared; written only when not 0, and a line
        /// without it reads as 0.
        verified: u64,
    },
    BadPage {
        path: Vec<u8>,
        block: u32,
        calculated: u16,
        expected: u16,
    },
    Vanished {
        path: Vec<u8>,
    },
    /// Bytes of the current file written so far (workers asked for progress, every 250 ms).
    Progress {
        bytes: u64,
    },
    Error {
        path: Vec<u8>,
        message: String,
    },
    Fatal {
        message: String,
    },
    Done {
        count: u64,
    },
}

impl fmt::Display for Response {
    /// The wire form, without the trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::Hello { protocol, version, role } => {
                write!(f, "hello\tpgbb\t{protocol}\t{}\t{}", escape(version.as_bytes()), escape(role.as_bytes()))
            }
            Response::Ok { size, path, checksum, mtime, wire, verified } => {
                let sum = checksum.as_ref().map_or_else(|| "-".to_string(), Checksum::to_string);
                write!(f, "ok\t{size}\t{}\t{sum}\t{mtime}\t{wire}", escape(path))?;
                match verified {
                    0 => Ok(()),
                    n => write!(f, "\t{n}"),
                }
            }
            Response::Progress { bytes } => write!(f, "progress\t{bytes}"),
            Response::BadPage { path, block, calculated, expected } => {
                write!(f, "badpage\t{}\t{block}\t{calculated:04X}\t{expected:04X}", escape(path))
            }
            Response::Vanished { path } => write!(f, "vanished\t{}", escape(path)),
            Response::Error { path, message } => {
                write!(f, "error\t{}\t{}", escape(path), escape(message.as_bytes()))
            }
            Response::Fatal { message } => write!(f, "fatal\t{}", escape(message.as_bytes())),
            Response::Done { count } => write!(f, "done\t{count}"),
        }
    }
}

impl Response {
    pub fn parse(line: &str) -> Result<Response, ProtocolError> {
        let line = line.trim_end_matches(['\n', '\r']);
        let unknown = || ProtocolError::Unknown(line.chars().take(200).collect());
        let f: Vec<&str> = line.split('\t').collect();
        let num = |s: &str| s.parse::<u64>().map_err(|_| unknown());
        Ok(match f.as_slice() {
            ["hello", "pgbb", proto, version, role] => Response::Hello {
                protocol: proto.parse().map_err(|_| unknown())?,
                version: unescape_text(version)?,
                role: unescape_text(role)?,
            },
            ["progress", bytes] => Response::Progress { bytes: num(bytes)? },
            ["ok", size, path, sum, mtime, wire, verified @ ..] if verified.len() <= 1 => Response::Ok {
                size: num(size)?,
                path: unescape(path)?,
                checksum: match *sum {
                    "-" => None,
                    h => Some(h.parse().map_err(|_| unknown())?),
                },
                mtime: mtime.parse().map_err(|_| unknown())?,
                wire: num(wire)?,
                verified: verified.first().map_or(Ok(0), |v| num(v))?,
            },
            ["badpage", path, block, calc, exp] => Response::BadPage {
                path: unescape(path)?,
                block: block.parse().map_err(|_| unknown())?,
                calculated: u16::from_str_radix(calc, 16).map_err(|_| unknown())?,
                expected: u16::from_str_radix(exp, 16).map_err(|_| unknown())?,
            },
            ["vanished", path] => Response::Vanished { path: unescape(path)? },
            ["error", path, message] => Response::Error { path: unescape(path)?, message: unescape_text(message)? },
            ["fatal", message] => Response::Fatal { message: unescape_text(message)? },
            ["done", count] => Response::Done { count: num(count)? },
            _ => return Err(unknown()),
        })
    }
}

/// Commands the master sends to the WAL child on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalCommand {
    /// The backup stopped at this LSN: copy through its segment, print `done`, exit.
    Stop(crate::lsn::Lsn),
}

impl WalCommand {
    pub fn to_line(&self) -> String {
        match self {
            WalCommand::Stop(lsn) => format!("stop\t{lsn}\n"),
        }
    }

    pub fn parse(line: &str) -> Result<WalCommand, ProtocolError> {
        let line = line.trim_end_matches(['\n', '\r']);
        match line.split_once('\t') {
            Some(("stop", lsn)) => {
                lsn.parse().map(WalCommand::Stop).map_err(|_| ProtocolError::Unknown(line.to_string()))
            }
            _ => Err(ProtocolError::Unknown(line.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trip() {
        for s in ["plain/path", "a b", "tab\there", "nl\nx", "back\\slash", "\u{1}ctl", "é/ü"] {
            assert_eq!(unescape(&escape(s.as_bytes())).unwrap(), s.as_bytes());
            assert!(!escape(s.as_bytes()).contains(['\t', '\n', '\r']));
        }
        // Names that are not UTF-8 travel as \xHH.
        let raw = b"bad\xffname\xc3";
        assert_eq!(escape(raw), "bad\\xffname\\xc3");
        assert_eq!(unescape(&escape(raw)).unwrap(), raw);
        assert_eq!(show(raw), "bad\\xffname\\xc3");
        assert!(unescape("bad\\q").is_err());
        assert!(unescape("bad\\x4").is_err());
        // Exactly two hex digits (a sign is not one).
        assert!(unescape("bad\\x+1").is_err());
        assert!(unescape("bad\\x-1").is_err());
    }

    #[test]
    fn requests() {
        let p = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            Request::parse("base/1/1259\n").unwrap(),
            Request { src: p("base/1/1259"), dst: p("base/1/1259"), range: None, compare: false, incremental: None }
        );
        let r = Request::parse("global/pg_control\tglobal/pg_control.pending").unwrap();
        assert_eq!(r.dst, p("global/pg_control.pending"));
        assert_eq!(Request::parse(&r.to_line()).unwrap(), r);
        assert_eq!(Request::parse(""), Err(ProtocolError::Empty));
        assert_eq!(Request::parse("\n"), Err(ProtocolError::Empty));
        assert_eq!(Request::parse("a\0b"), Err(ProtocolError::Nul));
        assert_eq!(Request::parse("a\\x00b"), Err(ProtocolError::Nul));
        assert_eq!(Request::parse("a\tb\tc"), Err(ProtocolError::TooManyFields));
        assert_eq!(Request::parse(&"x".repeat(MAX_LINE + 1)), Err(ProtocolError::TooLong));
        let odd = Request {
            src: p("we\tird\nname"),
            dst: b"raw\xfe".to_vec(),
            range: None,
            compare: false,
            incremental: None,
        };
        assert_eq!(Request::parse(&odd.to_line()).unwrap(), odd);
        let piece = Request {
            src: p("base/5/16384"),
            dst: p("base/5/16384"),
            range: Some((67108864, 1024)),
            compare: false,
            incremental: None,
        };
        let delta =
            Request { src: p("base/5/16384"), dst: p("base/5/16384"), range: None, compare: true, incremental: None };
        assert_eq!(delta.to_line(), "base/5/16384\tbase/5/16384\tcompare\n");
        // One piece of a large file compared in place.
        let compared_piece = Request { range: Some((67108864, 1024)), ..delta.clone() };
        assert_eq!(compared_piece.to_line(), "base/5/16384\tbase/5/16384\tcompare\t67108864\t1024\n");
        assert_eq!(Request::parse(&compared_piece.to_line()).unwrap(), compared_piece);
        assert!(Request::parse("a\ta\tcompare\t0\t0").is_err(), "an empty piece");
        assert!(Request::parse("a\ta\tcompare\t1").is_err());
        assert!(Request::parse("a\ta\tcmp\t0\t8").is_err());
        assert_eq!(Request::parse(&delta.to_line()), Ok(delta));
        assert_eq!(piece.to_line(), "base/5/16384\tbase/5/16384\t67108864\t1024\n");
        assert_eq!(Request::parse(&piece.to_line()).unwrap(), piece);
        assert!(matches!(Request::parse("a\tb\tx\t1"), Err(ProtocolError::BadRange(_))));
        assert!(matches!(Request::parse("a\tb\t1\t0"), Err(ProtocolError::BadRange(_))));
        assert!(matches!(Request::parse("a\tb\t18446744073709551615\t2"), Err(ProtocolError::BadRange(_))));
        assert_eq!(Request::parse("a\tb\tc"), Err(ProtocolError::TooManyFields));
        let incr = Request::parse("base/5/16384\tbase/5/INCREMENTAL.16384\tincr\t2942\t0,1470,2940+2\n").unwrap();
        assert_eq!(incr.incremental, Some(BlockList { truncation: 2942, blocks: vec![0, 1470, 2940, 2941] }));
        assert_eq!(incr.to_line(), "base/5/16384\tbase/5/INCREMENTAL.16384\tincr\t2942\t0,1470,2940+2\n");
        let none = Request::parse("base/5/1\tbase/5/INCREMENTAL.1\tincr\t7\t-").unwrap();
        assert_eq!(none.incremental, Some(BlockList { truncation: 7, blocks: vec![] }));
        assert_eq!(Request::parse(&none.to_line()).unwrap(), none);
        for bad in ["3,2", "3,3", "1+0", "x", "", "4294967295+2", "1,,2", "+3", "01x"] {
            let line = format!("a\tb\tincr\t9\t{bad}");
            assert!(matches!(Request::parse(&line), Err(ProtocolError::BadBlocks(_))), "{bad}");
        }
        assert!(matches!(Request::parse("a\tb\tincr\t4294967296\t1"), Err(ProtocolError::BadBlocks(_))));
        // A run too long to hold is refused, never allocated.
        assert!(matches!(Request::parse("a\tb\tincr\t1\t0+4294967295"), Err(ProtocolError::BadBlocks(_))));
        assert!(matches!(Request::parse("a\tb\tincr\t1\t0+16777216,16777216"), Err(ProtocolError::BadBlocks(_))));
        // One piece of a large incremental file: its byte range in the INCREMENTAL file.
        let piece = Request { range: Some((0, 16384)), ..incr.clone() };
        assert_eq!(piece.to_line(), "base/5/16384\tbase/5/INCREMENTAL.16384\tincr\t2942\t0,1470,2940+2\t0\t16384\n");
        assert_eq!(Request::parse(&piece.to_line()).unwrap(), piece);
        assert!(matches!(Request::parse("a\tb\tincr\t9\t1\t0\t0"), Err(ProtocolError::BadRange(_))));
        assert_eq!(Request::parse("a\tb\tx\t9\t1\t0\t5"), Err(ProtocolError::TooManyFields));
    }

    #[test]
    fn batches() {
        let p = |s: &str| s.as_bytes().to_vec();
        let whole = |s: &str| Request { src: p(s), dst: p(s), range: None, compare: false, incremental: None };
        let compare = Request { compare: true, ..whole("base/5/1259") };
        let lines = batch_lines(&[whole("base/5/2608"), compare.clone(), whole("PG_VERSION")]);
        assert_eq!(lines, "batch\t3\nbase/5/2608\nbase/5/1259\tbase/5/1259\tcompare\nPG_VERSION\n");
        let mut it = lines.lines();
        assert_eq!(batch_header(it.next().unwrap()), Some(Ok(3)));
        let reqs: Vec<Request> = it.map(|l| Request::parse(l).unwrap()).collect();
        assert_eq!(reqs[1], compare);
        // One request travels alone, without a header.
        assert_eq!(batch_lines(&[whole("x")]), "x\n");
        // Request lines are no headers, and headers out of bounds are refused.
        for line in ["base/5/2608", "batchx\t3", "batch", "\\x62atch\t3", "a\tbatch"] {
            assert_eq!(batch_header(line), None, "{line}");
        }
        assert_eq!(batch_header("batch\t1000\r\n"), Some(Ok(MAX_BATCH)));
        for bad in ["batch\t0", "batch\t1001", "batch\t+3", "batch\t3\tx", "batch\tx", "batch\t"] {
            assert!(matches!(batch_header(bad), Some(Err(ProtocolError::BadBatch(_)))), "{bad}");
        }
        // A file named batch is escaped: its request line is never taken for a header.
        for r in [
            Request { dst: p("5"), ..whole("batch") },
            whole("batch"),
            Request { compare: true, ..whole("batch") },
            Request { range: Some((0, 8)), ..whole("batch") },
        ] {
            let line = r.to_line();
            assert_eq!(batch_header(&line), None, "{line}");
            assert_eq!(Request::parse(&line).unwrap(), r);
        }
    }

    #[test]
    fn responses_round_trip() {
        let all = [
            Response::Hello { protocol: 1, version: "0.1.0".into(), role: "worker 2".into() },
            Response::Ok {
                size: 8192,
                path: "base/1/1259".into(),
                checksum: Some(Checksum::Crc32c(0x2247748a)),
                mtime: 1764077306,
                wire: 4000,
                verified: 1,
            },
            Response::Ok { size: 0, path: "x".into(), checksum: None, mtime: 0, wire: 0, verified: 0 },
            Response::Progress { bytes: 123 },
            Response::BadPage { path: "base/5/16384".into(), block: 7, calculated: 0x442A, expected: 0x449B },
            Response::Vanished { path: "base/1/t3_4".into() },
            Response::Error { path: "../x".into(), message: "unsafe\tpath".into() },
            Response::Fatal { message: "connection lost".into() },
            Response::Done { count: 3 },
        ];
        for r in all {
            assert_eq!(Response::parse(&format!("{r}\n")).unwrap(), r);
        }
        assert!(Response::parse("ok\tx\ty").is_err());
        // The verified-pages field is optional: absent reads as 0, and 0 is not written.
        let ok = |verified| Response::Ok { size: 8192, path: "p".into(), checksum: None, mtime: 5, wire: 9, verified };
        assert_eq!(Response::parse("ok\t8192\tp\t-\t5\t9").unwrap(), ok(0));
        assert_eq!(ok(0).to_string(), "ok\t8192\tp\t-\t5\t9");
        assert_eq!(ok(1).to_string(), "ok\t8192\tp\t-\t5\t9\t1");
        assert!(Response::parse("ok\t8192\tp\t-\t5\t9\tx").is_err());
        assert!(Response::parse("ok\t8192\tp\t-\t5\t9\t1\t1").is_err());
        assert!(Response::parse("ok\t1\tp\tnothex\t0\t1").is_err());
        // A SHA-2 checksum travels as hex and comes back as the same bytes.
        let sha = Response::Ok {
            size: 1,
            path: "p".into(),
            checksum: Some(Checksum::Sha(vec![0xab; 32])),
            mtime: 0,
            wire: 1,
            verified: 0,
        };
        assert_eq!(Response::parse(&sha.to_string()).unwrap(), sha);
        // Hex that is no checksum (odd length, or the length of no algorithm) is refused: it
        // would otherwise be written into the manifest as it came.
        for bad in ["abc", "8a7447", "8a74472200", "+a744722"] {
            assert!(Response::parse(&format!("ok\t1\tp\t{bad}\t0\t1")).is_err(), "{bad}");
        }
        assert_eq!(
            Response::BadPage { path: "p".into(), block: 0, calculated: 0x42a, expected: 1 }.to_string(),
            "badpage\tp\t0\t042A\t0001"
        );
        assert!(Response::parse("what").is_err());
    }

    #[test]
    fn wal_commands() {
        let c = WalCommand::Stop("0/5000100".parse().unwrap());
        assert_eq!(WalCommand::parse(&c.to_line()).unwrap(), c);
        assert!(WalCommand::parse("stop\tzz").is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn escape_round_trips_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let e = escape(&b);
            prop_assert!(!e.contains(['\t', '\n', '\r', '\0']));
            prop_assert_eq!(unescape(&e).unwrap(), b);
        }

        #[test]
        fn request_parser_never_panics_and_round_trips(s in "\\PC{0,40}|[a-z/.\\\\\t\0x0-9]{0,40}") {
            if let Ok(r) = Request::parse(&s) {
                prop_assert!(!r.src.is_empty() && !r.dst.is_empty());
                prop_assert!(!r.src.contains(&0) && !r.dst.contains(&0));
                prop_assert_eq!(Request::parse(&r.to_line()).unwrap(), r);
            }
        }

        #[test]
        fn no_request_line_is_a_batch_header(src in proptest::collection::vec(1u8..=255, 1..12),
                                             dst in proptest::collection::vec(1u8..=255, 1..12)) {
            let r = Request { src, dst, range: None, compare: false, incremental: None };
            prop_assert_eq!(batch_header(&r.to_line()), None);
        }

        #[test]
        fn response_parser_never_panics(s in "(ok|badpage|vanished|error|fatal|done|hello)?[\t a-z0-9\\\\-]{0,40}") {
            if let Ok(r) = Response::parse(&s) {
                prop_assert_eq!(Response::parse(&r.to_string()).unwrap(), r);
            }
        }
    }
}
