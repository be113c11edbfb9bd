//! A worker's request whose connection is lost: reconnect (bounded attempts, growing waits,
//! each logged) and run the same request again, while the run's master is alive.
//!
//! Running a request again is safe: a whole file is written from scratch (its temporary
//! name truncated), a piece rewrites its range, a `--delta` comparison hashes the copy as
//! it is and writes the differing blocks at their offsets. The worker keeps the default
//! SIGTERM: a master that aborts ends it at once, during a wait too.

use std::time::Duration;

use crate::pg::PgError;
use crate::transfer::TransferError;

/// How many reconnections one request may take, and how long to wait before each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

/// A worker's: 0.5, 1, 2, 4 and 8 s (15.5 s in all, on top of the attempts), enough for a
/// dropped connection or a short network cut; the master's own session must survive it
/// anyway, or the backup is lost whatever the worker does.
pub const WORKER: Policy = Policy { attempts: 5, first: Duration::from_millis(500), max: Duration::from_secs(8) };

impl Policy {
    /// The wait before attempt `n` (from 1): `first`, doubled each time, at most `max`.
    pub fn delay(&self, n: u32) -> Duration {
        let doubled = self.first.saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
        doubled.min(self.max)
    }
}

/// What a reconnection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reopened {
    /// Connected and set up as at the start: the request runs again.
    Ready,
    /// Connected, but no session holds the run's lock: its master is gone, the backup with
    /// it; copying more would be wasted (and `--clean` may have ended this worker on purpose).
    MasterGone,
}

