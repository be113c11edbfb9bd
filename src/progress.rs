//! `-P/--progress`: a live display on a terminal (bytes, percent, rate, ETA, files, and what
//! each worker is copying), or a plain line every few seconds when stderr is not a terminal.
//! With `--log-format json`, a JSON line every few seconds, with -P or without, on a terminal
//! too (JSON wins: a display would break the lines).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Interval between two plain progress lines.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

enum Display {
    Off,
    Plain { last: Instant },
    Json { last: Instant },
    Bars { _multi: MultiProgress, total: ProgressBar, workers: Vec<ProgressBar> },
}

pub struct Progress {
    display: Display,
    started: Instant,
    total_bytes: u64,
    total_files: u64,
    /// Bytes of completed files, and of each worker's current file so far.
    done: u64,
    current: Vec<u64>,
    files: u64,
    /// Why the copy is held (`--max-lag`), shown while it is.
    note: Option<String>,
    /// WAL segments copied, as last told.
    wal: u64,
}

/// One progress line of `--log-format json` (docs/automation.md).
#[derive(Serialize)]
struct Tick<'a> {
    bytes: u64,
    total_bytes: u64,
    percent: u64,
    rate_bytes_per_s: u64,
    eta_s: u64,
    files: u64,
    total_files: u64,
    wal_segments: u64,
    /// Why the copy is held (`--max-lag`), else null.
    held: Option<&'a str>,
}

/// A moment that makes the next refresh print at once.
fn due() -> Instant {
    Instant::now().checked_sub(PLAIN_EVERY).unwrap_or_else(Instant::now)
}

/// A byte count for people, in binary units as pg_basebackup shows them: "512.0 kB",
/// "12.3 MB", "1.5 GB". The progress lines and the summary use it.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / f64::from(1u32 << 20)),
        b => format!("{:.1} kB", b as f64 / 1024.0),
    }
}

impl Progress {
    pub fn new(enabled: bool, total_bytes: u64, total_files: u64, workers: usize) -> Progress {
        let display = if crate::jsonlog::enabled() {
            Display::Json { last: due() }
        } else if !enabled {
            Display::Off
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{bar:30.cyan/blue} {bytes}/{total_bytes} {percent:>3}% {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            let total = multi.add(ProgressBar::new(total_bytes).with_style(style));
            let wstyle = ProgressStyle::with_template("  {prefix}: {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            let workers = (1..=workers)
                .map(|i| {
                    multi.add(ProgressBar::new_spinner().with_style(wstyle.clone()).with_prefix(format!("worker {i}")))
                })
                .collect();
            Display::Bars { _multi: multi, total, workers }
        } else {
            // The first refresh prints at once.
            Display::Plain { last: due() }
        };
        Progress {
            display,
            started: Instant::now(),
            total_bytes,
            total_files,
            done: 0,
            current: vec![0; workers],
            files: 0,
            note: None,
            wal: 0,
        }
    }

    fn bytes(&self) -> u64 {
        self.done + self.current.iter().sum::<u64>()
    }

    /// Worker `w` (0-based) started on `path`.
    pub fn started(&mut self, w: usize, path: &str) {
        if let Display::Bars { workers, .. } = &self.display {
            workers[w].set_message(path.to_string());
        }
        self.current[w] = 0;
    }

    /// Worker `w` has written `bytes` of its current file.
    pub fn advanced(&mut self, w: usize, bytes: u64) {
        self.current[w] = bytes;
        self.refresh(None);
    }

    /// Worker `w` finished a file of `size` bytes.
    pub fn finished(&mut self, w: usize, size: u64) {
        self.current[w] = 0;
        self.done += size;
        self.files += 1;
        if let Display::Bars { workers, .. } = &self.display {
            workers[w].set_message("");
        }
        self.refresh(None);
    }

    /// Shows why the copy is held (`None`: it is not); when that starts or ends, a plain
    /// display prints a line at once.
    pub fn set_note(&mut self, note: Option<String>) {
        if note == self.note {
            return;
        }
        let toggled = note.is_some() != self.note.is_some();
        self.note = note;
        if let (Display::Plain { last } | Display::Json { last }, true) = (&mut self.display, toggled) {
            *last = due();
        }
        self.refresh(None);
    }

    /// Redraws (terminal) or prints a line when it is time (plain); `wal` adds the number of
    /// WAL segments copied.
    pub fn refresh(&mut self, wal: Option<u64>) {
        if let Some(w) = wal {
            self.wal = w;
        }
        let bytes = self.bytes().min(self.total_bytes);
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        match &mut self.display {
            Display::Off => {}
            Display::Bars { total, .. } => {
                total.set_position(bytes);
                let note = self.note.as_ref().map_or(String::new(), |n| format!(" - {n}"));
                total.set_message(format!("files {}/{}{note}", self.files, self.total_files));
            }
            Display::Json { last } => {
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    self.tick(bytes, elapsed);
                }
            }
            Display::Plain { last } => {
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    let rate = bytes as f64 / elapsed;
                    let pct = (bytes * 100).checked_div(self.total_bytes).unwrap_or(100);
                    let eta = if rate > 0.0 { (self.total_bytes - bytes) as f64 / rate } else { 0.0 };
                    crate::errln!(
                        "pgbb: progress: {} of {} ({pct}%), {}/s, ETA {:.0} s, files {}/{}{}{}",
                        human(bytes),
                        human(self.total_bytes),
                        human(rate as u64),
                        eta,
                        self.files,
                        self.total_files,
                        wal.map_or(String::new(), |w| format!(", WAL segments {w}")),
                        self.note.as_ref().map_or(String::new(), |n| format!(", {n}"))
                    );
                }
            }
        }
    }

    /// A JSON progress line: `bytes` copied in `elapsed` seconds.
    fn tick(&self, bytes: u64, elapsed: f64) {
        let rate = bytes as f64 / elapsed;
        let tick = Tick {
            bytes,
            total_bytes: self.total_bytes,
            percent: (bytes * 100).checked_div(self.total_bytes).unwrap_or(100),
            rate_bytes_per_s: rate as u64,
            eta_s: if rate > 0.0 { ((self.total_bytes - bytes) as f64 / rate).round() as u64 } else { 0 },
            files: self.files,
            total_files: self.total_files,
            wal_segments: self.wal,
            held: self.note.as_deref(),
        };
        crate::jsonlog::emit("progress", tick);
    }

    /// Clears the display (terminal) or prints the last line (plain).
    pub fn finish(&mut self) {
        match &mut self.display {
            Display::Bars { total, workers, .. } => {
                for w in workers.iter() {
                    w.finish_and_clear();
                }
                total.finish_and_clear();
            }
            Display::Plain { last } | Display::Json { last } => {
                *last = due();
                self.refresh(None);
            }
            Display::Off => {}
        }
        self.display = Display::Off;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(0), "0.0 kB");
        assert_eq!(super::human(512), "0.5 kB");
        assert_eq!(super::human(1 << 20), "1.0 MB");
        assert_eq!(super::human(3 << 29), "1.5 GB");
    }
}
