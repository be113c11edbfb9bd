//! `--max-lag`: how far a standby may fall behind while the backup copies, and the gate that
//! holds the copy while one lags more (with hysteresis: it opens again under 80 % of the limit).

use std::fmt;
use std::time::{Duration, Instant};

use crate::progress::human;

/// The copy resumes once every standby lags at most this share of the limit (per cent).
pub const RESUME_PERCENT: u64 = 80;
/// How often a gate that stays shut says so.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);
/// The longest duration limit accepted (a week).
const MAX_TIME: Duration = Duration::from_secs(7 * 86400);

/// The limit: bytes of WAL not yet replayed, or the standby's replay delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxLag {
    Bytes(u64),
    Time(Duration),
}

impl fmt::Display for MaxLag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxLag::Bytes(b) => f.write_str(&human(*b)),
            MaxLag::Time(d) => write!(f, "{:.1} s", d.as_secs_f64()),
        }
    }
}

/// Parses `--max-lag`: a number (decimals allowed) and a unit, which says which kind of limit
/// it is. Bytes: `B`, `kB`, `MB`, `GB`, `TB` (1024-based, as PostgreSQL's sizes; `KiB`…`TiB`
/// too). Time: `ms`, `s` (`sec`), `min`, `h`, `d`. Case is ignored. A number without a unit,
/// and `m` alone (minutes or megabytes?), are refused: the limit would be a guess.
pub fn parse_max_lag(src: &str) -> Result<MaxLag, String> {
    let t = src.trim();
    let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..end], t[end..].trim_start().to_ascii_lowercase());
    let n: f64 = match num.parse() {
        Ok(n) if num.bytes().any(|b| b.is_ascii_digit()) => n,
        _ => return Err(format!("invalid --max-lag {src:?}: give bytes (16MB, 1GB) or a duration (30s, 5min)")),
    };
    let kib = |p: i32| Unit::Bytes(1024f64.powi(p));
    let unit = match unit.as_str() {
        "" => return Err(format!("--max-lag {src:?} needs a unit: bytes (e.g. {t}MB) or a duration (e.g. {t}s)")),
        "m" => return Err(format!("--max-lag {src:?} is ambiguous: write {num}MB (bytes) or {num}min (minutes)")),
        "b" => kib(0),
        "kb" | "kib" => kib(1),
        "mb" | "mib" => kib(2),
        "gb" | "gib" => kib(3),
        "tb" | "tib" => kib(4),
        "ms" => Unit::Secs(0.001),
        "s" | "sec" => Unit::Secs(1.0),
        "min" => Unit::Secs(60.0),
        "h" => Unit::Secs(3600.0),
        "d" => Unit::Secs(86400.0),
        u => return Err(format!("invalid --max-lag unit {u:?}: use B, kB, MB, GB, TB or ms, s, min, h, d")),
    };
    match unit {
        Unit::Bytes(m) => {
            let b = (n * m).round();
            if b < 1.0 || b >= 2f64.powi(63) {
                return Err(format!("--max-lag {src:?} is out of range (1 byte to 8 EB)"));
            }
            Ok(MaxLag::Bytes(b as u64))
        }
        Unit::Secs(m) => {
            let d = Duration::try_from_secs_f64(n * m).unwrap_or(Duration::MAX);
            if d < Duration::from_millis(1) || d > MAX_TIME {
                return Err(format!("--max-lag {src:?} is out of range (1ms to 7d)"));
            }
            Ok(MaxLag::Time(d))
        }
    }
}

enum Unit {
    Bytes(f64),
    Secs(f64),
}

/// One standby as `pg_stat_replication` shows it (a logical subscriber is no standby and is
/// not listed; see `sql::standby_lags`).
#[derive(Debug, Clone, PartialEq)]
pub struct Standby {
    /// Its application_name, or `pid N` when it has none.
    pub name: String,
    /// WAL the server has that the standby has not replayed; `None` when unknown (no replay
    /// position yet).
    pub bytes: Option<u64>,
    /// `replay_lag`; `None` when the server has no recent measure (an idle, caught-up standby).
    pub replay_lag: Option<Duration>,
}

impl MaxLag {
    /// How far `s` lags in this limit's measure (bytes, or milliseconds); an unknown lag is none.
    fn measure(&self, s: &Standby) -> u64 {
        match self {
            MaxLag::Bytes(_) => s.bytes.unwrap_or(0),
            MaxLag::Time(_) => s.replay_lag.map_or(0, |d| d.as_millis() as u64),
        }
    }

