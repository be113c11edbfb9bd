//! The generated man page and completions cover the options, and --help / --version work
//! (the commit --version names comes from git, the packaged crate, or is "unknown").

use crate::harness::*;

#[test]
fn man_page_and_completions_are_generated_from_the_options() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["run", "-q", "--example", "gen_docs", "--"])
        .arg(std::env::temp_dir().join(format!("pgbb-docs-{}", std::process::id())))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = std::env::temp_dir().join(format!("pgbb-docs-{}", std::process::id()));
    let man = std::fs::read_to_string(dir.join("pgbb.1")).unwrap();
    for opt in [
        "\\-\\-jobs",
        "\\-\\-write\\-recovery\\-conf",
        "\\-\\-max\\-rate",
        "\\-\\-manifest\\-checksums",
        "\\-\\-slave",
        "\\-\\-log\\-format",
    ] {
        assert!(man.contains(opt), "{opt} not in the man page");
    }
    let bash = std::fs::read_to_string(dir.join("pgbb.bash")).unwrap();
    assert!(bash.contains("--create-slot") && bash.contains("--pg-wal"), "bash completion");
    assert!(std::fs::read_to_string(dir.join("_pgbb")).unwrap().contains("--progress"));
    assert!(std::fs::read_to_string(dir.join("pgbb.fish")).unwrap().contains("max-rate"));
    let _ = std::fs::remove_dir_all(&dir);

    let help = pgbb_run(&["--help"]);
    assert!(help.status.success());
    let text = stdout(&help);
    for heading in
        ["Backup:", "Integrity and safety:", "WAL loop (warm standby):", "Output:", "Examples:", "[default: 2]"]
    {
        assert!(text.contains(heading), "--help lacks {heading}");
    }
    let v = pgbb_run(&["--version"]);
    assert!(v.status.success());
    assert_eq!(stdout(&v).trim(), format!("pgbb {}", pgbb::version::text()));
    assert!(stdout(&v).starts_with(&format!("pgbb {} (commit ", env!("CARGO_PKG_VERSION"))), "{}", stdout(&v));
    assert!(stdout(&v).contains("PostgreSQL 13 to 18"), "{}", stdout(&v));
}

/// build.rs, compiled alone and run on a directory as cargo runs it: the commit it gives
/// `pgbb --version`.
fn commit_for(probe: &std::path::Path, dir: &std::path::Path) -> String {
    let out = run_ok(std::process::Command::new(probe).env("CARGO_MANIFEST_DIR", dir));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find_map(|l| l.strip_prefix("cargo:rustc-env=PGBB_GIT_COMMIT="));
    line.unwrap_or_else(|| panic!("no PGBB_GIT_COMMIT from build.rs: {text}")).to_string()
}

/// The commit in `pgbb --version`: from `.cargo_vcs_info.json` in a packaged crate (crates.io,
/// `cargo install`), else from git when the directory is the top of a work tree (not a crate
/// unpacked inside another repository, as `target/package/` is), else "unknown" (a tarball
/// without either); this build's binary names what build.rs finds here.
#[test]
fn the_commit_comes_from_the_package_or_git_else_unknown() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let probe = tmp.path().join("build-probe");
    run_ok(
        std::process::Command::new("rustc").args(["--edition", "2021", "-o"]).arg(&probe).arg(root.join("build.rs")),
    );
    let git = |dir: &std::path::Path, args: &[&str]| {
        let mut cmd = std::process::Command::new("git");
        cmd.args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", "-C"]).arg(dir);
        String::from_utf8_lossy(&run_ok(cmd.args(args)).stdout).trim().to_string()
    };

    let packaged = tmp.path().join("packaged");
    std::fs::create_dir(&packaged).unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let info =
        format!("{{\n  \"git\": {{\n    \"sha1\": \"{sha}\",\n    \"dirty\": true\n  }},\n  \"path_in_vcs\": \"\"\n}}");
    std::fs::write(packaged.join(".cargo_vcs_info.json"), info).unwrap();
    assert_eq!(commit_for(&probe, &packaged), "0123456789ab");

    let tarball = tmp.path().join("tarball");
    std::fs::create_dir(&tarball).unwrap();
    assert_eq!(commit_for(&probe, &tarball), "unknown");

    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("inner")).unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "x"]);
    assert_eq!(commit_for(&probe, &repo), git(&repo, &["rev-parse", "--short=12", "HEAD"]));
    assert_eq!(commit_for(&probe, &repo.join("inner")), "unknown", "not the enclosing repository's commit");

    let here = commit_for(&probe, root);
    assert!(stdout(&pgbb_run(&["--version"])).contains(&format!("(commit {here})")), "build.rs here says {here}");
}

/// The exit codes and their meanings, as `pgbb --help`, README.md and docs/exit-codes.md
/// list them, are exactly those of `pgbb::error::EXIT_CODES`: a code added to the table and
/// not to a document, or the reverse, or a meaning worded differently, fails here.
#[test]
fn exit_codes_are_documented_as_the_table_says() {
    let want: Vec<(i32, String)> = pgbb::error::EXIT_CODES.iter().map(|c| (c.code, c.meaning.to_string())).collect();
    let help = stdout(&pgbb_run(&["--help"]));
    assert_eq!(exit_sentence(&help, "Exit status:"), want, "--help");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert_eq!(exit_sentence(&readme, "Exit codes:"), want, "README.md");
    let table = std::fs::read_to_string(root.join("docs/exit-codes.md")).unwrap();
    assert_eq!(exit_table(&table), want, "docs/exit-codes.md");
}

/// "PREFIX 0 success, 1 backup failed (a remark), ... ." — the sentence after `prefix`,
/// parenthesized remarks left out, as (code, meaning) pairs.
fn exit_sentence(text: &str, prefix: &str) -> Vec<(i32, String)> {
    let start = text.find(prefix).unwrap_or_else(|| panic!("no {prefix:?} in {text}")) + prefix.len();
    let mut plain = String::new();
    let mut depth = 0;
    for ch in text[start..].chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth > 0 => {}
            '.' => break,
            c => plain.push(c),
        }
    }
    let plain = plain.split_whitespace().collect::<Vec<_>>().join(" ");
    plain.split(", ").map(code_and_meaning).collect()
}

/// The rows of the markdown table whose first cell is a number: (code, meaning).
fn exit_table(text: &str) -> Vec<(i32, String)> {
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.strip_prefix('|')?.split('|').map(str::trim).collect();
            Some((cells.first()?.parse().ok()?, cells.get(1)?.to_string()))
        })
        .collect()
}

fn code_and_meaning(item: &str) -> (i32, String) {
    let (code, meaning) = item.trim().split_once(' ').unwrap_or_else(|| panic!("not CODE MEANING: {item:?}"));
    (code.parse().unwrap_or_else(|_| panic!("not a code: {item:?}")), meaning.trim().to_string())
}
