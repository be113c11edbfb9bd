//! The generated man page and completions cover the options, and --help / --version work.

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
    for opt in
        ["\\-\\-jobs", "\\-\\-write\\-recovery\\-conf", "\\-\\-max\\-rate", "\\-\\-manifest\\-checksums", "\\-\\-slave"]
    {
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
    assert_eq!(stdout(&v).trim(), format!("pgbb {}", env!("CARGO_PKG_VERSION")));
}