    fn limit(&self) -> u64 {
        match self {
            MaxLag::Bytes(b) => *b,
            MaxLag::Time(d) => d.as_millis() as u64,
        }
    }

    /// A lag in this limit's measure, for people.
    fn show(&self, m: u64) -> String {
        match self {
            MaxLag::Bytes(_) => human(m),
            MaxLag::Time(_) => format!("{:.1} s", m as f64 / 1000.0),
        }
    }

    /// The lag under which the copy resumes.
    pub fn resume_at(&self) -> String {
        self.show(self.limit() / 100 * RESUME_PERCENT + self.limit() % 100 * RESUME_PERCENT / 100)
    }
}

/// What changed at one look at the standbys (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The copy is held from now: standby `name` lags `lag`.
    Held { name: String, lag: String },
    /// Still held after `held` (a reminder every [`REMIND_EVERY`]).
    Still { name: String, lag: String, held: Duration },
    /// Every standby is back under the resume mark: the copy goes on after `held`.
    Released { name: String, lag: String, held: Duration },
}

/// While shut, the copy hands out no new work.
#[derive(Debug)]
pub struct Gate {
    limit: MaxLag,
    shut: Option<Shut>,
    /// Time the copy spent held, over the whole backup.
    pub held_total: Duration,
}

#[derive(Debug)]
struct Shut {
    since: Instant,
    reminded: Instant,
    /// The standby that lags most, and its lag, at the last look.
    name: String,
    lag: String,
}

impl Gate {
    pub fn new(limit: MaxLag) -> Gate {
        Gate { limit, shut: None, held_total: Duration::ZERO }
    }

    pub fn limit(&self) -> MaxLag {
        self.limit
    }

    pub fn is_shut(&self) -> bool {
        self.shut.is_some()
    }

    /// The progress display's note while the copy is held.
    pub fn note(&self) -> Option<String> {
        self.shut.as_ref().map(|s| format!("held: standby {} lags {} (limit {})", s.name, s.lag, self.limit))
    }

