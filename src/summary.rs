//! What a finished backup prints on stdout: one summary line, and the commands that verify
//! and start the copy, quoted for a POSIX shell so that they can be pasted whatever DEST's
//! name. Printed with [`crate::logging::out`]: a closed stdout loses them but never fails
//! the backup. With `--log-format json`, the same numbers in the summary line on stderr
//! ([`json`]).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Serialize;

use crate::backup::Summary;
use crate::progress::human;
use crate::transfer::Method;

/// "1 segment", "2 segments".
fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// One word for a POSIX shell: bare when it holds only characters no shell treats specially,
/// else in single quotes, a quote inside written `'\''`. Any bytes (a path need not be UTF-8).
pub fn shell_quote(word: &[u8]) -> Vec<u8> {
    let safe = |b: &u8| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(b);
    if !word.is_empty() && word.iter().all(safe) {
        return word.to_vec();
    }
    let mut q = vec![b'\''];
    for &b in word {
        if b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    q
}

/// The summary line (WAL segments and timeline history files counted apart).
pub fn line(s: &Summary) -> String {
    let compression = match s.method {
        Method::Zlib(_) | Method::Zstd(_) if s.wire > 0 => {
            format!(", compressed {:.1}:1 ({} over the network)", s.bytes as f64 / s.wire as f64, human(s.wire))
        }
        _ => String::new(),
    };
    let wal = match s.wal_history {
        0 => count(s.wal_files, "segment"),
        h => format!("{}, {}", count(s.wal_files, "segment"), count(h, "history file")),
    };
    let refreshed = match s.refresh {
        Some(r) => format!(
            " (refreshed: {} compared, {} over the network, {} {} removed)",
            human(r.compared),
            human(s.wire),
            r.removed,
            if r.removed == 1 { "entry" } else { "entries" }
        ),
        None => String::new(),
    };
    let incremental = match s.incremental {
        Some(i) => format!(
            " (incremental: {} relation files with {} changed blocks, {} of {} for a full backup, {:.1}%)",
            i.incremental_files,
            i.blocks,
            human(s.bytes),
            human(i.full_size),
            s.bytes as f64 * 100.0 / i.full_size.max(1) as f64
        ),
        None => String::new(),
    };
    format!(
        "pgbb: backup complete: {} files, {} in {:.1} s ({}/s){refreshed}{incremental}, WAL {} to {} on timeline {} ({wal}), {} pages verified{compression}",
        s.files,
        human(s.bytes),
        s.elapsed.as_secs_f64(),
        human((s.bytes as f64 / s.elapsed.as_secs_f64().max(0.001)) as u64),
        s.start,
        s.stop,
        s.timeline,
        s.verified_pages,
    )
}

/// A finished backup's numbers, as the JSON summary line carries them (docs/automation.md):
/// the plain [`line`]'s, exactly, and sizes in bytes.
#[derive(Debug, Serialize)]
pub struct Json {
    pub files: u64,
    pub bytes: u64,
    pub vanished_files: u64,
    pub elapsed_s: f64,
    pub rate_bytes_per_s: u64,
    pub wal_start: String,
    pub wal_stop: String,
    pub timeline: u32,
    pub wal_segments: u64,
    pub wal_history_files: u64,
    /// "none" or "zlib:LEVEL".
    pub compression: String,
    /// What came over the network for the data files.
    pub network_bytes: u64,
    /// bytes / network_bytes with zlib, else null.
    pub compression_ratio: Option<f64>,
    pub verified_pages: u64,
    pub bad_pages: u64,
    pub manifest: bool,
    /// `--delta`: bytes compared, entries removed.
    pub refresh: Option<RefreshJson>,
    /// `-i`: the INCREMENTAL files.
    pub incremental: Option<IncrementalJson>,
}

#[derive(Debug, Serialize)]
pub struct RefreshJson {
    pub compared_bytes: u64,
    pub removed_entries: u64,
}

#[derive(Debug, Serialize)]
pub struct IncrementalJson {
    pub relation_files: u64,
    pub changed_blocks: u64,
    pub full_backup_bytes: u64,
}

/// The JSON summary's numbers of a finished backup.
pub fn json(s: &Summary) -> Json {
    let secs = s.elapsed.as_secs_f64();
    Json {
        files: s.files,
        bytes: s.bytes,
        vanished_files: s.vanished,
        elapsed_s: crate::jsonlog::seconds(s.elapsed),
        rate_bytes_per_s: (s.bytes as f64 / secs.max(0.001)) as u64,
        wal_start: s.start.to_string(),
        wal_stop: s.stop.to_string(),
        timeline: s.timeline,
        wal_segments: s.wal_files,
        wal_history_files: s.wal_history,
        compression: s.method.to_string(),
        network_bytes: s.wire,
        compression_ratio: match s.method {
            Method::Zlib(_) | Method::Zstd(_) if s.wire > 0 => {
                Some((s.bytes as f64 / s.wire as f64 * 1000.0).round() / 1000.0)
            }
            _ => None,
        },
        verified_pages: s.verified_pages,
        bad_pages: s.bad_pages,
        manifest: s.manifest,
        refresh: s.refresh.map(|r| RefreshJson { compared_bytes: r.compared, removed_entries: r.removed }),
        incremental: s.incremental.map(|i| IncrementalJson {
            relation_files: i.incremental_files,
            changed_blocks: i.blocks,
            full_backup_bytes: i.full_size,
        }),
    }
}

/// `PREFIX` then the command, its DEST quoted.
fn command(prefix: &str, dest: &Path, suffix: &str) -> Vec<u8> {
    let mut l = prefix.as_bytes().to_vec();
    l.extend(shell_quote(dest.as_os_str().as_bytes()));
    l.extend_from_slice(suffix.as_bytes());
    l
}

/// Prints the summary and the commands.
pub fn print(dest: &Path, s: &Summary) {
    crate::logging::out(line(s).as_bytes());
    if s.manifest {
        crate::logging::out(&command("pgbb: verify it with: pg_verifybackup ", dest, ""));
    }
    crate::logging::out(&command("pgbb: start it with: pg_ctl -D ", dest, " start"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        let q = |s: &[u8]| String::from_utf8_lossy(&shell_quote(s)).into_owned();
        assert_eq!(q(b"/var/lib/pgbb/backup-1.2_x"), "/var/lib/pgbb/backup-1.2_x");
        assert_eq!(q(b"/tmp/a b"), "'/tmp/a b'");
        assert_eq!(q(b"/tmp/it's"), "'/tmp/it'\\''s'");
        assert_eq!(q(b"$HOME`x`\"y\"\\z*?~!#;&|<>(){}"), "'$HOME`x`\"y\"\\z*?~!#;&|<>(){}'");
        assert_eq!(q(b"line\nbreak"), "'line\nbreak'");
        assert_eq!(q(b""), "''");
        assert_eq!(shell_quote(b"caf\xe9 x"), b"'caf\xe9 x'");
    }

    #[test]
    fn quoted_words_survive_sh() {
        for word in ["plain", "a b", "it's", "'", "''", "\"$(touch /tmp/pgbb-never)\"", "tab\there", "-n", "x\\y"] {
            let cmd = format!("printf '%s' {}", String::from_utf8_lossy(&shell_quote(word.as_bytes())));
            let out = std::process::Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), word, "{cmd}");
        }
        assert!(!Path::new("/tmp/pgbb-never").exists());
    }

    #[test]
    fn json_numbers_are_those_of_the_line() {
        let s = Summary {
            files: 963,
            bytes: 23 << 20,
            vanished: 2,
            wal_files: 3,
            wal_history: 1,
            start: crate::lsn::Lsn(0x2000028),
            stop: crate::lsn::Lsn(0x4000100),
            timeline: 2,
            elapsed: std::time::Duration::from_millis(2345),
            refresh: None,
            incremental: Some(crate::incremental::Stats { incremental_files: 12, blocks: 40, full_size: 100 << 20 }),
            method: Method::Zlib(1),
            bad_pages: 1,
            manifest: true,
            wire: 5 << 20,
            verified_pages: 2825,
        };
        let v = serde_json::to_value(json(&s)).unwrap();
        assert_eq!(v["wal_start"], "0/2000028");
        assert_eq!(v["wal_stop"], "0/4000100");
        assert_eq!((v["wal_segments"].as_u64(), v["wal_history_files"].as_u64()), (Some(3), Some(1)));
        assert_eq!((v["elapsed_s"].as_f64(), v["compression"].as_str()), (Some(2.345), Some("zlib:1")));
        assert_eq!(v["compression_ratio"].as_f64(), Some(4.6));
        assert!(line(&s).contains(&format!(" ({}/s)", human(v["rate_bytes_per_s"].as_u64().unwrap()))), "{}", line(&s));
        assert!(line(&s).ends_with("2825 pages verified, compressed 4.6:1 (5.0 MB over the network)"), "{}", line(&s));
        assert_eq!(v["incremental"]["changed_blocks"], 40);
        assert!(v["refresh"].is_null());
        assert_eq!((v["bad_pages"].as_u64(), v["vanished_files"].as_u64()), (Some(1), Some(2)));
    }

    #[test]
    fn history_files_are_not_segments() {
        let mut s = Summary {
            files: 3,
            bytes: 1 << 20,
            vanished: 0,
            wal_files: 1,
            wal_history: 0,
            start: crate::lsn::Lsn(0x2000028),
            stop: crate::lsn::Lsn(0x2000100),
            timeline: 1,
            elapsed: std::time::Duration::from_secs(1),
            refresh: None,
            incremental: None,
            method: Method::Plain,
            bad_pages: 0,
            manifest: true,
            wire: 1 << 20,
            verified_pages: 7,
        };
        assert!(line(&s).ends_with("on timeline 1 (1 segment), 7 pages verified"), "{}", line(&s));
        (s.wal_files, s.wal_history, s.timeline) = (2, 1, 2);
        assert!(line(&s).ends_with("on timeline 2 (2 segments, 1 history file), 7 pages verified"), "{}", line(&s));
        s.refresh = Some(crate::delta::Refresh { compared: 3 << 20, removed: 2 });
        s.wire = 64 << 10;
        assert!(
            line(&s).contains(" (refreshed: 3.0 MB compared, 64.0 kB over the network, 2 entries removed), WAL"),
            "{}",
            line(&s)
        );
        s.refresh = None;
        s.incremental = Some(crate::incremental::Stats { incremental_files: 12, blocks: 40, full_size: 100 << 20 });
        assert!(
            line(&s).contains(
                " (incremental: 12 relation files with 40 changed blocks, 1.0 MB of 100.0 MB for a full backup, 1.0%), WAL"
            ),
            "{}",
            line(&s)
        );
    }
}
