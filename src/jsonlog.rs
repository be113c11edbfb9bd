//! `--log-format json`: what pgbb writes on stderr, as one JSON object per line — messages,
//! phase changes, progress ticks, and last the run's summary with its exit code. The field
//! names are stable and documented in docs/automation.md.

use std::ffi::OsString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people (the default)
    #[default]
    Plain,
    /// One JSON object per line, for schedulers and log collectors
    Json,
}

static JSON: AtomicBool = AtomicBool::new(false);
static ROLE: OnceLock<String> = OnceLock::new();
static STARTED: OnceLock<Instant> = OnceLock::new();
/// The backup's phases so far, and when each began (for the summary's durations).
static PHASES: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());

/// Sets the format for this process (`role` names it in every line).
pub fn init(format: LogFormat, role: &str) {
    STARTED.get_or_init(Instant::now);
    let _ = ROLE.set(role.to_string());
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Whether stderr is JSON lines.
pub fn enabled() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Whether `argv` asks for JSON (`--log-format json` or `--log-format=json` before any `--`):
/// for the report of arguments clap could not parse.
pub fn requested(argv: &[OsString]) -> bool {
    let mut prev: Option<&OsString> = None;
    for a in argv.iter().skip(1) {
        if a == "--" {
            return false;
        }
        if a == "--log-format=json" || (a == "json" && prev.is_some_and(|p| p == "--log-format")) {
            return true;
        }
        prev = Some(a);
    }
    false
}

/// Every line: when, what, who.
#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    ts: String,
    event: &'a str,
    role: &'a str,
    pid: u32,
    #[serde(flatten)]
    body: T,
}

/// The line for event `event` with the fields of `body`, newline-terminated.
pub fn render<T: Serialize>(event: &str, body: T) -> String {
    let role = ROLE.get().map_or("pgbb", String::as_str);
    let line = Line { ts: timestamp(SystemTime::now()), event, role, pid: std::process::id(), body };
    let mut s = serde_json::to_string(&line).unwrap_or_else(|e| {
        format!("{{\"event\":\"log\",\"level\":\"error\",\"message\":\"unserializable {event}: {e}\"}}")
    });
    s.push('\n');
    s
}

/// Writes one line on stderr, in one write (lines of several processes on one pipe do not
/// mix); a closed stderr is ignored.
pub fn emit<T: Serialize>(event: &str, body: T) {
    let _ = std::io::stderr().lock().write_all(render(event, body).as_bytes());
}

/// A message (`event: "log"`).
#[derive(Serialize)]
pub struct Message<'a> {
    /// error, warning, notice, info, debug.
    pub level: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'a str>,
}

/// A message line.
pub fn message(level: &str, message: &str, hint: Option<&str>) {
    emit("log", Message { level, message, hint });
}

/// The run begins (`event: "start"`): which pgbb.
pub fn start() {
    #[derive(Serialize)]
    struct Start {
        version: &'static str,
        commit: &'static str,
    }
    if enabled() {
        emit("start", Start { version: crate::version::VERSION, commit: crate::version::COMMIT });
    }
}

/// The backup enters phase `name` (`event: "phase"`); its duration goes in the summary.
pub fn phase(name: &'static str) {
    #[derive(Serialize)]
    struct Phase {
        phase: &'static str,
        elapsed_s: f64,
    }
    if !enabled() {
        return;
    }
    let now = Instant::now();
    PHASES.lock().unwrap_or_else(|p| p.into_inner()).push((name, now));
    emit("phase", Phase { phase: name, elapsed_s: seconds(now - *STARTED.get_or_init(Instant::now)) });
}

/// Seconds, to the millisecond.
pub fn seconds(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Each phase's duration in seconds, in the order they ran, as a JSON object.
struct Durations(Vec<(&'static str, f64)>);

impl Serialize for Durations {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

fn durations(now: Instant) -> Durations {
    let phases = PHASES.lock().unwrap_or_else(|p| p.into_inner());
    let ends = phases.iter().skip(1).map(|(_, t)| *t).chain(std::iter::once(now));
    Durations(phases.iter().zip(ends).map(|((name, begun), end)| (*name, seconds(end - *begun))).collect())
}

/// The last line of a run (`event: "summary"`): how it ended, and a finished backup's numbers.
#[derive(Serialize)]
struct Summary<'a, B: Serialize> {
    exit_code: i32,
    /// The exit code's name in lower case (ok, failed, usage, connect, …: docs/exit-codes.md).
    exit_reason: String,
    exit_meaning: &'static str,
    error: Option<&'a str>,
    hint: Option<&'a str>,
    total_s: f64,
    durations_s: Durations,
    #[serde(flatten)]
    backup: Option<B>,
}

/// Writes the summary line: exit `code`, the error that caused it, and `backup` (a finished
/// backup's numbers, flattened into the line).
pub fn finish<B: Serialize>(code: i32, error: Option<(&str, Option<&str>)>, backup: Option<B>) {
    let now = Instant::now();
    let known = crate::error::EXIT_CODES.iter().find(|c| c.code == code);
    emit(
        "summary",
        Summary {
            exit_code: code,
            exit_reason: known.map_or_else(|| "unknown".into(), |c| c.name.to_ascii_lowercase()),
            exit_meaning: known.map_or("", |c| c.meaning),
            error: error.map(|(e, _)| e),
            hint: error.and_then(|(_, h)| h),
            total_s: seconds(now - *STARTED.get_or_init(Instant::now)),
            durations_s: durations(now),
            backup,
        },
    );
}

/// RFC 3339 in UTC to the millisecond, as the plain lines: `2026-11-27T13:52:01.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64, ms: u64| timestamp(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_798_761_599, 999), "2026-12-31T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn lines_are_one_object_with_the_common_fields_first() {
        let l = render("log", Message { level: "warning", message: "a \"quoted\"\nline", hint: None });
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1, "{l}");
        assert!(l.starts_with("{\"ts\":\""), "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["event"], "log");
        assert_eq!(v["level"], "warning");
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert_eq!(v["pid"], std::process::id());
        assert!(v.get("hint").is_none());
    }

    #[test]
    fn json_is_asked_for_before_a_double_dash_only() {
        let argv =
            |a: &[&str]| std::iter::once("pgbb").chain(a.iter().copied()).map(OsString::from).collect::<Vec<_>>();
        assert!(requested(&argv(&["--log-format", "json", "-j", "0"])));
        assert!(requested(&argv(&["-P", "--log-format=json"])));
        assert!(!requested(&argv(&["--log-format", "plain", "json"])));
        assert!(!requested(&argv(&["--", "--log-format=json"])));
        assert!(!requested(&argv(&["json"])));
    }

    #[test]
    fn durations_follow_the_phases_in_order() {
        let d = Durations(vec![("connect", 0.25), ("copy", 1.5)]);
        assert_eq!(serde_json::to_string(&d).unwrap(), "{\"connect\":0.25,\"copy\":1.5}");
        assert_eq!(seconds(Duration::from_micros(1_234_567)), 1.235);
    }
}
