//! Log set-up: every line carries a timestamp, the process role and its pid, on stderr; with
//! `--log-format json` each is a JSON object ([`crate::jsonlog`]).

use std::io::Write;

/// `-v` shows progress (info), `-d` also every SQL statement (debug).
pub fn init(role: &str, verbose: bool, debug: bool, format: crate::jsonlog::LogFormat) {
    crate::jsonlog::init(format, role);
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
            if crate::jsonlog::enabled() {
                let (level, message) = (rec.level().as_str().to_ascii_lowercase(), rec.args().to_string());
                let level = if level == "warn" { "warning" } else { &level };
                let line =
                    crate::jsonlog::render("log", crate::jsonlog::Message { level, message: &message, hint: None });
                return buf.write_all(line.as_bytes());
            }
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

/// Writes one line to stdout without ever panicking (`println!` panics on a closed pipe, as
/// in `pgbb … | head`): a reader that went away (EPIPE) is ignored, any other error is logged.
/// What pgbb did does not depend on whether someone still reads its summary.
pub fn out(line: &[u8]) {
    let mut o = std::io::stdout().lock();
    let r = o.write_all(line).and_then(|()| o.write_all(b"\n")).and_then(|()| o.flush());
    if let Err(e) = r {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            log::warn!("could not write to stdout: {e}");
        }
    }
}

/// Writes one line to stderr without ever panicking (`eprintln!` panics when stderr is a
/// closed pipe, as in `pgbb … 2>&1 | head`); there is nowhere left to report a failure.
/// As JSON, "pgbb: error: …" is a message of level error, any other "pgbb: …" a notice.
pub fn err(line: &str) {
    if crate::jsonlog::enabled() {
        let rest = line.strip_prefix("pgbb: ").unwrap_or(line);
        let (level, message) = match rest.strip_prefix("error: ") {
            Some(m) => ("error", m),
            None => ("notice", rest),
        };
        return crate::jsonlog::message(level, message, None);
    }
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(line.as_bytes()).and_then(|()| e.write_all(b"\n"));
}

/// `println!` that never panics: see [`out`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::logging::out(format!($($arg)*).as_bytes()) };
}

/// `eprintln!` that never panics: see [`err`].
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::logging::err(&format!($($arg)*)) };
}
