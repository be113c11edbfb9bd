//! Whether `--delta` may compare DEST's relation pages by their header (LSN and checksum, see
//! `fingerprint`) instead of a hash: only when every page DEST holds is a version of its page
//! from the server's own history, up to a known LSN. That is so for a backup of this cluster
//! that was never started (its `backup_label` and `backup_manifest` say from where to where),
//! and for what pgbb runs wrote from a primary whose timeline the server's history still
//! holds (the marker says which, and up to where). A copy that was started (a clone, a
//! standby), an older pgbb's interrupted run, a cluster without data checksums, a server in
//! recovery (its replay timeline cannot be read over SQL, only its last restartpoint's):
//! compared by hash.
//!
//! The assumption is pg_rewind's and incremental backup's: a timeline and an LSN name one
//! point of the cluster's history (a server restored from a copy and run on without a
//! timeline switch breaks it for every one of them).

use std::path::Path;

use crate::incremental::old_manifest;
use crate::incremental::timeline::Span;
use crate::lsn::Lsn;

use super::origin::{marker_field, read_opt, MARKER};

/// The marker's line that says every page in DEST came from a primary on this timeline.
pub const MARKER_FIELD: &str = "pages_of_timeline";
/// The marker's line that bounds the LSNs of the pages that did (absent: every page).
pub const MARKER_UPTO: &str = "pages_upto";

/// What the server is now.
#[derive(Debug, Clone)]
pub struct Server {
    /// The cluster has data checksums (a torn or misplaced page of the copy shows).
    pub checksums: bool,
    /// In recovery (a standby).
    pub standby: bool,
    /// The WAL position now: written (primary) or replayed (standby).
    pub now: Lsn,
    /// Its timeline history, the newest first (`incremental::timeline::parse`).
    pub history: Vec<Span>,
}

/// How DEST's relation pages are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// By header, pages with an LSN up to `upto`; `open`: that is only the server's position
    /// now (every page DEST holds is of the history), not a bound of DEST's; `why`, for the log.
    Header { upto: Lsn, open: bool, why: String },
    /// By hash; why not by header.
    Hash(String),
}

/// How the pages of the copy in `dest` can be compared with the server's.
pub fn assess(dest: &Path, server: &Server) -> Trust {
    if !server.checksums {
        return Trust::Hash("the cluster has no data checksums".into());
    }
    if server.standby {
        return Trust::Hash("the server is a standby (its replay timeline cannot be read over SQL)".into());
    }
    match read_opt(dest, MARKER) {
        // A run writes its record before it removes pg_control: DEST may have been started since.
        Ok(Some(_)) if !matches!(read_opt(dest, "global/pg_control"), Ok(None)) => Trust::Hash(
            "DEST holds a pg_control beside the record of an interrupted run (it may have been started since)".into(),
        ),
        Ok(Some(marker)) => from_marker(&String::from_utf8_lossy(&marker), server),
        Ok(None) => from_backup(dest, server),
        Err(e) => Trust::Hash(e.to_string()),
    }
}

/// What an interrupted run left: its pages are of the timeline it recorded, if it did, up to
/// the LSN it recorded, if it did.
fn from_marker(marker: &str, server: &Server) -> Trust {
    let field = |key: &str| marker_field(marker, key);
    let bound = match field(MARKER_UPTO).map(str::parse::<Lsn>) {
        None => None,
        Some(Ok(lsn)) => Some(lsn),
        Some(Err(_)) => return Trust::Hash(format!("DEST's {MARKER} has a damaged {MARKER_UPTO} line")),
    };
    let Some(tli) = field(MARKER_FIELD).and_then(|v| v.parse::<u32>().ok()) else {
        return Trust::Hash(
            "DEST holds what an interrupted run left without saying where its pages came from \
             (a refresh of a started copy, a backup of a standby, or an older pgbb)"
                .into(),
        );
    };
    match server.history.iter().find(|s| s.tli == tli) {
        Some(span) => {
            let upto = [bound, span.end].into_iter().flatten().fold(server.now, Lsn::min);
            let why = format!("DEST holds pages pgbb copied from this cluster on timeline {tli}");
            Trust::Header { upto, open: bound.is_none() && span.end.is_none(), why }
        }
        None => Trust::Hash(format!("DEST's pages are of timeline {tli}, which is not in the server's history")),
    }
}