/// Runs `op` on `state`; when it fails because the connection was lost, waits, reconnects
/// with `reopen` and runs it again, at most `policy.attempts` reconnections in all. Every
/// other result (success, a DEST or data error, a failed statement) is returned as it is.
/// `what` names the request in the log.
pub fn retry<S, T>(
    state: &mut S,
    policy: Policy,
    what: &str,
    mut op: impl FnMut(&mut S) -> Result<T, TransferError>,
    mut reopen: impl FnMut(&mut S) -> Result<Reopened, PgError>,
    mut sleep: impl FnMut(Duration),
) -> Result<T, TransferError> {
    let mut attempt = 0;
    loop {
        let mut why = match op(state) {
            Err(TransferError::Pg(p)) if p.may_heal() => p,
            done => return done,
        };
        let mut refused = false;
        loop {
            attempt += 1;
            if attempt > policy.attempts {
                log::warn!("{what}: giving up after {} attempts to reconnect", policy.attempts);
                return Err(TransferError::GaveUp { attempts: policy.attempts, source: why });
            }
            let wait = policy.delay(attempt);
            let failed = if refused { "could not reconnect" } else { "lost the connection to the server" };
            log::warn!(
                "{what}: {failed} ({why}); reconnecting in {:.1} s (attempt {attempt} of {})",
                wait.as_secs_f64(),
                policy.attempts
            );
            sleep(wait);
            match reopen(state) {
                Ok(Reopened::Ready) => {
                    log::warn!("{what}: reconnected to the server; copying it again");
                    break;
                }
                Ok(Reopened::MasterGone) => {
                    log::warn!("{what}: not copied again: no session holds this run's lock, its master is gone");
                    return Err(TransferError::Pg(why));
                }
                Err(e) if e.may_heal() => (why, refused) = (e, true),
                Err(e) => return Err(TransferError::GaveUp { attempts: attempt, source: e }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::SqlState;

    fn terminated() -> TransferError {
        TransferError::Pg(PgError::Query {
            what: "could not read \"base/1/1259\"".into(),
            message: "terminating connection due to administrator command".into(),
            closed: false,
            code: Some(SqlState::ADMIN_SHUTDOWN),
        })
    }

    fn refused(code: Option<&str>) -> PgError {
        PgError::Connect { target: "t".into(), message: "refused".into(), code: code.map(SqlState::from_code) }
    }

    const FAST: Policy = Policy { attempts: 5, first: Duration::from_millis(500), max: Duration::from_secs(8) };

    /// Runs `retry` with `ops` (the results of each run of the request, in turn) and
    /// `reopens` (each reconnection's); returns the result, how often each ran, the waits.
    fn run(
        ops: Vec<Result<u32, TransferError>>,
        reopens: Vec<Result<Reopened, PgError>>,
    ) -> (Result<u32, TransferError>, usize, usize, Vec<Duration>) {
        let mut state = (ops.into_iter(), reopens.into_iter(), 0usize, 0usize);
        let mut waits = Vec::new();
        let r = retry(
            &mut state,
            FAST,
            "base/1/1259",
            |s| {
                s.2 += 1;
                s.0.next().expect("ran once too often")
            },
            |s| {
                s.3 += 1;
                s.1.next().expect("reconnected once too often")
            },
            |d| waits.push(d),
        );
        (r, state.2, state.3, waits)
    }

    #[test]
    fn waits_double_up_to_the_cap() {
        let d: Vec<u64> = (1..=7).map(|n| WORKER.delay(n).as_millis() as u64).collect();
        assert_eq!(d, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(WORKER.delay(100), WORKER.max);
    }

    #[test]
    fn a_lost_connection_is_retried_on_a_new_one() {
        let (r, ops, reopens, waits) = run(vec![Err(terminated()), Ok(7)], vec![Ok(Reopened::Ready)]);
        assert_eq!((r.unwrap(), ops, reopens), (7, 2, 1));
        assert_eq!(waits, [Duration::from_millis(500)]);
        // Failed reconnections that may heal use up attempts, with longer waits.
        let (r, ops, reopens, waits) = run(
            vec![Err(terminated()), Ok(7)],
            vec![Err(refused(None)), Err(refused(Some("53300"))), Ok(Reopened::Ready)],
        );
        assert_eq!((r.unwrap(), ops, reopens, waits.len()), (7, 2, 3, 3));
        assert_eq!(waits[2], Duration::from_secs(2));
    }

    #[test]
    fn attempts_are_bounded_per_request() {
        let (r, ops, reopens, waits) = run(vec![Err(terminated())], (0..5).map(|_| Err(refused(None))).collect());
        let e = r.unwrap_err();
        assert!(e.is_fatal());
        assert!(matches!(e, TransferError::GaveUp { attempts: 5, .. }), "{e}");
        // The last cause is the one told.
        assert!(e.to_string().starts_with("could not connect to t: refused"), "{e}");
        assert!(e.to_string().contains("gave up after 5 attempts to reconnect"), "{e}");
        assert_eq!((ops, reopens), (1, 5));
        assert_eq!(waits.iter().sum::<Duration>(), Duration::from_millis(15_500));
        // Lost again on every new connection: the same bound.
        let (r, ops, reopens, _) =
            run((0..6).map(|_| Err(terminated())).collect(), (0..5).map(|_| Ok(Reopened::Ready)).collect());
        assert!(matches!(r, Err(TransferError::GaveUp { attempts: 5, .. })));
        assert_eq!((ops, reopens), (6, 5));
    }

    #[test]
    fn what_waiting_cannot_heal_is_not_retried() {
        // A failed statement, DEST, bad data: as before, no reconnection.
        let failed = TransferError::Pg(PgError::Query {
            what: "w".into(),
            message: "permission denied".into(),
            closed: false,
            code: Some(SqlState::INSUFFICIENT_PRIVILEGE),
        });
        let data = TransferError::Data { path: "p".into(), message: "m".into() };
        for e in [failed, data] {
            let shown = e.to_string();
            let (r, ops, reopens, _) = run(vec![Err(e)], vec![]);
            assert_eq!((r.unwrap_err().to_string(), ops, reopens), (shown, 1, 0));
        }
        // A reconnection refused for good (authentication, a role that may not log in): at once.
        let (r, _, reopens, _) = run(vec![Err(terminated())], vec![Err(refused(Some("28000")))]);
        assert!(matches!(r, Err(TransferError::GaveUp { attempts: 1, .. })));
        assert_eq!(reopens, 1);
    }

    #[test]
    fn a_run_whose_master_is_gone_is_not_retried() {
        let (r, ops, reopens, _) = run(vec![Err(terminated())], vec![Ok(Reopened::MasterGone)]);
        let e = r.unwrap_err();
        assert_eq!(e.to_string(), terminated().to_string(), "the first cause, as without retries");
        assert!(e.is_fatal());
        assert_eq!((ops, reopens), (1, 1));
    }
}
