//! `--log-format json` for schedulers: every stderr line a JSON object (docs/automation.md),
//! the summary line's numbers those of the plain summary on stdout, JSON on a terminal too,
//! and bad input (an unknown format, bad arguments) reported with exit 2.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// Every line of stderr, parsed; fails naming the line that is not a JSON object with the
/// common fields (ts in RFC 3339 UTC, event, role, pid).
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{text}"));
            let ts = v["ts"].as_str().unwrap_or_else(|| panic!("no ts: {l}"));
            assert!(ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T", "ts {ts}");
            assert!(v["event"].is_string() && v["role"].is_string() && v["pid"].is_u64(), "{l}");
            v
        })
        .collect()
}

fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["event"] == event).collect()
}

/// The summary: the last line, and the only one.
fn summary(lines: &[Value]) -> &Value {
    assert_eq!(events(lines, "summary").len(), 1, "{lines:#?}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "summary", "the summary is the last line");
    last
}

/// The numbers of the plain summary line, as text, in the order it prints them.
#[derive(Debug, PartialEq)]
struct Plain {
    files: String,
    size: String,
    secs: f64,
    rate: String,
    wal: (String, String, String, String),
    verified: String,
    compressed: Option<(String, String)>,
}

/// "pgbb: backup complete: 1234 files, 20.1 MB in 1.2 s (16.8 MB/s), WAL 0/2000028 to
/// 0/2000100 on timeline 1 (1 segment), 2620 pages verified, compressed 4.2:1 (4.8 MB over
/// the network)".
fn plain(line: &str) -> Plain {
    let cut = |s: &str, sep: &str| -> (String, String) {
        let (a, b) = s.split_once(sep).unwrap_or_else(|| panic!("no {sep:?} in {s:?} ({line})"));
        (a.to_string(), b.to_string())
    };
    let (_, rest) = cut(line, "pgbb: backup complete: ");
    let (files, rest) = cut(&rest, " files, ");
    let (size, rest) = cut(&rest, " in ");
    let (secs, rest) = cut(&rest, " s (");
    let (rate, rest) = cut(&rest, "/s), WAL ");
    let (start, rest) = cut(&rest, " to ");
    let (stop, rest) = cut(&rest, " on timeline ");
    let (timeline, rest) = cut(&rest, " (");
    let (segments, rest) = cut(&rest, "), ");
    let (verified, rest) = cut(&rest, " pages verified");
    let compressed = rest.strip_prefix(", compressed ").map(|c| {
        let (ratio, net) = cut(c, ":1 (");
        (ratio, net.trim_end_matches(" over the network)").to_string())
    });
    Plain {
        files,
        size,
        secs: secs.parse().unwrap(),
        rate,
        wal: (start, stop, timeline, segments),
        verified,
        compressed,
    }
}

/// The same numbers from the JSON summary, in the plain line's words.
fn plain_of(s: &Value) -> Plain {
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} not a number: {s}"));
    let h = |b: u64| pgbb::progress::human(b);
    let segments = match n("wal_segments") {
        1 => "1 segment".to_string(),
        k => format!("{k} segments"),
    };
    Plain {
        files: n("files").to_string(),
        size: h(n("bytes")),
        secs: s["elapsed_s"].as_f64().unwrap(),
        rate: h(n("rate_bytes_per_s")),
        wal: (
            s["wal_start"].as_str().unwrap().into(),
            s["wal_stop"].as_str().unwrap().into(),
            n("timeline").to_string(),
            segments,
        ),
        verified: n("verified_pages").to_string(),
        compressed: s["compression_ratio"].as_f64().map(|r| (format!("{r:.1}"), h(n("network_bytes")))),
    }
}

