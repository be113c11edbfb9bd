//! The identity of one backup run: a random key that names every session of the run in
//! pg_stat_activity and keys the advisory lock its master holds, so that `--clean` can tell
//! the sessions of a live run (lock held) from those left behind by a master that is gone.

use std::hash::{BuildHasher, Hasher};

/// Advisory-lock class of pgbb runs: `pg_try_advisory_lock(RUN_LOCK_CLASS, key)` ("pgbb" in
/// ASCII). pg_locks shows it as `classid`, the key as `objid`, with `objsubid` 2.
pub const RUN_LOCK_CLASS: i32 = 0x7067_6262;

/// A fresh run key: random, positive (so that pg_locks shows it unchanged as `objid`).
pub fn new_key() -> i32 {
    // RandomState is seeded from the operating system's random source.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    let k = (h.finish() & 0x7fff_ffff) as i32;
    k.max(1)
}

/// The application_name of a session with role `role` ("pgbb", "pgbb worker 1"...) in run
/// `key`; without a key (a worker started by hand, `--check`, `pgbb -x`) the role alone.
pub fn session_name(role: &str, key: Option<i32>) -> String {
    match key {
        Some(k) => format!("{role} [run {k}]"),
        None => role.to_string(),
    }
}

/// The pattern (a POSIX regular expression with the key as its only group) that finds the
/// key in an application_name made by [`session_name`]: a positive int4 has at most ten
/// digits, and any other name (however it was made) is no run's.
pub const SESSION_KEY_PATTERN: &str = r"^pgbb.* \[run ([1-9][0-9]{0,9})\]$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names() {
        let k = new_key();
        assert!(k > 0);
        assert_ne!(k, new_key(), "two runs, two keys");
        assert_eq!(session_name("pgbb worker 2", Some(42)), "pgbb worker 2 [run 42]");
        assert_eq!(session_name("pgbb check", None), "pgbb check");
        // Within PostgreSQL's 63 bytes of application_name.
        assert!(session_name("pgbb worker 64", Some(i32::MAX)).len() < 64);
    }
}