/// A finished backup: never started (its `backup_label` is still there), its manifest of the
/// same backup, its WAL in the server's history.
fn from_backup(dest: &Path, server: &Server) -> Trust {
    let (Ok(Some(label)), Ok(Some(manifest))) = (read_opt(dest, "backup_label"), read_opt(dest, "backup_manifest"))
    else {
        return Trust::Hash("DEST is not a backup that was never started (no backup_label and backup_manifest)".into());
    };
    let ranges = match old_manifest::wal_ranges(&manifest) {
        Ok(r) => r,
        Err(e) => return Trust::Hash(format!("DEST's backup_manifest cannot be used: {e}")),
    };
    let label = String::from_utf8_lossy(&label);
    let (start, tli) = (crate::label::start_lsn(&label), crate::label::start_timeline(&label));
    let first = ranges.iter().min_by_key(|r| (r.start, r.timeline));
    let last = ranges.iter().max_by_key(|r| (r.end, r.timeline));
    let (Some(first), Some(last)) = (first, last) else {
        return Trust::Hash("DEST's backup_manifest has no WAL range".into());
    };
    if start != Some(first.start) || tli != Some(first.timeline) {
        return Trust::Hash("DEST's backup_label and backup_manifest are of different backups".into());
    }
    for r in &ranges {
        let within = server.history.iter().any(|s| s.tli == r.timeline && r.end <= s.end.unwrap_or(server.now));
        if !within || r.end > server.now {
            return Trust::Hash(format!(
                "DEST's backup (timeline {} up to {}) is not in the server's history",
                r.timeline, r.end
            ));
        }
    }
    Trust::Header {
        upto: last.end,
        open: false,
        why: format!(
            "DEST is a backup of timeline {} ({} to {}) that was never started",
            first.timeline, first.start, last.end
        ),
    }
}

