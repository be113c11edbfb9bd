//! The fields of a `backup_label` that pgbb reads back: where and on which timeline the
//! backup started.

use crate::lsn::Lsn;

/// `START WAL LOCATION: 0/2000028 (file …)`: the LSN.
pub fn start_lsn(label: &str) -> Option<Lsn> {
    field(label, "START WAL LOCATION:")?.split_whitespace().next()?.parse().ok()
}

/// `START TIMELINE: 1`.
pub fn start_timeline(label: &str) -> Option<u32> {
    field(label, "START TIMELINE:")?.parse().ok()
}

fn field<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_as_the_server_writes_them() {
        let label = "START WAL LOCATION: 0/7000028 (file 000000010000000000000007)\n\
                     CHECKPOINT LOCATION: 0/7000080\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
                     START TIME: 2026-11-28 08:00:00 UTC\nLABEL: x\nSTART TIMELINE: 2\n";
        assert_eq!(start_lsn(label), Some(Lsn(0x700_0028)));
        assert_eq!(start_timeline(label), Some(2));
        assert_eq!(start_lsn("LABEL: START WAL LOCATION: 0/1\n"), None);
        assert_eq!(start_timeline("START TIMELINE: x\n"), None);
    }
}