    /// Takes one look at the standbys: shuts the gate when one lags more than the limit,
    /// opens it when all lag at most [`RESUME_PERCENT`] of it.
    pub fn update(&mut self, standbys: &[Standby], now: Instant) -> Option<Change> {
        let worst = standbys.iter().max_by_key(|s| self.limit.measure(s));
        let (name, m) = worst.map_or((String::new(), 0), |s| (s.name.clone(), self.limit.measure(s)));
        let lag = self.limit.show(m);
        let limit = self.limit.limit();
        match &mut self.shut {
            None if m > limit => {
                self.shut = Some(Shut { since: now, reminded: now, name: name.clone(), lag: lag.clone() });
                Some(Change::Held { name, lag })
            }
            None => None,
            Some(s) if m.saturating_mul(100) <= limit.saturating_mul(RESUME_PERCENT) => {
                let held = now.saturating_duration_since(s.since);
                self.held_total += held;
                self.shut = None;
                Some(Change::Released { name, lag, held })
            }
            Some(s) => {
                (s.name, s.lag) = (name.clone(), lag.clone());
                if now.saturating_duration_since(s.reminded) < REMIND_EVERY {
                    return None;
                }
                s.reminded = now;
                Some(Change::Still { name, lag, held: now.saturating_duration_since(s.since) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_their_unit() {
        assert_eq!(parse_max_lag("16MB"), Ok(MaxLag::Bytes(16 << 20)));
        assert_eq!(parse_max_lag("16 mb"), Ok(MaxLag::Bytes(16 << 20)));
        assert_eq!(parse_max_lag("1GB"), Ok(MaxLag::Bytes(1 << 30)));
        assert_eq!(parse_max_lag("1.5GiB"), Ok(MaxLag::Bytes(3 << 29)));
        assert_eq!(parse_max_lag("512kB"), Ok(MaxLag::Bytes(512 << 10)));
        assert_eq!(parse_max_lag("8192B"), Ok(MaxLag::Bytes(8192)));
        assert_eq!(parse_max_lag("2TB"), Ok(MaxLag::Bytes(2 << 40)));
        assert_eq!(parse_max_lag("30s"), Ok(MaxLag::Time(Duration::from_secs(30))));
        assert_eq!(parse_max_lag(" 5min "), Ok(MaxLag::Time(Duration::from_secs(300))));
        assert_eq!(parse_max_lag("1h"), Ok(MaxLag::Time(Duration::from_secs(3600))));
        assert_eq!(parse_max_lag("1.5 H"), Ok(MaxLag::Time(Duration::from_secs(5400))));
        assert_eq!(parse_max_lag("250ms"), Ok(MaxLag::Time(Duration::from_millis(250))));
        assert_eq!(parse_max_lag("2d"), Ok(MaxLag::Time(Duration::from_secs(172800))));
        assert_eq!(parse_max_lag("10sec"), Ok(MaxLag::Time(Duration::from_secs(10))));
    }

    #[test]
    fn ambiguous_or_bad_limits_are_refused() {
        assert!(parse_max_lag("16").unwrap_err().contains("needs a unit"), "a bare number: bytes or seconds?");
        assert!(parse_max_lag("5m").unwrap_err().contains("ambiguous"));
        assert!(parse_max_lag("5M").unwrap_err().contains("write 5MB (bytes) or 5min (minutes)"));
        for bad in ["", "MB", "-1MB", "x", "1.2.3s", "5 years", "1e3MB", "0MB", "0s", "0.1B", "0.1ms", "8d", "1e999s"] {
            assert!(parse_max_lag(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_max_lag("9000000TB").unwrap_err().contains("out of range"));
    }

    fn sb(name: &str, bytes: Option<u64>, secs: Option<u64>) -> Standby {
        Standby { name: name.into(), bytes, replay_lag: secs.map(Duration::from_secs) }
    }

    #[test]
    fn the_gate_shuts_over_the_limit_and_opens_under_80_percent() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut g = Gate::new(MaxLag::Bytes(100 << 20));
        assert_eq!(g.update(&[], at(0)), None, "no standby, nothing to hold");
        assert_eq!(g.update(&[sb("a", Some(100 << 20), None)], at(1)), None, "at the limit is not over it");
        let held = g.update(&[sb("a", Some(50 << 20), None), sb("b", Some(101 << 20), Some(1))], at(2));
        assert_eq!(held, Some(Change::Held { name: "b".into(), lag: "101.0 MB".into() }));
        assert!(g.is_shut());
        assert_eq!(g.note().unwrap(), "held: standby b lags 101.0 MB (limit 100.0 MB)");
        // Between 80 % and the limit it stays shut (hysteresis), without a word until a minute.
        assert_eq!(g.update(&[sb("b", Some(81 << 20), None)], at(3)), None);
        assert!(g.is_shut());
        let still = g.update(&[sb("b", Some(90 << 20), None)], at(62));
        assert_eq!(
            still,
            Some(Change::Still { name: "b".into(), lag: "90.0 MB".into(), held: Duration::from_secs(60) })
        );
        assert_eq!(g.update(&[sb("b", Some(90 << 20), None)], at(63)), None, "reminded once a minute");
        let released = g.update(&[sb("b", Some(80 << 20), None), sb("a", None, None)], at(70));
        assert_eq!(
            released,
            Some(Change::Released { name: "b".into(), lag: "80.0 MB".into(), held: Duration::from_secs(68) })
        );
        assert!(!g.is_shut() && g.note().is_none());
        assert_eq!(g.held_total, Duration::from_secs(68));
        // A standby that disconnects no longer holds the copy.
        g.update(&[sb("c", Some(200 << 20), None)], at(80));
        assert!(matches!(g.update(&[], at(81)), Some(Change::Released { .. })));
        assert_eq!(g.held_total, Duration::from_secs(69));
    }

    #[test]
    fn a_time_limit_reads_replay_lag_and_null_is_no_lag() {
        let mut g = Gate::new(MaxLag::Time(Duration::from_secs(30)));
        let t = Instant::now();
        assert_eq!(g.update(&[sb("idle", Some(1 << 30), None)], t), None, "NULL replay_lag: no lag");
        let held = g.update(&[sb("slow", Some(0), Some(31))], t);
        assert_eq!(held, Some(Change::Held { name: "slow".into(), lag: "31.0 s".into() }));
        assert_eq!(g.update(&[sb("slow", None, Some(25))], t), None, "over 80 % of 30 s");
        assert!(matches!(g.update(&[sb("slow", None, Some(24))], t), Some(Change::Released { .. })));
        assert_eq!(MaxLag::Time(Duration::from_secs(30)).resume_at(), "24.0 s");
        assert_eq!(MaxLag::Bytes(100 << 20).resume_at(), "80.0 MB");
    }
}
