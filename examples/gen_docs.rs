//! Writes pgbb's man page and shell completions, generated from its clap definitions:
//! `cargo run --example gen_docs -- OUT_DIR` → OUT_DIR/pgbb.1, pgbb.bash, _pgbb (zsh),
//! pgbb.fish.

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/docs".into()));
    std::fs::create_dir_all(&out)?;
    let cmd = pgbb::cli::Args::command();
    let mut man = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut man)?;
    std::fs::write(out.join("pgbb.1"), man)?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "pgbb.bash"),
        (clap_complete::Shell::Zsh, "_pgbb"),
        (clap_complete::Shell::Fish, "pgbb.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "pgbb", &mut buf);
        std::fs::write(out.join(file), buf)?;
    }
    println!("wrote pgbb.1, pgbb.bash, _pgbb, pgbb.fish to {}", out.display());
    Ok(())
}
