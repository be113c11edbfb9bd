//! TLS the libpq way: sslmode disable / prefer / require / verify-ca / verify-full against a
//! server with a certificate from a throwaway CA; client certificates and keys, the files
//! libpq reads from ~/.postgresql (root.crt, root.crl, postgresql.crt, postgresql.key) and
//! its rules for them, and its messages.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
pub fn make_certs(dir: &Path) {
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
    // A client certificate for user "postgres" from the first CA.
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=postgres",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "client.crt",
        ],
    );
}

/// A certificate revocation list from the first CA that revokes the server's certificate.
fn revoke_server(dir: &Path) -> PathBuf {
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n",
    )
    .unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    let ca = ["ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt"];
    openssl(dir, &[&ca[..], &["-revoke", "server.crt"]].concat());
    openssl(dir, &[&ca[..], &["-gencrl", "-out", "revoked.crl"]].concat());
    dir.join("revoked.crl")
}

/// A cluster with TLS on (the certificates of `make_certs`) whose TCP connections must use
/// TLS and authenticate with `method` (`trust`, or `cert` for a client certificate).
pub fn tls_cluster(certs: &Path, method: &str) -> Cluster {
    tls_cluster_of(certs, method, None)
}

/// [`tls_cluster`] with the server binaries of `bin` (another major version).
fn tls_cluster_of(certs: &Path, method: &str, bin: Option<PathBuf>) -> Cluster {
    let mut c = Cluster::with(ClusterOpts { listen: Some("127.0.0.1".into()), bin, ..Default::default() });
    for f in ["server.crt", "server.key", "ca.crt"] {
        std::fs::copy(certs.join(f), c.data.join(f)).unwrap();
        std::fs::set_permissions(c.data.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    chown_pg(&c.data);
    let hba = c.data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    let local: String = old.lines().filter(|l| l.starts_with("local")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&hba, format!("{local}hostssl all all 127.0.0.1/32 {method}\n")).unwrap();
    let conf = c.data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n");
    std::fs::write(&conf, text).unwrap();
    c.stop();
    c.start();
    c
}

/// A home directory for pgbb with `~/.postgresql/NAME` copied from `certs` for each
/// (NAME, file, mode); nothing of the real home leaks into a test.
fn home_with(certs: &Path, files: &[(&str, &str, u32)]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".postgresql");
    std::fs::create_dir(&dir).unwrap();
    for (name, from, mode) in files {
        std::fs::copy(certs.join(from), dir.join(name)).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    home
}

/// `pgbb --check DSN` with this home (and no PGSSL* from the test's environment).
fn check_with_home(home: &Path, dsn: &str, env: &[(&str, &Path)]) -> Output {
    let mut cmd = pgbb();
    for v in ["PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL", "PGSSLCRLDIR", "SSL_CERT_FILE"] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("HOME", home).args(["--check", dsn]).output().unwrap()
}

fn all(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// libpq's refusal of a key file others may read.
fn group_or_world(key: &Path) -> String {
    format!(
        "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
        key.display()
    )
}

#[test]
fn tls_modes() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = tls_cluster(certs.path(), "trust");
    c.pgbench_init(1);
    let ca = certs.path().join("ca.crt");
    let other = certs.path().join("other.crt");
    let dsn = |host: &str, extra: &str| format!("host={host} port={} user=postgres dbname=postgres {extra}", c.port);
    let empty = home_with(certs.path(), &[]);
    let check = |dsn: &str| check_with_home(empty.path(), dsn, &[]);

    // verify-full with the right CA and host name: a whole backup, every child over TLS
    // (the server accepts nothing else on TCP).
    let dest = c.path("tls-full");
    let out = pgbb()
        .env("HOME", empty.path())
        .args([
            "-c",
            "fast",
            &dsn("localhost", &format!("sslmode=verify-full sslrootcert={}", ca.display())),
            dest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    verify_restore(&dest, &Expect { pgbench: true, databases: vec![], unlogged: vec![], absent: vec![] });

    // verify-full by IP: the certificate does not name 127.0.0.1. libpq's message names the
    // certificate's first name, how many others it has, and the host name.
    let out = check(&dsn("127.0.0.1", &format!("sslmode=verify-full sslrootcert={}", ca.display())));
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(
        stderr(&out)
            .contains("server certificate for \"localhost\" (and 1 other name) does not match host name \"127.0.0.1\""),
        "{}",
        stderr(&out)
    );
    // A host name the certificate does not hold (reached through hostaddr).
    let out =
        check(&dsn("db.example hostaddr=127.0.0.1", &format!("sslmode=verify-full sslrootcert={}", ca.display())));
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(
        stderr(&out).contains("server certificate for \"localhost\" does not match host name \"db.example\""),
        "{}",
        stderr(&out)
    );

    // verify-ca checks the chain only: by IP it passes, with another CA it fails.
    let out = check(&dsn("127.0.0.1", &format!("sslmode=verify-ca sslrootcert={}", ca.display())));
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    let out = check(&dsn("localhost", &format!("sslmode=verify-ca sslrootcert={}", other.display())));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("certificate verify failed"), "{}", stderr(&out));

    // require and prefer encrypt without checking; disable is refused by pg_hba.
    for mode in ["require", "prefer"] {
        let out = check(&dsn("127.0.0.1", &format!("sslmode={mode}")));
        assert_eq!(out.status.code(), Some(0), "{mode}: {}", stderr(&out));
    }
    let out = check(&dsn("127.0.0.1", "sslmode=disable"));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no pg_hba.conf entry"), "{}", stderr(&out));

    // The environment works like libpq's: PGSSLMODE, PGSSLROOTCERT.
    let out = check_with_home(
        empty.path(),
        &dsn("localhost", ""),
        &[("PGSSLMODE", Path::new("verify-full")), ("PGSSLROOTCERT", &other)],
    );
    assert_eq!(out.status.code(), Some(3), "PGSSLROOTCERT ignored? {}", stderr(&out));
}

/// Only the root certificates libpq is given are trusted: not the system's store (here
/// pointed at the test CA through SSL_CERT_FILE) — unless sslrootcert=system asks for it,
/// which then requires verify-full.
#[test]
fn tls_trusts_only_the_root_certificates_it_is_given() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = tls_cluster(certs.path(), "trust");
    let (ca, other) = (certs.path().join("ca.crt"), certs.path().join("other.crt"));
    let dsn = |extra: &str| format!("host=localhost port={} user=postgres dbname=postgres {extra}", c.port);
    let empty = home_with(certs.path(), &[]);
    let system = [("SSL_CERT_FILE", ca.as_path())];

    let out =
        check_with_home(empty.path(), &dsn(&format!("sslmode=verify-ca sslrootcert={}", other.display())), &system);
    assert_eq!(out.status.code(), Some(3), "the system store must not be trusted: {}", all(&out));
    assert!(stderr(&out).contains("certificate verify failed"), "{}", stderr(&out));

    // sslrootcert=system: the system's roots, and verify-full by default.
    let out = check_with_home(empty.path(), &dsn("sslrootcert=system"), &system);
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    let out = check_with_home(
        empty.path(),
        &format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslrootcert=system", c.port),
        &system,
    );
    assert_eq!(out.status.code(), Some(3), "verify-full by default: {}", all(&out));
    let out = check_with_home(empty.path(), &dsn("sslrootcert=system sslmode=require"), &system);
    assert_eq!(out.status.code(), Some(2), "{}", all(&out));
    assert!(
        stderr(&out).contains("weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")"),
        "{}",
        stderr(&out)
    );

    // ~/.postgresql/root.crt, when it exists, is checked by require too (libpq: "if a root
    // CA file exists, require behaves as verify-ca").
    let home = home_with(certs.path(), &[("root.crt", "other.crt", 0o644)]);
    let out = check_with_home(home.path(), &dsn("sslmode=require"), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(stderr(&out).contains("certificate verify failed"), "{}", stderr(&out));
    let home = home_with(certs.path(), &[("root.crt", "ca.crt", 0o644)]);
    let out = check_with_home(home.path(), &dsn("sslmode=require"), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));

    // A verify mode without any root certificate: libpq's message.
    let out = check_with_home(empty.path(), &dsn("sslmode=verify-ca"), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    let root = empty.path().join(".postgresql/root.crt");
    assert!(
        stderr(&out).contains(&format!("root certificate file \"{}\" does not exist", root.display())),
        "{}",
        stderr(&out)
    );
}

/// ~/.postgresql/root.crl (libpq's default) or sslcrl: a revoked server certificate fails.
#[test]
fn tls_revoked_server_certificate_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let crl = revoke_server(certs.path());
    let c = tls_cluster(certs.path(), "trust");
    let dsn = |extra: &str| format!("host=localhost port={} user=postgres dbname=postgres {extra}", c.port);
    let home = home_with(certs.path(), &[("root.crt", "ca.crt", 0o644)]);
    let out = check_with_home(home.path(), &dsn("sslmode=verify-full"), &[]);
    assert_eq!(out.status.code(), Some(0), "before the CRL: {}", all(&out));
    let out = check_with_home(home.path(), &dsn(&format!("sslmode=verify-full sslcrl={}", crl.display())), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(stderr(&out).contains("certificate revoked"), "{}", stderr(&out));
    std::fs::copy(&crl, home.path().join(".postgresql/root.crl")).unwrap();
    let out = check_with_home(home.path(), &dsn("sslmode=verify-full"), &[]);
    assert_eq!(out.status.code(), Some(3), "the default root.crl: {}", all(&out));
    assert!(stderr(&out).contains("certificate revoked"), "{}", stderr(&out));
}

/// A server that authenticates by client certificate (`cert` in pg_hba.conf): the
/// connection works only with the certificate, taken from the DSN or from libpq's default
/// place, and its key must be private.
#[test]
fn tls_client_certificate_and_key_as_libpq() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = tls_cluster(certs.path(), "cert");
    let dsn = |extra: &str| {
        format!("host=localhost port={} user=postgres dbname=postgres sslmode=verify-full {extra}", c.port)
    };

    // Without a client certificate the server refuses.
    let home = home_with(certs.path(), &[("root.crt", "ca.crt", 0o644)]);
    let out = check_with_home(home.path(), &dsn(""), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));

    // ~/.postgresql/postgresql.crt and .key are used when the DSN names none: a whole backup,
    // every child authenticated by the certificate.
    let home = home_with(
        certs.path(),
        &[
            ("root.crt", "ca.crt", 0o644),
            ("postgresql.crt", "client.crt", 0o644),
            ("postgresql.key", "client.key", 0o600),
        ],
    );
    let out = check_with_home(home.path(), &dsn(""), &[]);
    assert_eq!(out.status.code(), Some(0), "the default certificate was not used: {}", all(&out));
    let dest = c.path("by-cert");
    let out = pgbb().env("HOME", home.path()).args(["-c", "fast", &dsn(""), dest.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    verifybackup(&dest, &[]);

    // A key others can read is refused, with libpq's message (0640 is allowed to a key owned
    // by root only).
    let key = home.path().join(".postgresql/postgresql.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check_with_home(home.path(), &dsn(""), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(stderr(&out).contains(&group_or_world(&key)), "{}", stderr(&out));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = check_with_home(home.path(), &dsn(""), &[]);
    if is_root() {
        assert_eq!(out.status.code(), Some(0), "0640 owned by root: {}", all(&out));
    } else {
        assert_eq!(out.status.code(), Some(3), "0640 not owned by root: {}", all(&out));
    }
    // Named in the DSN: the same rule.
    let (crt, loose) = (certs.path().join("client.crt"), certs.path().join("loose.key"));
    std::fs::copy(certs.path().join("client.key"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o604)).unwrap();
    let named = dsn(&format!("sslcert={} sslkey={}", crt.display(), loose.display()));
    let out = check_with_home(home.path(), &named, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(stderr(&out).contains(&group_or_world(&loose)), "{}", stderr(&out));
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check_with_home(home.path(), &named, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));

    // A certificate without its key, a key that is not a regular file.
    std::fs::remove_file(&key).unwrap();
    let out = check_with_home(home.path(), &dsn(""), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(
        stderr(&out).contains(&format!("certificate present, but not private key file \"{}\"", key.display())),
        "{}",
        stderr(&out)
    );
    std::fs::create_dir(&key).unwrap();
    let out = check_with_home(home.path(), &dsn(""), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(
        stderr(&out).contains(&format!("private key file \"{}\" is not a regular file", key.display())),
        "{}",
        stderr(&out)
    );
}

/// channel_binding=require over TLS: SCRAM with channel binding (SCRAM-SHA-256-PLUS) makes
/// a whole backup; md5 over the same TLS is refused before the password is sent.
#[test]
fn tls_channel_binding_with_scram() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = tls_cluster(certs.path(), "scram-sha-256");
    c.client()
        .batch_execute(
            "ALTER ROLE postgres PASSWORD 'scram-pw'; SET password_encryption = 'md5'; \
             CREATE ROLE md5user LOGIN SUPERUSER PASSWORD 'md5-pw'",
        )
        .unwrap();
    let hba = c.data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("hostssl all md5user 127.0.0.1/32 md5\n{old}")).unwrap();
    c.client().batch_execute("SELECT pg_reload_conf()").unwrap();
    let empty = home_with(certs.path(), &[]);
    let dsn = |user: &str| {
        format!("host=localhost hostaddr=127.0.0.1 port={} user={user} dbname=postgres sslmode=require channel_binding=require", c.port)
    };
    let dest = c.path("bound");
    let out = pgbb()
        .env("HOME", empty.path())
        .env("PGPASSWORD", "scram-pw")
        .args(["-c", "fast", &dsn("postgres"), dest.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    verifybackup(&dest, &[]);
    let out = check_with_home(empty.path(), &dsn("md5user"), &[("PGPASSWORD", Path::new("md5-pw"))]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    assert!(
        stderr(&out).contains("channel binding required but not supported by server's authentication request"),
        "{}",
        stderr(&out)
    );
}

/// A TCP proxy to a local port that passes only the connections whose first 8 bytes `pass`
/// accepts and drops any other. Stopped when dropped.
struct FilterProxy {
    port: u16,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// An SSLRequest (TLS negotiated the PostgreSQL way) passes; a plain startup or cancel request
/// does not: a path on which only TLS gets through.
fn ssl_request(head: &[u8]) -> bool {
    head[4..8] == 80877103u32.to_be_bytes()
}

/// A TLS handshake record from the first byte (sslnegotiation=direct) passes; anything else,
/// an SSLRequest included, does not.
fn tls_record(head: &[u8]) -> bool {
    head[0] == 0x16 && head[1] == 0x03
}

impl FilterProxy {
    fn to(upstream: u16, pass: fn(&[u8]) -> bool) -> FilterProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = FilterProxy { port, dropped: Default::default(), stop: Default::default() };
        let (dropped, stop) = (proxy.dropped.clone(), proxy.stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(SeqCst) {
                    return;
                }
                let (Ok(mut client), dropped) = (conn, dropped.clone()) else { continue };
                std::thread::spawn(move || {
                    let mut head = [0u8; 8];
                    if client.read_exact(&mut head).is_err() {
                        return;
                    }
                    if !pass(&head) {
                        dropped.fetch_add(1, SeqCst);
                        return;
                    }
                    let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else { return };
                    let _ = server.write_all(&head);
                    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut s2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Both);
                    });
                    let _ = std::io::copy(&mut client, &mut server);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        proxy
    }
}

impl Drop for FilterProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The cancel request goes over TLS like the session it cancels: through a path that lets
/// only TLS through, a SIGINT during a long statement (pg_backup_start waiting for a spread
/// checkpoint of an hour) cancels it at once.
#[test]
fn tls_cancel_request_travels_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = tls_cluster(certs.path(), "trust");
    spread_checkpoint_of_an_hour(&c);
    let mut admin = c.client();
    let proxy = FilterProxy::to(c.port, ssl_request);
    let empty = home_with(certs.path(), &[]);
    let dsn =
        format!("host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require", proxy.port);
    let dest = c.path("cancelled");
    let mut child = pgbb()
        .env("HOME", empty.path())
        .args(["-c", "spread", &dsn, dest.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbb [run %' AND state = 'active' \
                   AND query LIKE '%backup_start%'";
    while query_i64(&mut admin, waiting) == 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "pg_backup_start never ran");
        assert!(child.try_wait().unwrap().is_none(), "pgbb ended before pg_backup_start");
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let (status, took) = wait_exit(&mut child, std::time::Duration::from_secs(30));
    assert_eq!(status.code(), Some(130));
    assert!(took < std::time::Duration::from_secs(15), "the abort took {took:?}");
    assert!(c.log().contains("canceling statement due to user request"), "{}", c.log());
    assert_eq!(proxy.dropped.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing tried plain text");
    assert!(!dest.exists());
    c.assert_no_pgbb_left();
}

/// sslnegotiation=direct (PostgreSQL 17+): TLS from the first byte, with ALPN `postgresql`
/// as the server requires; as libpq, only with an sslmode that insists on TLS.
#[test]
fn tls_direct_negotiation_with_postgresql_17() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = tls_cluster_of(certs.path(), "trust", Some(other_major(17)));
    let empty = home_with(certs.path(), &[]);
    // Through a path that lets only a TLS handshake from the first byte through.
    let proxy = FilterProxy::to(c.port, tls_record);
    let dsn = |extra: &str| {
        format!("host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres {extra}", proxy.port)
    };
    let out = check_with_home(empty.path(), &dsn("sslmode=require sslnegotiation=direct"), &[]);
    assert!(stdout(&out).contains("connected to host \"localhost\""), "{}", all(&out));
    assert_eq!(proxy.dropped.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The PostgreSQL way (an SSLRequest first) does not get through that path.
    let out = check_with_home(empty.path(), &dsn("sslmode=require"), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", all(&out));
    let out = check_with_home(empty.path(), &dsn("sslnegotiation=direct"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", all(&out));
    assert!(
        stderr(&out).contains("weak sslmode \"prefer\" may not be used with sslnegotiation=direct"),
        "{}",
        all(&out)
    );
}
