//! What an incremental backup needs from the server's WAL summaries (core's
//! `PrepareForIncrementalBackup`): the earlier backup's WAL ranges checked against this
//! server's history and this backup's start, then on each timeline the LSN range whose
//! changes must be summarized, and the summaries that cover it without a gap.

use crate::lsn::Lsn;
use crate::pg::sql_incr::Summary;

use super::old_manifest::WalRange;
use super::timeline::Span;

/// Why the earlier backup cannot be the base of this one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("timeline {0} found in OLD_MANIFEST, but not in this server's history: the earlier backup is of another history (take a full backup)")]
    UnknownTimeline(u32),
    #[error("OLD_MANIFEST requires WAL from initial timeline {tli} starting at {start}, but that timeline begins at {begin}")]
    InitialTimeline { tli: u32, start: Lsn, begin: Lsn },
    #[error("OLD_MANIFEST requires WAL from continuation timeline {tli} starting at {start}, but that timeline begins at {begin}")]
    ContinuationTimeline { tli: u32, start: Lsn, begin: Lsn },
    #[error("OLD_MANIFEST requires WAL from final timeline {tli} ending at {end}, but this backup starts at {start} (on a standby the backup starts at its latest restartpoint, which must come after the earlier backup: let the standby replay past {end}, run CHECKPOINT on the primary, and try again)")]
    FinalTimeline { tli: u32, end: Lsn, start: Lsn },
    #[error("OLD_MANIFEST requires WAL from non-final timeline {tli} ending at {end}, but this server switched timelines at {switch}")]
    NonFinalTimeline { tli: u32, end: Lsn, switch: Lsn },
    #[error("OLD_MANIFEST has no WAL ranges")]
    NoRanges,
}

/// Why the summaries do not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverError {
    #[error("WAL summaries are required on timeline {tli} from {from} to {to}, but no summaries for that timeline and LSN range exist")]
    None { tli: u32, from: Lsn, to: Lsn },
    #[error("WAL summaries are required on timeline {tli} from {from} to {to}, but the summaries for that timeline and LSN range are incomplete (the first unsummarized LSN is {missing})")]
    Gap { tli: u32, from: Lsn, to: Lsn, missing: Lsn },
}

/// The earlier backup as this one's base: where the label says it came from (the earliest
/// range's start and timeline) and, per timeline, the LSN range to summarize, the start
/// timeline's first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    pub from_lsn: Lsn,
    pub from_tli: u32,
    /// (timeline, from, to).
    pub ranges: Vec<(u32, Lsn, Lsn)>,
}

/// Checks `old` against the history (newest first) of the backup's start timeline, and the
/// backup's start.
pub fn needed(old: &[WalRange], history: &[Span], start: Lsn) -> Result<Needed, RangeError> {
    let span = |tli: u32| history.iter().find(|s| s.tli == tli).copied().ok_or(RangeError::UnknownTimeline(tli));
    let mut earliest: Option<(Span, Lsn)> = None;
    let mut latest: Option<Span> = None;
    for r in old {
        let s = span(r.timeline)?;
        if earliest.is_none_or(|(e, _)| s.begin < e.begin) {
            earliest = Some((s, r.start));
        }
        if latest.is_none_or(|l| s.begin > l.begin) {
            latest = Some(s);
        }
    }
    let (Some((first, from_lsn)), Some(last)) = (earliest, latest) else { return Err(RangeError::NoRanges) };
    for r in old {
        let s = span(r.timeline)?;
        if s.tli == first.tli && r.start < s.begin {
            return Err(RangeError::InitialTimeline { tli: s.tli, start: r.start, begin: s.begin });
        }
        if s.tli != first.tli && r.start != s.begin {
            return Err(RangeError::ContinuationTimeline { tli: s.tli, start: r.start, begin: s.begin });
        }
        if s.tli == last.tli && r.end > start {
            return Err(RangeError::FinalTimeline { tli: s.tli, end: r.end, start });
        }
        if s.tli != last.tli && Some(r.end) != s.end {
            let switch = s.end.unwrap_or(Lsn(0));
            return Err(RangeError::NonFinalTimeline { tli: s.tli, end: r.end, switch });
        }
    }
    let mut ranges = Vec::new();
    for (i, s) in history.iter().enumerate() {
        let to = if i == 0 { start } else { s.end.unwrap_or(start) };
        let from = if s.tli == first.tli { from_lsn } else { s.begin };
        ranges.push((s.tli, from, to));
        if s.tli == first.tli {
            break;
        }
    }
    Ok(Needed { from_lsn, from_tli: first.tli, ranges })
}

