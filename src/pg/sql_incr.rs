//! The SQL of `-i` incremental backups: the WAL summarizer's state and summaries (17+), the
//! server's timeline history, and the changed blocks of one file read in one query.

use postgres::fallible_iterator::FallibleIterator;

use crate::incremental::blockref::{RelKey, SummaryRow};
use crate::lsn::Lsn;

use super::{PgError, Session};

/// The blocks of an `INCREMENTAL.*` file with one statement: $1 the path (raw bytes), $2 and
/// $3 the byte offsets and lengths of the ranges. Rows: the size and mtime as stat'd once,
/// then each range's position (from 1) and bytes, in the order given; a missing file has a
/// NULL size (and one row); no ranges give one row with a NULL position.
pub const READ_BLOCKS: &str = "\
    SELECT st.size, extract(epoch FROM st.modification)::bigint, r.i, \
           pg_catalog.pg_read_binary_file(f.p, r.o, r.l, true) \
      FROM (SELECT pg_catalog.convert_from($1, 'SQL_ASCII') AS p) AS f \
     CROSS JOIN LATERAL pg_catalog.pg_stat_file(f.p, true) AS st \
      LEFT JOIN LATERAL ROWS FROM (pg_catalog.unnest($2::pg_catalog.int8[]), pg_catalog.unnest($3::pg_catalog.int8[])) \
           WITH ORDINALITY AS r(o, l, i) ON st.size IS NOT NULL";

/// [`READ_BLOCKS`] for many files with one statement (a batch of small incremental files): $1
/// their paths (raw bytes), $2 and $3 for each the position (from 1) of its first range in $4
/// and $5 (byte offsets and lengths) and how many it has. Rows, files in the order given: the
/// file's position, size and mtime as stat'd once, then each range's position and bytes; a
/// missing file, or one without ranges, has one row with a NULL range.
pub const READ_BLOCKS_MANY: &str = "\
    SELECT f.i, st.size, extract(epoch FROM st.modification)::bigint, k::pg_catalog.int8, \
           pg_catalog.pg_read_binary_file(f.p, ($4::pg_catalog.int8[])[k], ($5::pg_catalog.int8[])[k], true) \
      FROM (SELECT u.i, pg_catalog.convert_from(u.raw, 'SQL_ASCII') AS p, u.first, u.n \
              FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.bytea[]), pg_catalog.unnest($2::pg_catalog.int4[]), \
                              pg_catalog.unnest($3::pg_catalog.int4[])) WITH ORDINALITY AS u(raw, first, n, i)) AS f \
     CROSS JOIN LATERAL pg_catalog.pg_stat_file(f.p, true) AS st \
      LEFT JOIN LATERAL pg_catalog.generate_series(f.first, f.first + f.n - 1) AS k ON st.size IS NOT NULL";

/// [`READ_BLOCKS`] through the compression helper `function` (qualified): $1 the path (raw
/// bytes), $2 the chunk size, $3 the zlib level, $4 and $5 the ranges' offsets and lengths.
/// Rows: (range position from 1, bytes): for each range the helper's header (size, mtime),
/// then its compressed chunks, ranges in the order given. No row for a missing file.
pub fn read_blocks_zlib(function: &str) -> String {
    format!(
        "SELECT r.i, z.z FROM ROWS FROM (pg_catalog.unnest($4::pg_catalog.int8[]), pg_catalog.unnest($5::pg_catalog.int8[])) \
              WITH ORDINALITY AS r(o, l, i) \
         CROSS JOIN LATERAL {function}($1::pg_catalog.bytea, $2::pg_catalog.int8, $3::pg_catalog.int4, r.o, r.l) AS z(z)"
    )
}

/// `summarize_wal`.
pub fn summarize_wal(s: &mut Session) -> Result<bool, PgError> {
    let r =
        s.query_one("SELECT pg_catalog.current_setting('summarize_wal') = 'on'", &[], "could not read summarize_wal")?;
    Ok(r.get(0))
}

/// What `pg_get_wal_summarizer_state()` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummarizerState {
    pub tli: u32,
    /// Summaries on disk reach this far.
    pub summarized: Lsn,
    /// Summarized in memory, not yet in a file.
    pub pending: Lsn,
}

fn lsn(s: &str) -> Result<Lsn, PgError> {
    s.parse().map_err(|e: crate::lsn::LsnParseError| PgError::Unsupported(format!("the server sent {e}")))
}

pub fn summarizer_state(s: &mut Session) -> Result<SummarizerState, PgError> {
    let r = s.query_one(
        "SELECT summarized_tli, summarized_lsn::pg_catalog.text, pending_lsn::pg_catalog.text \
           FROM pg_catalog.pg_get_wal_summarizer_state()",
        &[],
        "could not read the WAL summarizer's state",
    )?;
    let tli: i64 = r.try_get(0).map_err(|e| PgError::query("the WAL summarizer's state", e))?;
    let summarized: String = r.try_get(1).map_err(|e| PgError::query("the WAL summarizer's state", e))?;
    let pending: String = r.try_get(2).map_err(|e| PgError::query("the WAL summarizer's state", e))?;
    Ok(SummarizerState {
        tli: tli.clamp(0, u32::MAX as i64) as u32,
        summarized: lsn(&summarized)?,
        pending: lsn(&pending)?,
    })
}

