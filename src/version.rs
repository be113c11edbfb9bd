//! What `pgbb --version` prints: the version, the git commit it was built from (see
//! build.rs) and the PostgreSQL majors it backs up (from [`crate::pg::caps`]).

use std::sync::OnceLock;

use crate::pg::caps::{FIRST_SUPPORTED_MAJOR, NEWEST_MAJOR, OLDEST_MAJOR};

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit pgbb was built from (12 hex digits), or "unknown".
pub const COMMIT: &str = env!("PGBB_GIT_COMMIT");

/// "0.1.0 (commit 0123456789ab), PostgreSQL 13 to 18 (13 on a best-effort basis)": what
/// follows "pgbb " in `pgbb --version`.
pub fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let best_effort = match FIRST_SUPPORTED_MAJOR - 1 {
            m if m > OLDEST_MAJOR => format!(" ({OLDEST_MAJOR} to {m} on a best-effort basis)"),
            m if m == OLDEST_MAJOR => format!(" ({m} on a best-effort basis)"),
            _ => String::new(),
        };
        format!("{VERSION} (commit {COMMIT}), PostgreSQL {OLDEST_MAJOR} to {NEWEST_MAJOR}{best_effort}")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_version_commit_and_majors() {
        let t = super::text();
        assert!(t.starts_with(&format!("{} (commit ", env!("CARGO_PKG_VERSION"))), "{t}");
        assert!(t.ends_with("), PostgreSQL 13 to 18 (13 on a best-effort basis)"), "{t}");
        let commit = super::COMMIT;
        assert!(commit == "unknown" || (commit.len() >= 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())), "{t}");
    }
}
