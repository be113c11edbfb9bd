//! What the connected server can do, named by feature rather than by version number.

use crate::layout::LayoutRules;

/// Capabilities of one server, derived from `server_version_num`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub version_num: i32,
}

/// The oldest major pgbb backs up, on a best-effort basis (older ones are refused, exit 4).
pub const OLDEST_MAJOR: i32 = 13;
/// The oldest major checked in full, and the newest one known (newer ones are untested).
pub const FIRST_SUPPORTED_MAJOR: i32 = 14;
pub const NEWEST_MAJOR: i32 = 18;

/// How well pgbb knows a major version.
#[derive(Debug, PartialEq, Eq)]
pub enum Support {
    TooOld,
    BestEffort,
    Supported,
    Untested,
}

impl Caps {
    pub fn new(version_num: i32) -> Caps {
        Caps { version_num }
    }

    pub fn major(&self) -> i32 {
        self.version_num / 10000
    }

    pub fn support(&self) -> Support {
        match self.major() {
            m if m < OLDEST_MAJOR => Support::TooOld,
            m if m < FIRST_SUPPORTED_MAJOR => Support::BestEffort,
            m if m <= NEWEST_MAJOR => Support::Supported,
            _ => Support::Untested,
        }
    }

    /// `pg_backup_start`/`pg_backup_stop` (15+) instead of `pg_start_backup`/`pg_stop_backup`.
    pub fn new_backup_api(&self) -> bool {
        self.version_num >= 150000
    }

    /// The `idle_session_timeout` setting exists (14+).
    pub fn idle_session_timeout(&self) -> bool {
        self.version_num >= 140000
    }

    /// backup_manifest version 2, with `System-Identifier` (17+).
    pub fn manifest_system_identifier(&self) -> bool {
        self.version_num >= 170000
    }

    /// WAL summaries readable over SQL, for incremental backups (17+).
    pub fn wal_summaries(&self) -> bool {
        self.version_num >= 170000
    }

    /// File-layout rules: strict relation names, `global` as a relation directory, page
    /// checks in relation files only, `.DS_Store` skipped, `pg_wal/summaries` (all 17+).
    pub fn layout_rules(&self) -> LayoutRules {
        if self.version_num >= 170000 {
            LayoutRules::V17
        } else {
            LayoutRules::default()
        }
    }

    /// The functions (with signatures) a backup uses, for privilege checks and the GRANTs
    /// pgbb prints: schema-qualified, so that neither the check nor a GRANT run by an
    /// administrator can resolve to a look-alike in another schema.
    pub fn needed_functions(&self) -> Vec<&'static str> {
        let mut v = vec![
            "pg_catalog.pg_ls_dir(text,boolean,boolean)",
            "pg_catalog.pg_stat_file(text,boolean)",
            "pg_catalog.pg_read_binary_file(text,bigint,bigint,boolean)",
        ];
        if self.new_backup_api() {
            v.extend(["pg_catalog.pg_backup_start(text,boolean)", "pg_catalog.pg_backup_stop(boolean)"]);
        } else {
            v.extend([
                "pg_catalog.pg_start_backup(text,boolean,boolean)",
                "pg_catalog.pg_stop_backup(boolean,boolean)",
            ]);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_feature() {
        assert_eq!(Caps::new(120010).support(), Support::TooOld);
        assert_eq!(Caps::new(130023).support(), Support::BestEffort);
        assert_eq!(Caps::new(150018).support(), Support::Supported);
        assert_eq!(Caps::new(190000).support(), Support::Untested);
        assert!(!Caps::new(140023).new_backup_api());
        assert!(Caps::new(150000).new_backup_api());
        assert!(Caps::new(140000).idle_session_timeout());
        assert!(!Caps::new(130000).idle_session_timeout());
        assert!(Caps::new(170000).layout_rules().strict_relation_names);
        assert!(Caps::new(170000).wal_summaries() && !Caps::new(160013).wal_summaries());
        assert!(!Caps::new(160000).layout_rules().wal_summaries_dir);
        assert!(Caps::new(140000).needed_functions().contains(&"pg_catalog.pg_stop_backup(boolean,boolean)"));
    }
}
