//! WAL positions (LSNs), timelines and WAL segment file names, computed locally.

use std::fmt;
use std::str::FromStr;

/// A WAL position, printed by PostgreSQL as `%X/%X`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid WAL location {0:?} (expected something like 0/16B3748)")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;
    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// WAL geometry of one cluster: the segment size in bytes (a power of two, 1 MB to 1 GB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalGeometry {
    pub seg_size: u64,
}

impl WalGeometry {
    pub fn new(seg_size: u64) -> Option<WalGeometry> {
        if seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg_size) {
            Some(WalGeometry { seg_size })
        } else {
            None
        }
    }

    fn segs_per_xlogid(&self) -> u64 {
        0x1_0000_0000 / self.seg_size
    }

    /// The segment number holding `lsn`.
    pub fn segno(&self, lsn: Lsn) -> u64 {
        lsn.0 / self.seg_size
    }

    /// The last segment a backup ending at `end` needs (the one holding the byte before `end`).
    pub fn end_segno(&self, end: Lsn) -> u64 {
        end.0.saturating_sub(1) / self.seg_size
    }

    /// How many bytes of its last segment (see [`Self::end_segno`]) a backup ending at `end`
    /// needs: up to `end` itself, the whole segment when `end` is on a segment boundary.
    pub fn end_offset(&self, end: Lsn) -> u64 {
        end.0 - self.end_segno(end) * self.seg_size
    }

    /// File name of segment `segno` on timeline `tli`.
    pub fn file_name(&self, tli: u32, segno: u64) -> String {
        format!("{:08X}{:08X}{:08X}", tli, segno / self.segs_per_xlogid(), segno % self.segs_per_xlogid())
    }

    /// Parses a segment file name into (timeline, segno); `None` for anything else.
    pub fn parse_file_name(&self, name: &str) -> Option<(u32, u64)> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        if seg >= self.segs_per_xlogid() {
            return None;
        }
        Some((tli, log * self.segs_per_xlogid() + seg))
    }

    /// True when segment `segno` is completely written once WAL has been written up to `written`.
    pub fn is_complete(&self, segno: u64, written: Lsn) -> bool {
        (segno + 1) * self.seg_size <= written.0
    }
}

/// True for a timeline history file name such as `00000002.history`.
pub fn is_history_file(name: &str) -> bool {
    name.len() == 16 && name.ends_with(".history") && name[..8].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/5000028".parse::<Lsn>().unwrap().to_string(), "0/5000028");
        // PG19-dev zero-pads the low word.
        assert_eq!("0/05000028".parse::<Lsn>().unwrap(), Lsn(0x0500_0028));
        assert!("05000028".parse::<Lsn>().is_err());
        assert!("0/".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_names_match_postgres() {
        let g = WalGeometry::new(16 << 20).unwrap();
        let start: Lsn = "0/5000028".parse().unwrap();
        assert_eq!(g.file_name(1, g.segno(start)), "000000010000000000000005");
        // 16 MB segments: 256 per xlogid.
        assert_eq!(g.file_name(2, 0x1_23), "000000020000000100000023");
        assert_eq!(g.parse_file_name("000000020000000100000023"), Some((2, 0x123)));
        assert_eq!(g.parse_file_name("000000020000000100000123"), None);
        assert_eq!(g.parse_file_name("00000002.history"), None);
        let big = WalGeometry::new(1 << 30).unwrap();
        assert_eq!(big.file_name(1, 9), "000000010000000200000001");
        assert_eq!(big.parse_file_name("000000010000000200000001"), Some((1, 9)));
    }

    #[test]
    fn end_segment_and_completeness() {
        let g = WalGeometry::new(16 << 20).unwrap();
        // An end exactly on a boundary belongs to the previous segment.
        assert_eq!(g.end_segno(Lsn(6 * (16 << 20))), 5);
        assert_eq!(g.end_segno(Lsn(6 * (16 << 20) + 1)), 6);
        assert!(g.is_complete(5, Lsn(6 * (16 << 20))));
        assert!(!g.is_complete(5, Lsn(6 * (16 << 20) - 1)));
        assert!(WalGeometry::new(3 << 20).is_none());
        // What of the last segment a backup needs: through the stop, all of it on a boundary.
        assert_eq!(g.end_offset(Lsn(6 * (16 << 20) + 0x128)), 0x128);
        assert_eq!(g.end_offset(Lsn(6 * (16 << 20))), 16 << 20);
        assert_eq!(g.end_offset(Lsn(6 * (16 << 20) + (16 << 20) - 8)), (16 << 20) - 8);
    }

    #[test]
    fn history_names() {
        assert!(is_history_file("00000002.history"));
        assert!(!is_history_file("00000002.history.tmp"));
        assert!(!is_history_file("0000000Z.history"));
    }
}
