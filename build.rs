//! Build script: the git commit `pgbb --version` names, in `PGBB_GIT_COMMIT`. From
//! `.cargo_vcs_info.json` in a crate packaged by `cargo package` (crates.io, `cargo install`),
//! else from `git rev-parse` when this directory is the top of a git work tree, else
//! "unknown" (a source tarball without either).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Hex digits of the commit shown.
const SHORT: usize = 12;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    let commit = packaged(&dir).or_else(|| from_git(&dir)).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PGBB_GIT_COMMIT={commit}");
}

/// The commit `cargo package` recorded (`"git": {"sha1": "…"}`).
fn packaged(dir: &Path) -> Option<String> {
    let info = dir.join(".cargo_vcs_info.json");
    let text = std::fs::read_to_string(&info).ok()?;
    println!("cargo:rerun-if-changed={}", info.display());
    let after = &text[text.find("\"sha1\"")? + 6..];
    let sha: String = after.trim_start_matches([' ', ':', '"']).chars().take_while(char::is_ascii_hexdigit).collect();
    (sha.len() >= SHORT).then(|| sha[..SHORT].to_string())
}

/// `git rev-parse --short HEAD` of the work tree whose top is `dir` (not of a repository that
/// merely contains it, as `target/package/` inside a clone); rebuilt when HEAD moves.
fn from_git(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if std::fs::canonicalize(&top).ok()? != std::fs::canonicalize(dir).ok()? {
        return None;
    }
    // `refs/heads` as a directory: after `git pack-refs` the next commit makes a new loose ref
    // file, which a watch on the (then missing) file would not see.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string(), "refs/heads".to_string()];
    watch.extend(git(dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watch {
        if let Some(p) = git(dir, &["rev-parse", "--git-path", &name]) {
            let p = dir.join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    git(dir, &["rev-parse", &format!("--short={SHORT}"), "HEAD"])
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}
