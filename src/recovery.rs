//! `-R/--write-recovery-conf`: the settings that make a copy start as a standby of its
//! source, in the form pg_basebackup writes them (`standby.signal` plus `primary_conninfo`
//! and `primary_slot_name` in `postgresql.auto.conf`).

use crate::pg::conninfo::{quote_value, Params};

/// Keywords of the DSN that make sense for a replication connection (no dbname, no
/// options pgbb sets for itself).
const KEPT: &[&str] =
    &["user", "host", "hostaddr", "port", "sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout"];

/// `primary_conninfo` from the connection pgbb used; the password is included when one was
/// used, as pg_basebackup does (keep the copy's postgresql.auto.conf private).
pub fn primary_conninfo(params: &Params, password: Option<&str>) -> String {
    let mut parts: Vec<String> =
        KEPT.iter().filter_map(|k| params.get(*k).map(|v| format!("{k}={}", quote_value(v)))).collect();
    if let Some(p) = password {
        parts.insert(1, format!("password={}", quote_value(p)));
    }
    parts.join(" ")
}

/// A string for postgresql.conf: single-quoted, `'` and `\` escaped.
fn guc_string(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// The lines appended to postgresql.auto.conf.
pub fn auto_conf_lines(conninfo: &str, slot: Option<&str>) -> String {
    let mut s = format!("# Recovery settings written by pgbb -R\nprimary_conninfo = {}\n", guc_string(conninfo));
    if let Some(slot) = slot {
        s.push_str(&format!("primary_slot_name = {}\n", guc_string(slot)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_and_escaping() {
        let mut p = Params::new();
        for (k, v) in
            [("host", "/tmp/a b"), ("port", "5432"), ("user", "o'neil"), ("dbname", "x"), ("sslmode", "prefer")]
        {
            p.insert(k.into(), v.into());
        }
        let c = primary_conninfo(&p, Some("pa ss"));
        assert_eq!(c, "user='o\\'neil' password='pa ss' host='/tmp/a b' port=5432 sslmode=prefer");
        assert_eq!(
            auto_conf_lines(&c, Some("s1")),
            "# Recovery settings written by pgbb -R\nprimary_conninfo = 'user=''o\\\\''neil'' password=''pa ss'' host=''/tmp/a b'' port=5432 sslmode=prefer'\nprimary_slot_name = 's1'\n"
        );
        // What libpq parses back is what went in.
        let back = crate::pg::conninfo::parse(&c).unwrap();
        assert_eq!(back["user"], "o'neil");
        assert_eq!(back["password"], "pa ss");
        assert_eq!(back["host"], "/tmp/a b");
    }
}
