//! Log set-up: every line carries a timestamp, the process role and its pid, on stderr.

use std::io::Write;

/// `-v` shows progress (info), `-d` also every SQL statement (debug).
pub fn init(role: &str, verbose: bool, debug: bool) {
    let level = if debug {
        log::LevelFilter::Debug
    } else if verbose {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    let role = role.to_string();
    let pid = std::process::id();
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("pgbb", level)
        .format(move |buf, rec| {
            let level = match rec.level() {
                log::Level::Error => "ERROR",
                log::Level::Warn => "WARNING",
                log::Level::Info => "INFO",
                log::Level::Debug => "DEBUG",
                log::Level::Trace => "TRACE",
            };
            writeln!(buf, "{} pgbb {role}[{pid}] {level}: {}", buf.timestamp_millis(), rec.args())
        })
        .target(env_logger::Target::Stderr)
        .try_init();
}