/// The marker's lines for a run whose pages are all of `tli`'s history: a run on a primary (a
/// standby could be promoted while it copies) into an empty DEST (`upto` None: every page it
/// writes is) or a DEST whose pages were trusted up to `upto` (the pages it writes above that
/// will be compared by hash if it is interrupted).
pub fn marker_lines(tli: u32, upto: Option<Lsn>) -> String {
    match upto {
        None => format!("{MARKER_FIELD}={tli}\n"),
        Some(upto) => format!("{MARKER_FIELD}={tli}\n{MARKER_UPTO}={upto}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(history: Vec<Span>) -> Server {
        Server { checksums: true, standby: false, now: Lsn(0x9000_0000), history }
    }

    fn on_tl1() -> Server {
        server(vec![Span { tli: 1, begin: Lsn(0), end: None }])
    }

    /// Timeline 2 branched off timeline 1 at 0/50000000.
    fn on_tl2() -> Server {
        server(vec![
            Span { tli: 2, begin: Lsn(0x5000_0000), end: None },
            Span { tli: 1, begin: Lsn(0), end: Some(Lsn(0x5000_0000)) },
        ])
    }

    fn dest_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                         CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                         BACKUP FROM: primary\nSTART TIME: 2026-11-28 08:00:00 UTC\nLABEL: x\n\
                         START TIMELINE: 1\n";

    /// A manifest as the server writes it (its checksum over everything before it).
    fn manifest(tli: u32, start: &str, end: &str) -> String {
        resum(&format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7,\n\"Files\": [\n],\n\
             \"WAL-Ranges\": [\n{{ \"Timeline\": {tli}, \"Start-LSN\": \"{start}\", \"End-LSN\": \"{end}\" }}\n],\n"
        ))
    }

    /// `manifest` (or its body) with its checksum made anew.
    fn resum(manifest: &str) -> String {
        use sha2::Digest as _;
        let body = manifest.split("\"Manifest-Checksum\"").next().unwrap_or(manifest);
        let sum: String = sha2::Sha256::digest(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n")
    }

    #[test]
    fn a_backup_never_started_is_trusted_up_to_its_end() {
        let d = dest_with(&[("backup_label", LABEL), ("backup_manifest", &manifest(1, "0/2000028", "0/2000138"))]);
        assert!(matches!(assess(d.path(), &on_tl1()), Trust::Header { upto: Lsn(0x200_0138), .. }));
        // PostgreSQL 13–16 write version 1.
        let v1 = manifest(1, "0/2000028", "0/2000138").replace("Version\": 2", "Version\": 1");
        let v1 = dest_with(&[("backup_label", LABEL), ("backup_manifest", &resum(&v1))]);
        assert!(matches!(assess(v1.path(), &on_tl1()), Trust::Header { upto: Lsn(0x200_0138), .. }));
        // Still so after a promotion past its end; not when the promotion came before its end.
        assert!(matches!(assess(d.path(), &on_tl2()), Trust::Header { .. }));
        let late = dest_with(&[("backup_label", LABEL), ("backup_manifest", &manifest(1, "0/2000028", "0/60000000"))]);
        assert!(matches!(assess(late.path(), &on_tl2()), Trust::Hash(_)));
    }

    #[test]
    fn a_started_copy_a_mismatch_or_no_checksums_is_hashed() {
        let m = manifest(1, "0/2000028", "0/2000138");
        let started = dest_with(&[("backup_label.old", LABEL), ("backup_manifest", &m)]);
        assert!(matches!(assess(started.path(), &on_tl1()), Trust::Hash(_)));
        let other = dest_with(&[("backup_label", LABEL), ("backup_manifest", &manifest(1, "0/3000028", "0/3000138"))]);
        assert!(matches!(assess(other.path(), &on_tl1()), Trust::Hash(_)));
        let ahead = dest_with(&[("backup_label", LABEL), ("backup_manifest", &manifest(1, "0/2000028", "1/0"))]);
        assert!(matches!(assess(ahead.path(), &on_tl1()), Trust::Hash(_)), "past the server's position");
        let damaged = dest_with(&[("backup_label", LABEL), ("backup_manifest", &m.replace("0/2000138", "0/2000139"))]);
        assert!(matches!(assess(damaged.path(), &on_tl1()), Trust::Hash(_)));
        let good = dest_with(&[("backup_label", LABEL), ("backup_manifest", &m)]);
        let plain = Server { checksums: false, ..on_tl1() };
        assert!(matches!(assess(good.path(), &plain), Trust::Hash(_)));
        let standby = Server { standby: true, ..on_tl1() };
        assert!(matches!(assess(good.path(), &standby), Trust::Hash(_)));
    }

    #[test]
    fn an_interrupted_run_is_trusted_on_its_timeline_only() {
        let rec = format!("pgbb: a backup in progress\nsystem_identifier=7\n{}", marker_lines(1, None));
        let d = dest_with(&[(MARKER, &rec)]);
        assert_eq!(
            assess(d.path(), &on_tl1()),
            Trust::Header {
                upto: Lsn(0x9000_0000),
                open: true,
                why: "DEST holds pages pgbb copied from this cluster on timeline 1".into()
            }
        );
        // After a promotion: up to where timeline 1 ended.
        assert!(matches!(assess(d.path(), &on_tl2()), Trust::Header { upto: Lsn(0x5000_0000), open: false, .. }));
        // A run that trusted its DEST only up to an LSN passes the bound on.
        let bounded = format!("system_identifier=7\n{}", marker_lines(1, Some(Lsn(0x300_0000))));
        let d1 = dest_with(&[(MARKER, &bounded)]);
        assert!(matches!(assess(d1.path(), &on_tl1()), Trust::Header { upto: Lsn(0x300_0000), open: false, .. }));
        let damaged = dest_with(&[(MARKER, &format!("{}pages_upto=x\n", marker_lines(1, None)))]);
        assert!(matches!(assess(damaged.path(), &on_tl1()), Trust::Hash(_)));
        // A pg_control beside the record: DEST may have been started since.
        std::fs::create_dir(d.path().join("global")).unwrap();
        std::fs::write(d.path().join("global/pg_control"), [0u8; 8192]).unwrap();
        assert!(matches!(assess(d.path(), &on_tl1()), Trust::Hash(_)));
        let d2 = dest_with(&[(MARKER, &format!("system_identifier=7\n{}", marker_lines(3, None)))]);
        assert!(matches!(assess(d2.path(), &on_tl2()), Trust::Hash(_)));
        // A marker without the line (a refresh of a started copy, an older pgbb), even beside
        // a backup_label: hashed.
        let d3 = dest_with(&[(MARKER, "system_identifier=7\n"), ("backup_label", LABEL)]);
        assert!(matches!(assess(d3.path(), &on_tl1()), Trust::Hash(_)));
    }
}
