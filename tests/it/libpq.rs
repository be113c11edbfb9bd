//! libpq, faithfully: security and routing settings (`channel_binding`, `target_session_attrs`,
//! `load_balance_hosts`) are honoured or refused, never ignored; a PG* variable that is not
//! UTF-8 is refused; `--max-rate` reads as pg_basebackup's `-r`.

use std::collections::HashSet;
use std::process::Output;

use crate::harness::*;

/// `pgbb --check DSN` (nothing is written).
fn check(dsn: &str) -> Output {
    pgbb().args(["--check", dsn]).output().unwrap()
}

fn all(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// The server a `--check` connected to: the socket directory in its first line.
fn connected_to(o: &Output) -> String {
    let out = stdout(o);
    let line = out.lines().find(|l| l.contains("connected to")).unwrap_or_else(|| panic!("{}", all(o)));
    line.split('"').nth(1).unwrap_or_default().to_string()
}

#[test]
fn channel_binding_is_honoured_and_bad_values_refused() {
    let c = Cluster::with(ClusterOpts {
        listen: Some("127.0.0.1".into()),
        conf: vec!["password_encryption = md5".into()],
        ..Default::default()
    });
    c.client().batch_execute("CREATE ROLE md5user LOGIN SUPERUSER PASSWORD 'secret'").unwrap();
    let hba = c.data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all md5user 127.0.0.1/32 md5\n{old}")).unwrap();
    c.client().batch_execute("SELECT pg_reload_conf()").unwrap();

    // Over the socket (trust, no TLS): the server never does channel binding.
    let dest = c.path("cb");
    let out = pgbb_run(&["-c", "fast", &format!("{} channel_binding=require", c.dsn()), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(stderr(&out).contains("channel binding required"), "{}", stderr(&out));
    assert!(!dest.exists(), "nothing was written");
    // md5 over TCP without TLS: refused before the password is sent.
    let md5 = format!("host=127.0.0.1 port={} user=md5user dbname=postgres sslmode=disable", c.port);
    let out = pgbb().env("PGPASSWORD", "secret").args(["--check", &format!("{md5} channel_binding=require")]).output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(
        stderr(&out).contains("channel binding required but not supported by server's authentication request"),
        "{}",
        stderr(&out)
    );
    let ok = pgbb().env("PGPASSWORD", "secret").args(["--check", &format!("{md5} channel_binding=prefer")]).output();
    assert_eq!(ok.unwrap().status.code(), Some(0), "prefer connects without channel binding");
    // The environment variable is read too.
    let out = pgbb().env("PGCHANNELBINDING", "require").args(["--check", &c.dsn()]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    // A value libpq does not know.
    let out = check(&format!("{} channel_binding=bogus", c.dsn()));
    assert_eq!(out.status.code(), Some(2), "{}", all(&out));
    assert!(stderr(&out).contains("invalid channel_binding value: \"bogus\""), "{}", stderr(&out));
}

fn two_hosts(a: &Cluster, b: &Cluster, extra: &str) -> String {
    format!(
        "host={},{} port={},{} user=postgres dbname=postgres {extra}",
        a.sock.display(),
        b.sock.display(),
        a.port,
        b.port
    )
}

#[test]
fn target_session_attrs_chooses_the_server_as_libpq() {
    let p = Cluster::new();
    let s = standby_of(&p);
    let (ps, ss) = (p.sock.display().to_string(), s.sock.display().to_string());
    for (first, second, attrs, expect) in [
        (&p, &s, "standby", &ss),
        (&s, &p, "primary", &ps),
        (&s, &p, "read-write", &ps),
        (&p, &s, "read-only", &ss),
        (&p, &s, "prefer-standby", &ss),
        (&s, &p, "any", &ss),
    ] {
        let out = check(&two_hosts(first, second, &format!("target_session_attrs={attrs}")));
        assert_eq!(&connected_to(&out), expect, "{attrs}: {}", all(&out));
    }
    // prefer-standby takes the primary when no host is a standby.
    let only_primary = |attrs: &str| check(&format!("{} target_session_attrs={attrs}", p.dsn()));
    let out = only_primary("prefer-standby");
    assert_eq!(connected_to(&out), ps, "{}", all(&out));
    // standby (and read-only) with no standby: refused in libpq's words.
    let out = only_primary("standby");
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(stderr(&out).contains("server is not in hot standby mode"), "{}", stderr(&out));
    let out = check(&format!("host={ss} port={} user=postgres target_session_attrs=read-write", s.port));
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(stderr(&out).contains("session is read-only"), "{}", stderr(&out));
    // Every host is named when none fits.
    let out = check(&two_hosts(&s, &s, "target_session_attrs=primary"));
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(stderr(&out).contains("any of the 2 hosts"), "{}", stderr(&out));
    let out = check(&format!("{} target_session_attrs=master", p.dsn()));
    assert_eq!(out.status.code(), Some(2), "{}", all(&out));
    assert!(stderr(&out).contains("invalid target_session_attrs value: \"master\""), "{}", stderr(&out));
}

/// The socket directory `pgbb -v` said the master connected to.
fn master_server(out: &Output) -> String {
    let err = stderr(out);
    let line = err.lines().find(|l| l.contains("connected to PostgreSQL")).unwrap_or_else(|| panic!("{err}"));
    line.split('"').nth(1).unwrap_or_default().to_string()
}

#[test]
fn load_balance_hosts_random_spreads_runs_and_a_run_stays_on_one_server() {
    let a = Cluster::new();
    let b = Cluster::new();
    for (c, name) in [(&a, "a"), (&b, "b")] {
        c.client().batch_execute(&format!("CREATE TABLE which AS SELECT '{name}'::text AS server")).unwrap();
        for i in 0..6 {
            std::fs::write(c.data.join(format!("marker{i}")), name).unwrap();
        }
        chown_pg(&c.data);
    }
    let random = two_hosts(&a, &b, "load_balance_hosts=random");
    let seen: HashSet<String> = (0..24).map(|_| connected_to(&check(&random))).collect();
    assert_eq!(seen.len(), 2, "both hosts are chosen over 24 runs: {seen:?}");
    let out = check(&two_hosts(&a, &b, "load_balance_hosts=disable"));
    assert_eq!(connected_to(&out), a.sock.display().to_string());
    let out = check(&two_hosts(&a, &b, "load_balance_hosts=sometimes"));
    assert_eq!(out.status.code(), Some(2), "{}", all(&out));
    assert!(stderr(&out).contains("invalid load_balance_hosts value: \"sometimes\""), "{}", stderr(&out));

    // Whichever server the master chose, every worker copied from that one.
    for run in 0..3 {
        let dest = a.path(&format!("lb{run}"));
        let out = pgbb_run(&["-v", "-j", "3", "-c", "fast", &random, dest.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let name = if master_server(&out) == a.sock.display().to_string() { "a" } else { "b" };
        for i in 0..6 {
            assert_eq!(std::fs::read_to_string(dest.join(format!("marker{i}"))).unwrap(), name, "run {run}");
        }
        verifybackup(&dest, &[]);
    }
}

#[test]
fn a_pg_variable_that_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let c = Cluster::new();
    let out = pgbb()
        .env("PGHOST", &c.sock)
        .env("PGPORT", c.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", std::ffi::OsStr::from_bytes(b"caf\xe9"))
        .args(["--check", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", all(&out));
    assert!(stderr(&out).contains("PGDATABASE is not valid UTF-8"), "{}", stderr(&out));
}

#[test]
fn max_rate_is_in_kilobytes_as_pg_basebackup() {
    let c = Cluster::new();
    // 1000 kB/s: within pg_basebackup's range (32 kB/s to 1 GB/s).
    let out = pgbb().args(["--max-rate", "1000", "--check", &c.dsn()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    for (bad, says) in [("10", "is out of range"), ("5G", "invalid --max-rate unit: \"G\""), ("0", "greater than zero")]
    {
        let out = pgbb().args(["--max-rate", bad, "--check", &c.dsn()]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", all(&out));
        assert!(stderr(&out).contains(says), "{bad}: {}", stderr(&out));
    }
    let help = stdout(&pgbb().arg("--help").output().unwrap());
    assert!(help.contains("kilobytes per second"), "{help}");
}
