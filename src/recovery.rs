//! `-R/--write-recovery-conf`: the settings that make a copy start as a standby of its
//! source, in the form pg_basebackup writes them (`standby.signal` plus `primary_conninfo`
//! and `primary_slot_name` in `postgresql.auto.conf`).

use crate::dest::{Dest, DestError, SafePath};
use crate::digest::{Algorithm, Digest};
use crate::error::Error;
use crate::manifest::FileEntry;
use crate::pg::conninfo::{quote_value, Params};

/// The keywords `primary_conninfo` carries when they are set, in libpq's order (as
/// pg_basebackup writes them from `PQconninfo`): every connection setting but `dbname`,
/// `fallback_application_name` (the walreceiver sets its own) and the password (see
/// [`primary_conninfo`]). Security and routing settings (`channel_binding`, the TLS files,
/// `target_session_attrs`, `load_balance_hosts`) go with it: the standby must connect as
/// carefully as the backup did.
const KEPT: &[&str] = &[
    "user",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "host",
    "hostaddr",
    "port",
    "options",
    "application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslnegotiation",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "target_session_attrs",
    "load_balance_hosts",
];

/// Keywords `primary_conninfo` leaves out.
#[cfg(test)]
const LEFT_OUT: &[&str] = &["dbname", "fallback_application_name", "password"];