/// One WAL summary file: timeline and LSN range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Summary {
    pub tli: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// `pg_available_wal_summaries()`, sorted by timeline and start.
pub fn available_summaries(s: &mut Session) -> Result<Vec<Summary>, PgError> {
    let what = "could not list the WAL summaries";
    let rows = s.query(
        "SELECT tli, start_lsn::pg_catalog.text, end_lsn::pg_catalog.text \
           FROM pg_catalog.pg_available_wal_summaries()",
        &[],
        what,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let tli: i64 = r.try_get(0).map_err(|e| PgError::query(what, e))?;
        let start: String = r.try_get(1).map_err(|e| PgError::query(what, e))?;
        let end: String = r.try_get(2).map_err(|e| PgError::query(what, e))?;
        let tli = u32::try_from(tli).map_err(|_| PgError::Unsupported(format!("{what}: timeline {tli}")))?;
        out.push(Summary { tli, start: lsn(&start)?, end: lsn(&end)? });
    }
    out.sort();
    Ok(out)
}

/// The rows of one summary (`pg_wal_summary_contents`), handed to `each` as they stream.
pub fn summary_rows(s: &mut Session, sum: &Summary, mut each: impl FnMut(SummaryRow)) -> Result<u64, PgError> {
    let what = format!("could not read the WAL summary of timeline {} from {} to {}", sum.tli, sum.start, sum.end);
    let (tli, start, end) = (i64::from(sum.tli), sum.start.to_string(), sum.end.to_string());
    let mut rows = s.stream(
        "SELECT relfilenode::pg_catalog.int8, reltablespace::pg_catalog.int8, reldatabase::pg_catalog.int8, \
                relforknumber::pg_catalog.int4, relblocknumber, is_limit_block \
           FROM pg_catalog.pg_wal_summary_contents($1, $2::pg_catalog.text::pg_catalog.pg_lsn, \
                                                   $3::pg_catalog.text::pg_catalog.pg_lsn)",
        &[&tli, &start, &end],
        &what,
    )?;
    let mut n = 0;
    let bad = |what: &str| PgError::Unsupported(format!("{what}: a value out of range"));
    while let Some(r) = rows.next().map_err(|e| PgError::query(&what, e))? {
        let get = |i: usize| r.try_get::<_, i64>(i).map_err(|e| PgError::query(&what, e));
        let (rel, spc, db, block) = (get(0)?, get(1)?, get(2)?, get(4)?);
        let fork: i32 = r.try_get(3).map_err(|e| PgError::query(&what, e))?;
        let is_limit: bool = r.try_get(5).map_err(|e| PgError::query(&what, e))?;
        let u = |v: i64| u32::try_from(v).map_err(|_| bad(&what));
        let key = RelKey { spc: u(spc)?, db: u(db)?, rel: u(rel)?, fork: u8::try_from(fork).map_err(|_| bad(&what))? };
        each(SummaryRow { key, block: u(block)?, is_limit });
        n += 1;
    }
    Ok(n)
}

/// The server's WAL position now: written (primary) or replayed (standby).
pub fn current_position(s: &mut Session) -> Result<Lsn, PgError> {
    let r = s.query_one(
        "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
                      ELSE pg_catalog.pg_current_wal_lsn() END)::pg_catalog.text",
        &[],
        "could not read the server's WAL position",
    )?;
    let v: Option<String> = r.try_get(0).map_err(|e| PgError::query("the server's WAL position", e))?;
    lsn(v.as_deref().unwrap_or("0/0"))
}

/// The timeline a primary writes on now (its last checkpoint's may be older: the checkpoint
/// after a promotion can still be under way).
pub fn insert_timeline(s: &mut Session) -> Result<u32, PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8)",
        &[],
        "could not read the server's timeline",
    )?;
    let v: String = r.try_get(0).map_err(|e| PgError::query("the server's timeline", e))?;
    u32::from_str_radix(&v, 16).map_err(|_| PgError::Unsupported(format!("the server sent the timeline {v:?}")))
}

/// The history file of timeline `tli` (`pg_wal/%08X.history`), `None` when the server has
/// none (timeline 1 has none).
pub fn timeline_history(s: &mut Session, tli: u32) -> Result<Option<String>, PgError> {
    let path = format!("pg_wal/{tli:08X}.history");
    let r = s.query_one(
        "SELECT pg_catalog.pg_read_binary_file($1, 0, 1048576, true)",
        &[&path],
        "could not read the timeline history",
    )?;
    let v: Option<Vec<u8>> = r.try_get(0).map_err(|e| PgError::query("the timeline history", e))?;
    Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
}
