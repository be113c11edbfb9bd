//! The server's timeline history, as an incremental backup checks the earlier backup's WAL
//! ranges against it and finds which WAL summaries it needs (core's
//! `PrepareForIncrementalBackup`): each timeline's span, the newest first.

use crate::lsn::Lsn;

/// One timeline of the history: it begins at `begin` and, unless it is the current one,
/// ends where the next one branched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub tli: u32,
    pub begin: Lsn,
    /// `None` for the timeline the history is of (it has not ended).
    pub end: Option<Lsn>,
}

/// The history of timeline `tli` from the text of its history file (`None` for timeline 1,
/// which has none): the newest timeline first. Lines are `parent<TAB>switchpoint<TAB>reason`;
/// blank lines and `#` comments are skipped, as the server skips them.
pub fn parse(tli: u32, history: Option<&str>) -> Result<Vec<Span>, String> {
    let mut spans = Vec::new();
    let mut begin = Lsn(0);
    for line in history.unwrap_or("").lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(parent), Some(switch)) = (f.next(), f.next()) else {
            return Err(format!("bad line in the history of timeline {tli}: {line:?}"));
        };
        let parent: u32 =
            parent.parse().map_err(|_| format!("bad timeline {parent:?} in the history of timeline {tli}"))?;
        let switch: Lsn = switch.parse().map_err(|e| format!("in the history of timeline {tli}: {e}"))?;
        if spans.last().is_some_and(|s: &Span| s.tli >= parent) || parent >= tli {
            return Err(format!("timelines out of order in the history of timeline {tli}"));
        }
        spans.push(Span { tli: parent, begin, end: Some(switch) });
        begin = switch;
    }
    spans.push(Span { tli, begin, end: None });
    spans.reverse();
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_as_the_server_writes_them() {
        assert_eq!(parse(1, None).unwrap(), vec![Span { tli: 1, begin: Lsn(0), end: None }]);
        let h = "1\t0/E5148D48\tno recovery target specified\n\n2\t0/F0000000\tbefore 2026-01-01\n";
        assert_eq!(
            parse(3, Some(h)).unwrap(),
            vec![
                Span { tli: 3, begin: Lsn(0xF000_0000), end: None },
                Span { tli: 2, begin: Lsn(0xE514_8D48), end: Some(Lsn(0xF000_0000)) },
                Span { tli: 1, begin: Lsn(0), end: Some(Lsn(0xE514_8D48)) },
            ]
        );
        assert!(parse(2, Some("x\t0/1\n")).is_err());
        assert!(parse(2, Some("1\n")).is_err());
        assert!(parse(2, Some("2\t0/1\n")).is_err(), "a parent at or after the timeline");
    }
}