/// The summaries that cover each range without a gap (those that overlap it), in ascending
/// LSN order across timelines; or where they stop.
pub fn covering(all: &[Summary], needed: &Needed) -> Result<Vec<Summary>, CoverError> {
    let mut out = Vec::new();
    for &(tli, from, to) in &needed.ranges {
        let mut on: Vec<Summary> =
            all.iter().filter(|s| s.tli == tli && s.end > from && s.start < to).copied().collect();
        on.sort_by_key(|s| (s.start, s.end));
        if on.is_empty() {
            if from >= to {
                continue;
            }
            return Err(CoverError::None { tli, from, to });
        }
        let mut reached = from;
        for s in &on {
            if s.start > reached {
                break;
            }
            reached = reached.max(s.end);
        }
        if reached < to {
            return Err(CoverError::Gap { tli, from, to, missing: reached });
        }
        out.extend(on);
    }
    out.sort_by_key(|s| (s.start, s.end, s.tli));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(tli: u32, start: u64, end: u64) -> WalRange {
        WalRange { timeline: tli, start: Lsn(start), end: Lsn(end) }
    }

    fn sum(tli: u32, start: u64, end: u64) -> Summary {
        Summary { tli, start: Lsn(start), end: Lsn(end) }
    }

    #[test]
    fn one_timeline() {
        let h = [Span { tli: 1, begin: Lsn(0), end: None }];
        let n = needed(&[r(1, 0x500_0028, 0x500_0100)], &h, Lsn(0x700_0028)).unwrap();
        assert_eq!(
            n,
            Needed { from_lsn: Lsn(0x500_0028), from_tli: 1, ranges: vec![(1, Lsn(0x500_0028), Lsn(0x700_0028))] }
        );
        // Summaries are cut at checkpoints: 5..6 and 6..7 cover it; 5..6 alone does not.
        let all = [sum(1, 0x100_0000, 0x500_0028), sum(1, 0x600_0000, 0x700_0028), sum(1, 0x500_0028, 0x600_0000)];
        let got = covering(&all, &n).unwrap();
        assert_eq!(got, vec![sum(1, 0x500_0028, 0x600_0000), sum(1, 0x600_0000, 0x700_0028)]);
        assert_eq!(
            covering(&all[..1], &n),
            Err(CoverError::None { tli: 1, from: Lsn(0x500_0028), to: Lsn(0x700_0028) })
        );
        assert_eq!(
            covering(&[all[2]], &n),
            Err(CoverError::Gap { tli: 1, from: Lsn(0x500_0028), to: Lsn(0x700_0028), missing: Lsn(0x600_0000) })
        );
        // The earlier backup ended after this one starts (a standby without a new restartpoint).
        assert!(matches!(
            needed(&[r(1, 0x500_0028, 0x800_0000)], &h, Lsn(0x700_0028)),
            Err(RangeError::FinalTimeline { .. })
        ));
        assert_eq!(needed(&[r(7, 1, 2)], &h, Lsn(9)), Err(RangeError::UnknownTimeline(7)));
        assert_eq!(needed(&[], &h, Lsn(9)), Err(RangeError::NoRanges));
    }

    #[test]
    fn across_a_promotion() {
        // Timeline 2 began at 0/E5148D48; the earlier backup was on 1, this one starts on 2.
        let h = [
            Span { tli: 2, begin: Lsn(0xE514_8D48), end: None },
            Span { tli: 1, begin: Lsn(0), end: Some(Lsn(0xE514_8D48)) },
        ];
        let n = needed(&[r(1, 0x500_0028, 0x600_0000)], &h, Lsn(0xF000_0028)).unwrap();
        assert_eq!((n.from_lsn, n.from_tli), (Lsn(0x500_0028), 1));
        assert_eq!(n.ranges, vec![(2, Lsn(0xE514_8D48), Lsn(0xF000_0028)), (1, Lsn(0x500_0028), Lsn(0xE514_8D48))]);
        let all = [sum(2, 0xE514_8D48, 0xF000_0028), sum(1, 0x400_0000, 0xE514_8D48)];
        assert_eq!(covering(&all, &n).unwrap(), vec![all[1], all[0]], "ascending LSN, timeline 1 first");
        // A range on the old timeline must end exactly at the switch.
        assert!(matches!(
            needed(&[r(1, 0x500_0028, 0xE000_0000), r(2, 0xE514_8D48, 0xE600_0000)], &h, Lsn(0xF000_0028)),
            Err(RangeError::NonFinalTimeline { .. })
        ));
        // ... and one on the new timeline must start where it begins.
        assert!(matches!(
            needed(&[r(1, 0x500_0028, 0xE514_8D48), r(2, 0xE600_0000, 0xE700_0000)], &h, Lsn(0xF000_0028)),
            Err(RangeError::ContinuationTimeline { .. })
        ));
        let ok = needed(&[r(1, 0x500_0028, 0xE514_8D48), r(2, 0xE514_8D48, 0xE700_0000)], &h, Lsn(0xF000_0028));
        assert_eq!(ok.unwrap().from_tli, 1);
    }
}