/// The JSON summary says what the plain line says (the seconds to the rounding of each).
fn assert_same_numbers(json: &Value, stdout: &str) {
    let line = stdout.lines().find(|l| l.starts_with("pgbb: backup complete")).expect("a plain summary");
    let (mut p, mut j) = (plain(line), plain_of(json));
    assert!((p.secs - j.secs).abs() <= 0.051, "seconds: plain {} json {}", p.secs, j.secs);
    (p.secs, j.secs) = (0.0, 0.0);
    assert_eq!(p, j, "plain {line}\njson {json}");
}

#[test]
fn json_lines_of_a_backup_parse_and_the_summary_matches_the_plain_one() {
    let c = Cluster::new();
    c.pgbench_init(2);
    c.client().batch_execute("CREATE EXTENSION plpython3u").unwrap();
    let dest = c.path("json");
    // -P off a terminal would print plain progress lines: JSON wins. -v adds info messages.
    let out = pgbb_run(&[
        "--log-format",
        "json",
        "-P",
        "-v",
        "-c",
        "fast",
        "--compress",
        "zlib",
        &c.dsn(),
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stderr(&out));
    let version = stdout(&pgbb_run(&["--version"]));
    let start = &lines[0];
    assert_eq!(start["event"], "start");
    assert!(version.contains(&format!("commit {})", start["commit"].as_str().unwrap())), "{version} / {start}");
    let phases: Vec<&str> = events(&lines, "phase").iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["connect", "prepare_dest", "start_backup", "list", "copy", "stop_backup", "finish"]);
    // Progress: at once, and the last tick at the end of the copy, complete.
    let ticks = events(&lines, "progress");
    assert!(!ticks.is_empty(), "no progress line");
    let last = ticks.last().unwrap();
    assert_eq!(last["bytes"], last["total_bytes"], "{last}");
    assert_eq!((last["percent"].as_u64(), last["files"].clone()), (Some(100), last["total_files"].clone()), "{last}");
    assert!(last["held"].is_null() && last["wal_segments"].is_u64() && last["eta_s"] == 0, "{last}");
    // Messages, the children's too (their role names them).
    let logs = events(&lines, "log");
    assert!(logs.iter().any(|l| l["level"] == "info" && l["role"] == "master"), "{logs:#?}");
    assert!(logs.iter().any(|l| l["role"].as_str().unwrap().starts_with("worker")), "{logs:#?}");
    assert!(!logs.iter().any(|l| l["level"] == "error" || l["level"] == "warning"), "{logs:#?}");

    let s = summary(&lines);
    assert_eq!((s["exit_code"].as_i64(), s["exit_reason"].as_str()), (Some(0), Some("ok")), "{s}");
    assert!(s["error"].is_null() && s["hint"].is_null() && s["bad_pages"] == 0 && s["manifest"] == true, "{s}");
    assert_eq!(s["compression"], "zlib:1");
    assert!(s["compression_ratio"].as_f64().unwrap() > 1.5, "pgbench data compresses: {s}");
    assert_eq!(last["total_bytes"], s["bytes"], "the progress total is the summary's bytes");
    // Each phase's duration, in the order they ran (as written: the parsed object is sorted).
    let durations = s["durations_s"].as_object().unwrap();
    let raw = stderr(&out).lines().last().unwrap().split("\"durations_s\":").nth(1).unwrap().to_string();
    let at: Vec<usize> = phases.iter().map(|p| raw.find(&format!("\"{p}\":")).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]) && durations.len() == phases.len(), "{raw}");
    assert!(durations.values().map(|d| d.as_f64().unwrap()).sum::<f64>() <= s["total_s"].as_f64().unwrap() + 0.01);
    assert_same_numbers(s, &stdout(&out));
    verify_restore(
        &dest,
        &Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] },
    );
}

