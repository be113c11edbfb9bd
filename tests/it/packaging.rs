//! A release artifact's binary, named by `PGBB_PACKAGED_BIN` (the .deb's, installed; the
//! static one): it is this build (`--version`, commit included), and it takes a backup over
//! TLS (verify-full) under pgbench writes that restores. With `PGBB_PACKAGED_ISOLATE=1` it
//! runs in an empty root holding only itself and the CA certificate: no libc, no libssl, no
//! /etc. Run by scripts/check-release.sh (CI), not by the plain test run.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::*;

/// `bin ARGS` in an empty root `root` (private mount namespace with /proc, chroot), with an
/// empty environment.
fn in_empty_root(root: &Path, bin: &Path, args: &[OsString]) -> Output {
    std::fs::copy(bin, root.join("pgbb")).unwrap();
    std::fs::create_dir(root.join("proc")).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--fork", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount -t proc proc "$0/proc" && exec chroot "$0" /pgbb "$@""#)
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/");
    default_signals(&mut cmd);
    cmd.stdin(Stdio::null()).output().unwrap()
}

#[test]
#[ignore = "run by scripts/check-release.sh, with PGBB_PACKAGED_BIN naming a release artifact's binary"]
fn packaged_binary_takes_a_tls_backup_that_restores() {
    let bin = PathBuf::from(std::env::var_os("PGBB_PACKAGED_BIN").expect("PGBB_PACKAGED_BIN: the binary to test"));
    let isolate = std::env::var("PGBB_PACKAGED_ISOLATE").is_ok_and(|v| v == "1");
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(stdout(&version), stdout(&pgbb_run(&["--version"])), "{} is not this build", bin.display());
    println!("{}: {}", bin.display(), stdout(&version).trim());

    let certs = tempfile::tempdir().unwrap();
    crate::tls::make_certs(certs.path());
    let c = crate::tls::tls_cluster(certs.path(), "trust");
    c.pgbench_init(2);
    // DEST and the CA in the root the binary sees: an empty one, or the machine's.
    let root = tempfile::Builder::new().prefix("pgbb-root-").tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(certs.path().join("ca.crt"), root.path().join("ca.crt")).unwrap();
    let seen = |p: &str| if isolate { format!("/{p}") } else { root.path().join(p).display().to_string() };
    // hostaddr: no name lookup (an empty root has no /etc/hosts); verify-full checks "localhost".
    let dsn = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
        c.port,
        seen("ca.crt")
    );
    let args: Vec<OsString> = ["-j", "2", "-c", "fast", &dsn, &seen("backup")].iter().map(OsString::from).collect();

    let load = c.pgbench_load(2, 600);
    let history = |c: &Cluster| query_i64(&mut c.client(), "SELECT count(*) FROM pgbench_history");
    wait_until("pgbench to write", Duration::from_secs(60), || history(&c) > 0);
    let out = if isolate {
        in_empty_root(root.path(), &bin, &args)
    } else {
        let home = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args(&args).env("HOME", home.path()).env_remove("PGPASSWORD").env_remove("PGSSLMODE");
        default_signals(&mut cmd);
        cmd.output().unwrap()
    };
    load.finish();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).starts_with("pgbb: backup complete"), "{}", stdout(&out));
    c.assert_no_pgbb_left();
    let expect = Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] };
    verify_restore(&root.path().join("backup"), &expect);
}
