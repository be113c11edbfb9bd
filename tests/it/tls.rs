//! TLS the libpq way: sslmode disable / prefer / require / verify-ca / verify-full against a
//! server with a certificate from a throwaway CA.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

/// A self-signed CA certificate `NAME.crt` with key `NAME.key`.
fn make_ca(dir: &Path, cn: &str, name: &str) {
    let (subj, key, crt) = (format!("/CN={cn}"), format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &crt],
    );
}

/// A CA, and a server certificate for "localhost" only (no IP address in it).
fn make_certs(dir: &Path) {
    make_ca(dir, "pgbb test CA", "ca");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext",
            "-out",
            "server.crt",
        ],
    );
    // A second, unrelated CA.
    make_ca(dir, "other CA", "other");
}

#[test]
fn tls_modes() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let mut c = Cluster::with(ClusterOpts { listen: Some("127.0.0.1".into()), ..Default::default() });
    for f in ["server.crt", "server.key"] {
        std::fs::copy(certs.path().join(f), c.data.join(f)).unwrap();
        std::fs::set_permissions(c.data.join(f), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    chown_pg(&c.data);
    // TCP connections must use TLS.
    let hba = c.data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    let local: String = old.lines().filter(|l| l.starts_with("local")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&hba, format!("{local}hostssl all all 127.0.0.1/32 trust\n")).unwrap();
    let conf = c.data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(&conf, text).unwrap();
    c.stop();
    c.start();
    c.pgbench_init(1);
    let ca = certs.path().join("ca.crt");
    let other = certs.path().join("other.crt");
    let dsn = |host: &str, extra: &str| format!("host={host} port={} user=postgres dbname=postgres {extra}", c.port);

    // verify-full with the right CA and host name: a whole backup, every child over TLS
    // (the server accepts nothing else on TCP).
    let dest = c.path("tls-full");
    let out = pgbb_run(&[
        "-c",
        "fast",
        &dsn("localhost", &format!("sslmode=verify-full sslrootcert={}", ca.display())),
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    verify_restore(&dest, &Expect { pgbench: true, databases: vec![], unlogged: vec![], absent: vec![] });

    // verify-full by IP: the certificate does not name 127.0.0.1.
    let out = pgbb_run(&["--check", &dsn("127.0.0.1", &format!("sslmode=verify-full sslrootcert={}", ca.display()))]);
    assert_eq!(out.status.code(), Some(3), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("certificate verify failed") || stderr(&out).contains("hostname mismatch"),
        "{}",
        stderr(&out)
    );

    // verify-ca checks the chain only: by IP it passes, with another CA it fails.
    let out = pgbb_run(&["--check", &dsn("127.0.0.1", &format!("sslmode=verify-ca sslrootcert={}", ca.display()))]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let out = pgbb_run(&["--check", &dsn("localhost", &format!("sslmode=verify-ca sslrootcert={}", other.display()))]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("certificate verify failed"), "{}", stderr(&out));

    // require and prefer encrypt without checking; disable is refused by pg_hba.
    for mode in ["require", "prefer"] {
        let out = pgbb_run(&["--check", &dsn("127.0.0.1", &format!("sslmode={mode}"))]);
        assert_eq!(out.status.code(), Some(0), "{mode}: {}", stderr(&out));
    }
    let out = pgbb_run(&["--check", &dsn("127.0.0.1", "sslmode=disable")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no pg_hba.conf entry"), "{}", stderr(&out));

    // The environment works like libpq's: PGSSLMODE, PGSSLROOTCERT.
    let out = pgbb()
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &other)
        .args(["--check", &dsn("localhost", "")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "PGSSLROOTCERT ignored? {}", stderr(&out));
}