#[test]
fn json_summary_of_a_backup_with_corrupt_pages_says_exit_6() {
    let mut c = Cluster::new();
    let mut cl = c.client();
    cl.batch_execute("CREATE TABLE small AS SELECT g FROM generate_series(1, 10000) g; CHECKPOINT").unwrap();
    let rel: String = cl.query_one("SELECT pg_relation_filepath('small')", &[]).unwrap().get(0);
    drop(cl);
    c.stop();
    let mut data = std::fs::read(c.data.join(&rel)).unwrap();
    data[2 * 8192 + 4000..2 * 8192 + 4011].copy_from_slice(b"corruption!");
    std::fs::write(c.data.join(&rel), data).unwrap();
    c.start();
    let dest = c.path("corrupt");
    let out = pgbb_run(&["--log-format", "json", "-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let lines = json_lines(&stderr(&out));
    let logs = events(&lines, "log");
    let said = |level: &str, text: &str| {
        logs.iter().any(|l| l["level"] == level && l["message"].as_str().unwrap().contains(text))
    };
    assert!(said("warning", &format!("checksum verification failed in file \"./{rel}\", block 2")), "{logs:#?}");
    assert!(said("error", "1 data page(s) failed checksum verification"), "{logs:#?}");
    let s = summary(&lines);
    assert_eq!((s["exit_code"].as_i64(), s["exit_reason"].as_str()), (Some(6), Some("checksum")), "{s}");
    assert!(s["error"].as_str().unwrap().starts_with("1 data page(s) failed"), "{s}");
    assert_eq!(s["bad_pages"], 1);
    assert_eq!(s["compression"], "none");
    assert!(s["compression_ratio"].is_null());
    assert_same_numbers(s, &stdout(&out));
}

/// `pgbb ARGS` with stderr on a terminal (script(1) gives it one); stdout to a file. Returns
/// what the terminal showed.
fn on_a_terminal(args: &[&str], stdout_to: &std::path::Path) -> (Output, String) {
    let mut cmd = format!("exec {}", pgbb_bin());
    for a in args {
        cmd.push(' ');
        cmd.push_str(&String::from_utf8(pgbb::summary::shell_quote(a.as_bytes())).unwrap());
    }
    cmd.push_str(&format!(" >{}", stdout_to.display()));
    let mut script = Command::new("script");
    script.args(["-q", "-e", "-c", &cmd, "/dev/null"]).env("TERM", "xterm").env_remove("PGPASSWORD");
    default_signals(&mut script);
    let out = script.output().unwrap();
    let shown = stdout(&out).replace('\r', "");
    (out, shown)
}

#[test]
fn json_on_a_terminal_wins_over_the_progress_display() {
    let c = Cluster::new();
    c.pgbench_init(4);
    let dsn = c.dsn();
    // The control: -P on this terminal draws its display (escape sequences).
    let bars = c.path("bars");
    let (out, shown) = on_a_terminal(&["-P", "-c", "fast", &dsn, bars.to_str().unwrap()], &c.path("out1"));
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains('\x1b') && shown.contains("ETA"), "no terminal display: {shown:?}");
    // With --log-format json: JSON lines only.
    let dest = c.path("json");
    let (out, shown) =
        on_a_terminal(&["--log-format", "json", "-P", "-c", "fast", &dsn, dest.to_str().unwrap()], &c.path("out2"));
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains('\x1b'), "a terminal display: {shown:?}");
    let lines = json_lines(&shown);
    assert!(!events(&lines, "progress").is_empty(), "{shown}");
    assert_eq!(summary(&lines)["exit_code"], 0);
    let plain = std::fs::read_to_string(c.path("out2")).unwrap();
    assert!(plain.starts_with("pgbb: backup complete"), "stdout keeps the plain summary: {plain}");
    verifybackup(&dest, &[]);
}