/// `primary_conninfo` from the settings pgbb connected with. A password given (DSN or
/// PGPASSWORD) is included, as pg_basebackup does (keep the copy's postgresql.auto.conf
/// private); one taken from a password file is not: `passfile` names the file instead.
pub fn primary_conninfo(params: &Params, password: Option<&str>, passfile: Option<&str>) -> String {
    let mut p = params.clone();
    if let Some(f) = passfile.filter(|_| password.is_none()) {
        p.insert("passfile".into(), f.into());
    }
    let mut parts: Vec<String> =
        KEPT.iter().filter_map(|k| p.get(*k).map(|v| format!("{k}={}", quote_value(v)))).collect();
    if let Some(pw) = password {
        parts.insert(1, format!("password={}", quote_value(pw)));
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

/// The settings `-R` writes: lines that set them in the copied postgresql.auto.conf (a
/// standby's own, naming its primary and its slot there) are replaced, not left for the copy.
const REPLACED: &[&str] = &["primary_conninfo", "primary_slot_name"];

/// `text` without the lines that set one of [`REPLACED`] (GUC names are case-insensitive;
/// `name = value` or `name value`); comments and every other line kept as they are.
fn without_replaced(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let start = line.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(line.len());
        let name_len = line[start..].iter().position(|&b| b == b'=' || b.is_ascii_whitespace()).unwrap_or(0);
        let name = &line[start..start + name_len];
        if REPLACED.iter().any(|r| name.eq_ignore_ascii_case(r.as_bytes())) {
            log::info!("-R: replaced the copied {} setting", String::from_utf8_lossy(name));
            continue;
        }
        out.extend_from_slice(line);
    }
    out
}

/// `-R`: appends primary_conninfo (and primary_slot_name) to postgresql.auto.conf, instead of
/// the ones it held (a standby's: the copy streams from the server copied, as pg_basebackup's
/// does), and writes standby.signal, keeping the manifest entries true. Only a
/// postgresql.auto.conf that does not exist starts empty: one that cannot be read fails the
/// backup (DEST error), since rewriting it would lose the settings in it.
pub fn write_recovery_conf(
    dest: &Dest,
    entries: &mut Vec<FileEntry>,
    conninfo: &str,
    slot: Option<&str>,
    algorithm: Algorithm,
    sync: bool,
) -> Result<(), Error> {
    let auto = SafePath::parse("postgresql.auto.conf")?;
    let on_disk = dest.root().join("postgresql.auto.conf");
    let mut text = match std::fs::read(&on_disk) {
        Ok(t) => without_replaced(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(DestError::Io { path: on_disk, source }.into()),
    };
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(auto_conf_lines(conninfo, slot).as_bytes());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_secs() as i64);
    for (path, data) in [(auto, text), (SafePath::parse("standby.signal")?, Vec::new())] {
        dest.write_file(&path, &data, sync)?;
        let mut d = Digest::new(algorithm);
        d.update(&data);
        let entry =
            FileEntry { path: path.as_bytes(), size: data.len() as u64, mtime: now, algorithm, checksum: d.finish() };
        match entries.iter_mut().find(|e| e.path == entry.path) {
            Some(e) => *e = entry,
            None => entries.push(entry),
        }
    }
    Ok(())
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
        let c = primary_conninfo(&p, Some("pa ss"), None);
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

    #[test]
    fn security_and_routing_settings_are_kept_as_pg_basebackup_keeps_them() {
        let dsn = "host=a,b port=5432,5433 user=rep dbname=x channel_binding=require target_session_attrs=read-write \
                   load_balance_hosts=random sslmode=verify-full sslrootcert=/r.crt sslcrl=/c.crl \
                   application_name=standby1 fallback_application_name=f connect_timeout=5 keepalives_idle=30";
        let p = crate::pg::conninfo::parse(dsn).unwrap();
        assert_eq!(
            primary_conninfo(&p, None, Some("/home/rep/.pgpass")),
            "user=rep passfile=/home/rep/.pgpass channel_binding=require connect_timeout=5 host=a,b port=5432,5433 \
             application_name=standby1 keepalives_idle=30 sslmode=verify-full sslrootcert=/r.crt sslcrl=/c.crl \
             target_session_attrs=read-write load_balance_hosts=random"
        );
        assert!(!primary_conninfo(&p, Some("pw"), Some("/f")).contains("passfile"), "a given password wins");
        // Every keyword pgbb accepts is written or deliberately left out.
        for k in crate::pg::settings::KEYWORDS {
            assert!(KEPT.contains(k) != LEFT_OUT.contains(k), "{k}");
        }
    }

    #[test]
    fn a_standbys_own_primary_settings_are_replaced() {
        let text = b"# Do not edit this file manually!\nprimary_conninfo = 'host=p'\nwork_mem = '64MB'\n  \
                     PRIMARY_SLOT_NAME='s'\nprimary_slot_name_x = 1\n# primary_conninfo = 'old'\nprimary_conninfo 'q'";
        let kept = String::from_utf8(without_replaced(text)).unwrap();
        assert_eq!(
            kept,
            "# Do not edit this file manually!\nwork_mem = '64MB'\nprimary_slot_name_x = 1\n# primary_conninfo = 'old'\n"
        );
    }

    fn dest_with_entries() -> (tempfile::TempDir, Dest) {
        let t = tempfile::tempdir().unwrap();
        let dest = Dest::open(t.path(), false).unwrap();
        (t, dest)
    }

    #[test]
    fn the_users_auto_conf_is_kept_and_only_a_missing_one_starts_empty() {
        let (t, dest) = dest_with_entries();
        let auto = t.path().join("postgresql.auto.conf");
        std::fs::write(&auto, "work_mem = '64MB'").unwrap();
        let mut entries = Vec::new();
        write_recovery_conf(&dest, &mut entries, "host=a", None, Algorithm::Crc32c, false).unwrap();
        let text = std::fs::read_to_string(&auto).unwrap();
        assert!(text.starts_with("work_mem = '64MB'\n# Recovery settings written by pgbb -R\n"), "{text}");
        assert_eq!(entries.len(), 2, "postgresql.auto.conf and standby.signal are in the manifest");

        std::fs::remove_file(&auto).unwrap();
        write_recovery_conf(&dest, &mut entries, "host=a", None, Algorithm::Crc32c, false).unwrap();
        assert!(std::fs::read_to_string(&auto).unwrap().starts_with("# Recovery settings"), "absent: starts empty");

        // A file that cannot be read (here a symlink loop: ELOOP) is not taken for empty.
        std::fs::remove_file(&auto).unwrap();
        std::os::unix::fs::symlink("postgresql.auto.conf", &auto).unwrap();
        let e = write_recovery_conf(&dest, &mut entries, "host=a", None, Algorithm::Crc32c, false).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::DEST, "{e}");
        assert!(e.to_string().contains("postgresql.auto.conf"), "{e}");
        assert!(std::fs::symlink_metadata(&auto).unwrap().file_type().is_symlink(), "left as it was");
    }
}
