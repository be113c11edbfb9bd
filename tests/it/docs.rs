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