#[test]
fn bad_input_with_json_exits_2_and_says_so_in_json() {
    let dest = std::env::temp_dir().join(format!("pgbb-json-bad-{}", std::process::id()));
    let dsn = "host=/nonexistent-pgbb-socket-dir port=5999 user=postgres connect_timeout=2";
    // An unknown format: clap's message, exit 2, nothing made.
    let out = pgbb_run(&["--log-format", "yaml", dsn, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid value 'yaml' for '--log-format <FORMAT>'"), "{}", stderr(&out));
    assert!(stderr(&out).contains("[possible values: plain, json]"), "{}", stderr(&out));
    assert!(!dest.exists());
    // Arguments refused, with JSON asked for: an error message, then the summary, both JSON.
    for (args, says) in [
        (&["--log-format", "json", "--bogus", dsn][..], "unexpected argument '--bogus'"),
        (&["--log-format=json", "-j", "0", dsn, dest.to_str().unwrap()][..], "-j/--jobs must be between 1 and 64"),
        (&["--log-format", "json", "-C", dsn, dest.to_str().unwrap()][..], "-C/--create-slot needs --slot NAME"),
    ] {
        let out = pgbb_run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let lines = json_lines(&stderr(&out));
        let s = summary(&lines);
        assert_eq!((s["exit_reason"].as_str(), s["exit_meaning"].as_str()), (Some("usage"), Some("usage")), "{s}");
        assert!(s["error"].as_str().unwrap().contains(says), "{args:?}: {s}");
        assert!(events(&lines, "log").iter().any(|l| l["level"] == "error"), "{lines:#?}");
        assert!(s.get("files").is_none(), "no backup numbers: {s}");
    }
    // No server: exit 3, the hint in the summary.
    let out = pgbb_run(&["--log-format", "json", dsn, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let lines = json_lines(&stderr(&out));
    let s = summary(&lines);
    assert_eq!((s["exit_code"].as_i64(), s["exit_reason"].as_str()), (Some(3), Some("connect")), "{s}");
    assert!(s["hint"].as_str().unwrap().contains("pg_hba.conf"), "{s}");
    assert_eq!(s["durations_s"].as_object().unwrap().keys().collect::<Vec<_>>(), ["connect"], "{s}");
    assert!(!dest.exists());
}

#[test]
fn json_summary_of_an_interrupted_backup_says_sigint() {
    use nix::sys::signal::{kill, Signal};
    let c = Cluster::new();
    c.pgbench_init(4);
    let dest = c.path("interrupted");
    // 1 MB/s: still copying when the signal comes.
    let mut child = spawn_pgbb(&["--log-format", "json", "-c", "fast", "-r", "1M"], &c.dsn(), &dest);
    wait_until_copying(&dest);
    kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let lines = json_lines(&err);
    let notices = events(&lines, "log");
    assert!(
        notices.iter().any(|l| l["level"] == "notice" && l["message"].as_str().unwrap().starts_with("SIGINT received")),
        "{err}"
    );
    let s = summary(&lines);
    assert_eq!((s["exit_code"].as_i64(), s["exit_reason"].as_str()), (Some(130), Some("sigint")), "{s}");
    assert_eq!(s["exit_meaning"], "interrupted by SIGINT");
    assert!(s.get("files").is_none(), "an interrupted backup has no numbers: {s}");
    let reached: Vec<&String> = s["durations_s"].as_object().unwrap().keys().collect();
    assert!(reached.iter().any(|p| *p == "copy"), "{s}");
    assert!(!dest.exists(), "DEST removed");
    c.assert_no_pgbb_left();
}

/// A `--check` that finds something to fix exits 4; its JSON summary says why (the FAIL lines
/// are on stdout), not `error: null`.
#[test]
fn json_summary_of_a_failed_check_says_why() {
    let c = Cluster::new();
    let missing = c.path("no-such-manifest");
    let out = pgbb().args(["--log-format", "json", "--check", "-i"]).arg(&missing).arg(c.dsn()).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stdout(&out).contains("FAIL"), "{}", stdout(&out));
    let lines = json_lines(&stderr(&out));
    let s = summary(&lines);
    assert_eq!(s["exit_code"], 4, "{s}");
    let error = s["error"].as_str().unwrap_or_else(|| panic!("no error in the summary: {s}"));
    assert!(error.contains("checks failed"), "{s}");
}
