//! All SQL pgbb runs, in one place, with small typed wrappers.

use super::raw::RawText;
use super::{Caps, PgError, Session};
use crate::layout::{Entry, EXCLUDED_DIR_CONTENTS};
use crate::lsn::Lsn;

/// The raw bytes of a file name (text column `$n`) as `bytea`, in every server encoding.
/// `textsend` would do on a UTF8 server only: it converts to the client encoding (UTF8),
/// which fails on a SQL_ASCII server for a name that is not UTF-8 ("invalid byte sequence")
/// and changes the bytes of a non-ASCII name on a LATIN1 one. `decode(…, 'escape')` takes
/// the bytes as they are once backslashes are doubled; `replace` works byte by byte on
/// single-byte encodings and on UTF8.
macro_rules! raw_name {
    ($col:literal) => {
        concat!("pg_catalog.decode(pg_catalog.replace(", $col, r", E'\\', E'\\\\'), 'escape')")
    };
}

/// A path sent as raw bytes (`bytea` parameter `$n`) as the server's text, byte for byte:
/// no encoding conversion, only the server's check that the bytes are valid in its encoding
/// (always true on SQL_ASCII and single-byte encodings). A text parameter would be converted
/// from UTF8 to the server encoding.
macro_rules! text_path {
    ($param:literal) => {
        concat!("pg_catalog.convert_from(", $param, ", 'SQL_ASCII')")
    };
}

/// Run on every new session. First the safe search path, which the startup options already
/// set (see `conn::SAFE_SEARCH_PATH`); set again here so that no statement of pgbb's ever runs
/// without it. Every function, catalog and type below is schema-qualified as well; operators
/// are found through the path alone, and only in pg_catalog: the path names no other schema,
/// and pg_temp is never searched for functions or operators.
/// Then nothing may cut a long backup short. JIT off: the planner cannot estimate
/// set-returning file functions and takes the recursive listing for a query worth
/// compiling, which cost 100–230 ms of LLVM time per backup (measured).
pub const SESSION_SETUP: &str = "SET search_path = pg_catalog, pg_temp; SET standard_conforming_strings = on; \
     SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0; SET jit = off";
/// Run with [`SESSION_SETUP`]: the session's server process.
pub const BACKEND_PID: &str = "SELECT pg_catalog.pg_backend_pid()";

const IDLE_SESSION_TIMEOUT_OFF: &str = "SET idle_session_timeout = 0";

/// Facts about the server, read once by the master.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub caps: Caps,
    pub version: String,
    pub wal_level: String,
    pub wal_segment_size: u64,
    pub group_access: bool,
    pub in_recovery: bool,
    pub superuser: bool,
    pub replication: bool,
    pub current_user: String,
    pub database: String,
}

pub fn version(s: &mut Session) -> Result<(Caps, String), PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.current_setting('server_version_num')::int, pg_catalog.current_setting('server_version')",
        &[],
        "could not read the server version",
    )?;
    Ok((Caps::new(r.get(0)), r.get(1)))
}

/// Turns off `idle_session_timeout` where it exists.
pub fn session_setup_for(s: &mut Session, caps: Caps) -> Result<(), PgError> {
    if caps.idle_session_timeout() {
        s.execute(IDLE_SESSION_TIMEOUT_OFF, &[], "could not configure the session")?;
    }
    Ok(())
}

pub fn server_info(s: &mut Session, caps: Caps, version: String) -> Result<ServerInfo, PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.current_setting('wal_level'), \
                (SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size'), \
                pg_catalog.current_setting('data_directory_mode'), pg_catalog.pg_is_in_recovery(), \
                r.rolsuper, r.rolreplication, current_user::pg_catalog.text, \
                pg_catalog.current_database()::pg_catalog.text \
           FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
        &[],
        "could not read the server settings",
    )?;
    let mode: String = r.get(2);
    Ok(ServerInfo {
        caps,
        version,
        wal_level: r.get(0),
        wal_segment_size: r.get::<_, i64>(1) as u64,
        group_access: u32::from_str_radix(mode.trim_start_matches('0'), 8).unwrap_or(0o700) & 0o070 != 0,
        in_recovery: r.get(3),
        superuser: r.get(4),
        replication: r.get(5),
        current_user: r.get(6),
        database: r.get(7),
    })
}

/// The functions (of `wanted`, schema-qualified signatures) the current role may not execute.
pub fn missing_function_privileges(s: &mut Session, wanted: &[&str]) -> Result<Vec<String>, PgError> {
    let wanted: Vec<String> = wanted.iter().map(|f| f.to_string()).collect();
    let rows = s.query(
        "SELECT f FROM pg_catalog.unnest($1::pg_catalog.text[]) AS f \
          WHERE NOT pg_catalog.has_function_privilege(f, 'EXECUTE')",
        &[&wanted],
        "could not check function privileges",
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// (max_replication_slots, slots in use).
pub fn slot_capacity(s: &mut Session) -> Result<(i64, i64), PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.current_setting('max_replication_slots')::bigint, \
                (SELECT pg_catalog.count(*) FROM pg_catalog.pg_replication_slots)",
        &[],
        "could not read the replication slot settings",
    )?;
    Ok((r.get(0), r.get(1)))
}

/// How many more connections the server takes from this role, by each limit (this
/// session, which goes away before a backup, counted as free).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionRoom {
    /// max_connections, less the superuser-reserved ones for others, less the open sessions.
    pub server: i64,
    /// The role's CONNECTION LIMIT (when it applies: set, and the role is no superuser) and
    /// the connections it leaves free.
    pub role_limit: Option<i64>,
    pub role_free: i64,
    /// The same for the database.
    pub database_limit: Option<i64>,
    pub database_free: i64,
}

impl ConnectionRoom {
    /// What the tightest limit leaves.
    pub fn free(&self) -> i64 {
        let mut f = self.server;
        if self.role_limit.is_some() {
            f = f.min(self.role_free);
        }
        if self.database_limit.is_some() {
            f = f.min(self.database_free);
        }
        f
    }
}

/// See [`ConnectionRoom`]. The server counts a role's sessions (all of them) against its
/// limit, and a database's client sessions, WAL senders and autovacuum workers against its
/// own; superusers are exempt from both.
pub fn connection_room(s: &mut Session) -> Result<ConnectionRoom, PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.current_setting('max_connections')::bigint \
                - CASE WHEN r.rolsuper THEN 0 \
                       ELSE pg_catalog.current_setting('superuser_reserved_connections')::bigint END \
                - (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity \
                    WHERE backend_type = 'client backend'), \
                CASE WHEN r.rolsuper OR r.rolconnlimit < 0 THEN NULL ELSE r.rolconnlimit::bigint END, \
                (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a WHERE a.usesysid = r.oid), \
                CASE WHEN r.rolsuper OR d.datconnlimit < 0 THEN NULL ELSE d.datconnlimit::bigint END, \
                (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a WHERE a.datid = d.oid \
                    AND a.backend_type IN ('client backend', 'walsender', 'autovacuum worker')) \
           FROM pg_catalog.pg_roles r, pg_catalog.pg_database d \
          WHERE r.rolname = current_user AND d.datname = pg_catalog.current_database()",
        &[],
        "could not read the connection settings",
    )?;
    let (role_limit, database_limit): (Option<i64>, Option<i64>) = (r.get(1), r.get(3));
    // This check's own session goes away before the backup.
    Ok(ConnectionRoom {
        server: r.get::<_, i64>(0) + 1,
        role_limit,
        role_free: role_limit.unwrap_or(0) - r.get::<_, i64>(2) + 1,
        database_limit,
        database_free: database_limit.unwrap_or(0) - r.get::<_, i64>(4) + 1,
    })
}

/// Tablespaces other than pg_default and pg_global: (oid, name, location). The location is
/// the server's bytes (it need not be UTF-8: an administrator may have moved the directory);
/// the name is for messages.
pub fn tablespaces(s: &mut Session) -> Result<Vec<(u32, String, std::path::PathBuf)>, PgError> {
    const WHAT: &str = "could not list tablespaces";
    let rows = s.query(
        concat!(
            "SELECT oid, spcname::pg_catalog.text, ",
            raw_name!("pg_catalog.pg_tablespace_location(oid)"),
            " FROM pg_catalog.pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid"
        ),
        &[],
        WHAT,
    )?;
    let row = |r: &postgres::Row| -> Result<_, postgres::Error> {
        let location = RawText(r.try_get::<_, Vec<u8>>(2)?);
        Ok((r.try_get(0)?, r.try_get::<_, RawText>(1)?.lossy(), location.path()))
    };
    rows.iter().map(|r| row(r).map_err(|e| PgError::query(WHAT, e))).collect()
}

/// Takes the advisory lock of run `key` (see [`super::run`]) on this session, where it stays
/// until the session ends; false if another session holds it.
pub fn lock_run(s: &mut Session, key: i32) -> Result<bool, PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
        &[&super::run::RUN_LOCK_CLASS, &key],
        "could not take the run's advisory lock",
    )?;
    Ok(r.get(0))
}

/// Whether a session holds the advisory lock of run `key`: its master is alive (a worker
/// that reconnected asks before it copies again).
pub fn run_alive(s: &mut Session, key: i32) -> Result<bool, PgError> {
    let r = s.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND classid = $1 \
                           AND objid = $2 AND objsubid = 2 AND granted)",
        &[&(super::run::RUN_LOCK_CLASS as u32), &(key as u32)],
        "could not look for the run's lock",
    )?;
    Ok(r.get(0))
}

/// Whether server process `pid` is still there.
pub fn backend_exists(s: &mut Session, pid: i32) -> Result<bool, PgError> {
    let r = s.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1)",
        &[&pid],
        "could not look for a server process",
    )?;
    Ok(r.get(0))
}

/// Renames this session in pg_stat_activity.
pub fn set_application_name(s: &mut Session, name: &str) -> Result<(), PgError> {
    s.execute("SELECT pg_catalog.set_config('application_name', $1, false)", &[&name], "could not set application_name")
}

/// What `--clean` did: sessions ended, and sessions left alone because their run is live
/// or because they carry no run key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub terminated: i64,
    pub live: i64,
    pub unkeyed: i64,
}

/// `--clean`: ends the sessions of pgbb runs whose master is gone — those whose
/// application_name carries a run key whose advisory lock no session holds (a non-exclusive
/// backup lives as long as its session; a temporary slot goes with the session that holds
/// it). Sessions of a live run, and pgbb sessions without a run key (a worker started by
/// hand, `--check`, `pgbb -x`, another version), are left alone: nothing shows they are
/// leftovers. CASE, not AND, so that nothing but a leftover is ever terminated.
pub fn clean_leftovers(s: &mut Session) -> Result<Cleaned, PgError> {
    let r = s.query_one(
        "WITH t AS ( \
             SELECT a.pid, k.run, EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
                     WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objid::pg_catalog.text = k.run \
                       AND l.objsubid = 2 AND l.granted) AS live \
               FROM pg_catalog.pg_stat_activity a, \
                    LATERAL (SELECT pg_catalog.substring(a.application_name, $2) AS run) k \
              WHERE a.application_name LIKE 'pgbb%' AND a.pid <> pg_catalog.pg_backend_pid() \
                AND a.backend_type = 'client backend') \
         SELECT pg_catalog.count(*) FILTER (WHERE CASE WHEN run IS NOT NULL AND NOT live \
                                                  THEN pg_catalog.pg_terminate_backend(pid) ELSE false END), \
                pg_catalog.count(*) FILTER (WHERE run IS NOT NULL AND live), \
                pg_catalog.count(*) FILTER (WHERE run IS NULL) \
           FROM t",
        &[&(super::run::RUN_LOCK_CLASS as u32), &super::run::SESSION_KEY_PATTERN],
        "could not end leftover pgbb sessions",
    )?;
    Ok(Cleaned { terminated: r.get(0), live: r.get(1), unkeyed: r.get(2) })
}

/// Creates a temporary physical slot that reserves WAL at once.
pub fn create_temp_slot(s: &mut Session, name: &str) -> Result<Lsn, PgError> {
    let r = s.query_one(
        "SELECT lsn::pg_catalog.text FROM pg_catalog.pg_create_physical_replication_slot($1, true, true)",
        &[&name],
        "could not create the temporary replication slot",
    )?;
    let lsn: Option<String> = r.get(0);
    Ok(lsn.and_then(|l| l.parse().ok()).unwrap_or(Lsn(0)))
}

/// Creates a permanent physical slot that reserves WAL at once (`-C`).
pub fn create_permanent_slot(s: &mut Session, name: &str) -> Result<(), PgError> {
    s.execute(
        "SELECT pg_catalog.pg_create_physical_replication_slot($1, true, false)",
        &[&name],
        &format!("could not create replication slot \"{name}\""),
    )
}

pub fn drop_slot(s: &mut Session, name: &str) -> Result<(), PgError> {
    s.execute(
        "SELECT pg_catalog.pg_drop_replication_slot($1)",
        &[&name],
        &format!("could not drop replication slot \"{name}\""),
    )
}

/// Moves a physical slot's restart point forward (the WAL loop, once segments are copied).
pub fn advance_slot(s: &mut Session, name: &str, to: Lsn) -> Result<(), PgError> {
    s.execute(
        "SELECT pg_catalog.pg_replication_slot_advance($1, $2::pg_catalog.text::pg_catalog.pg_lsn)",
        &[&name, &to.to_string()],
        &format!("could not advance replication slot \"{name}\""),
    )
}

/// The restart position of a slot (`None` if there is no such slot, or it reserves nothing).
pub fn slot_restart_lsn(s: &mut Session, name: &str) -> Result<Option<Lsn>, PgError> {
    let rows = s.query(
        "SELECT restart_lsn::pg_catalog.text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
        &[&name],
        "could not read the replication slot",
    )?;
    Ok(rows.first().and_then(|r| r.get::<_, Option<String>>(0)).and_then(|l| l.parse().ok()))
}

/// `wal_status` of a slot (`reserved`, `extended`, `unreserved`, `lost`), `None` if it is gone.
pub fn slot_wal_status(s: &mut Session, name: &str) -> Result<Option<String>, PgError> {
    let rows = s.query(
        "SELECT coalesce(wal_status, 'unknown') FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
        &[&name],
        "could not check the replication slot",
    )?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// `--max-lag`: whether this role sees the positions in `pg_stat_replication` (superuser, or
/// the privileges of `pg_read_all_stats`, which `pg_monitor` has); others get NULLs there.
pub fn sees_replication_positions(s: &mut Session) -> Result<bool, PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')",
        &[],
        "could not check membership in pg_read_all_stats",
    )?;
    Ok(r.get(0))
}

/// `--max-lag`: the standbys replicating from this server and how far each lags: WAL bytes the
/// server has (its insert position; on a standby, what it received or replayed, for its
/// cascaded standbys) that the standby has not replayed, and `replay_lag`. Logical
/// walsenders (a subscriber's, a slot's) and base backups' are no standbys and are left out.
pub fn standby_lags(s: &mut Session) -> Result<Vec<crate::lag::Standby>, PgError> {
    let rows = s.query(
        "SELECT coalesce(r.application_name, '')::pg_catalog.text, r.pid, \
                pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery() \
                    THEN greatest(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn()) \
                    ELSE pg_catalog.pg_current_wal_lsn() END, r.replay_lsn)::pg_catalog.float8, \
                extract(epoch FROM r.replay_lag)::pg_catalog.float8 \
           FROM pg_catalog.pg_stat_replication r \
          WHERE r.state IS DISTINCT FROM 'backup' \
            AND NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots l \
                             WHERE l.active_pid = r.pid AND l.slot_type = 'logical')",
        &[],
        "could not read pg_stat_replication",
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let (name, pid): (String, i32) = (r.get(0), r.get(1));
            crate::lag::Standby {
                name: if name.is_empty() { format!("pid {pid}") } else { name },
                bytes: r.get::<_, Option<f64>>(2).map(|b| b.max(0.0) as u64),
                replay_lag: r.get::<_, Option<f64>>(3).and_then(|l| std::time::Duration::try_from_secs_f64(l).ok()),
            }
        })
        .collect())
}

/// Starts a non-exclusive backup on this session; returns the start (REDO) LSN.
pub fn start_backup(s: &mut Session, caps: Caps, label: &str, fast: bool) -> Result<Lsn, PgError> {
    let sql = if caps.new_backup_api() {
        "SELECT pg_catalog.pg_backup_start($1, $2)::pg_catalog.text"
    } else {
        "SELECT pg_catalog.pg_start_backup($1, $2, false)::pg_catalog.text"
    };
    let r = s.query_one(sql, &[&label, &fast], "could not start the backup")?;
    let lsn: String = r.get(0);
    lsn.parse().map_err(|e: crate::lsn::LsnParseError| PgError::Unsupported(e.to_string()))
}

/// The timeline of the backup's checkpoint.
pub fn checkpoint_timeline(s: &mut Session) -> Result<u32, PgError> {
    let r =
        s.query_one("SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()", &[], "could not read the timeline")?;
    Ok(r.get::<_, i32>(0) as u32)
}

/// Why a standby whose primary runs without full-page writes cannot be backed up (the
/// server would refuse too: a torn page in the copy could not be repaired by replay).
pub const FULL_PAGE_WRITES_OFF: &str = "the server is a standby whose primary runs with full_page_writes = off \
     (the last checkpoint it replayed says so): a backup from a standby needs full-page writes; set \
     full_page_writes = on on the primary and run CHECKPOINT there, or back up the primary";

/// On a standby: whether the last checkpoint it replayed was written with full_page_writes
/// on (its primary's setting then). The server refuses a standby's backup when it is off.
pub fn checkpoint_full_page_writes(s: &mut Session) -> Result<bool, PgError> {
    let r = s.query_one(
        "SELECT full_page_writes FROM pg_catalog.pg_control_checkpoint()",
        &[],
        "could not read the last checkpoint's full_page_writes",
    )?;
    Ok(r.get(0))
}

/// On a standby: the timeline of its minimum recovery point (where a standby's backup stops;
/// 0 when it has none).
pub fn min_recovery_timeline(s: &mut Session) -> Result<u32, PgError> {
    let r = s.query_one(
        "SELECT min_recovery_end_timeline FROM pg_catalog.pg_control_recovery()",
        &[],
        "could not read the minimum recovery point's timeline",
    )?;
    Ok(r.get::<_, i32>(0) as u32)
}

/// What the stop function returns.
#[derive(Debug)]
pub struct StopResult {
    pub lsn: Lsn,
    pub labelfile: String,
    pub spcmapfile: String,
}

/// Stops the backup started on this session (never waiting for WAL archiving: pgbb copies
/// the WAL itself).
pub fn stop_backup(s: &mut Session, caps: Caps) -> Result<StopResult, PgError> {
    let sql = if caps.new_backup_api() {
        "SELECT lsn::pg_catalog.text, labelfile, spcmapfile FROM pg_catalog.pg_backup_stop(false)"
    } else {
        "SELECT lsn::pg_catalog.text, labelfile, spcmapfile FROM pg_catalog.pg_stop_backup(false, false)"
    };
    let r = s.query_one(sql, &[], "could not stop the backup")?;
    let lsn: String = r.get(0);
    Ok(StopResult {
        lsn: lsn.parse().map_err(|e: crate::lsn::LsnParseError| PgError::Unsupported(e.to_string()))?,
        labelfile: r.get::<_, Option<String>>(1).unwrap_or_default(),
        // Tablespace locations, which need not be UTF-8 (only logged).
        spcmapfile: r.get::<_, Option<RawText>>(2).map(|t| t.lossy()).unwrap_or_default(),
    })
}

/// Lists the whole data directory in one recursive query. It does not descend into `pg_wal`,
/// the directories whose contents are excluded, or temp directories; files that vanish while
/// it runs are simply missing. Names come back as raw bytes (see `raw_name!`), since the
/// server does not validate the encoding of file names.
pub fn list_data_directory(s: &mut Session) -> Result<Vec<(Vec<u8>, bool, u64)>, PgError> {
    use postgres::fallible_iterator::FallibleIterator;
    const WHAT: &str = "could not list the data directory";
    let pruned: Vec<String> = EXCLUDED_DIR_CONTENTS.iter().map(|d| d.to_string()).collect();
    // Streamed and converted row by row: the driver's rows of 200k files would cost the
    // master about as much memory again as the listing itself.
    let mut rows = s.stream(
        concat!(
            "WITH RECURSIVE tree(path, name, isdir, size) AS ( \
                 SELECT n, n, st.isdir, st.size \
                   FROM pg_catalog.pg_ls_dir('.', true, false) AS n, pg_catalog.pg_stat_file(n, true) AS st \
               UNION ALL \
                 SELECT t.path || '/' || n, n, st.isdir, st.size \
                   FROM tree AS t, pg_catalog.pg_ls_dir(t.path, true, false) AS n, \
                        pg_catalog.pg_stat_file(t.path || '/' || n, true) AS st \
                  WHERE t.isdir AND t.path <> 'pg_wal' AND t.name <> ALL ($1::pg_catalog.text[]) \
                    AND t.name NOT LIKE 'pgsql\\_tmp%' \
             ) \
             SELECT ",
            raw_name!("path"),
            ", isdir, size FROM tree WHERE isdir IS NOT NULL"
        ),
        &[&pruned],
        WHAT,
    )?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(|e| PgError::query(WHAT, e))? {
        let get = |e| PgError::query(WHAT, e);
        out.push((
            r.try_get::<_, Vec<u8>>(0).map_err(get)?,
            r.try_get(1).map_err(get)?,
            r.try_get::<_, i64>(2).map_err(get)?.max(0) as u64,
        ));
    }
    Ok(out)
}

/// Converts the raw listing into entries (names stay raw bytes; see `Entry`).
pub fn entries_from_listing(raw: Vec<(Vec<u8>, bool, u64)>) -> Vec<Entry> {
    raw.into_iter()
        .map(|(name, is_dir, size)| Entry {
            path: String::from_utf8_lossy(&name).into_owned(),
            raw: name,
            is_dir,
            size,
        })
        .collect()
}

/// Why the temporary compression helper is impossible on a server in recovery.
pub const READ_ONLY_NO_COMPRESSION: &str = "the server is in recovery (a standby), which is read-only: the \
     temporary compression helper cannot be created there, and no pgbb helper is installed; have a superuser run \
     `pgbb --install-helper` once on the primary (it replicates to every standby), or use --compress none";

/// The start of both temporary compression helpers' PL/Python, after their imports (`os`,
/// `struct`): the file opened (a missing one gives no row at all), the header row (size and
/// modification time, two 8-byte big-endian integers), the read placed at `off`, and `left`
/// set to the bytes to read; the rest runs inside `with f:`.
macro_rules! reader_head {
    () => {
        r#"try:
    f = open(path, 'rb')
except FileNotFoundError:
    return
with f:
    st = os.fstat(f.fileno())
    size = st.st_size if want < 0 else max(0, min(want, st.st_size - off))
    yield struct.pack('>qq', size, int(st.st_mtime))
    if off > 0:
        f.seek(off)
    left = size
"#
    };
}

/// The compression helper: a session-local (pg_temp) PL/Python function, gone when the
/// session ends, created and called by its qualified name only. It takes the path as raw
/// bytes (Python opens a `bytes` path as it is), so any name can be read. First row: the file's size and modification time (Unix seconds) as two
/// 8-byte big-endian integers (no row at all if the file does not exist); then one
/// zlib-compressed chunk per row.
///
/// Compression is spent only where it pays: once a chunk came out of `zlib.compress` at more
/// than 3/4 of its size, the next ones are written stored (level 0: still a zlib stream, read
/// as any other), each after a sample of it, the page in its middle (its first page when it
/// is shorter than two), did not compress below 3/4
/// either; a sample that does switches back. The choice carries over to the next call for
/// the same file in the session (the next piece, the next range of blocks). Deflate runs at about 55 MB/s on pages of random bytes (which
/// still come out at 0.89 of their size, from their free space), slower than a 1 Gbit/s link
/// carries the bytes it would save; stored, they cost memory speed. A stored chunk whose
/// pages have holes (the zeros between `pd_lower` and `pd_upper`, checked to be zeros)
/// travels without them instead: `P`, then the format of `pages_without_holes!` (a zlib
/// stream's first byte has 8, deflate, in its low four bits; `P` is 0x50: see
/// `page_holes::unpack`). That is the free space deflate was saving, without deflate.
pub const CREATE_ZLIB_READER: &str = concat!(
    r#"
CREATE FUNCTION pg_temp.pgbb_read_zlib(path pg_catalog.bytea, chunk pg_catalog.int8, level pg_catalog.int4,
                                       off pg_catalog.int8, want pg_catalog.int8)
RETURNS SETOF pg_catalog.bytea LANGUAGE plpython3u STRICT AS $pgbb$
import os, struct, zlib
zero = bytes(8192)
def holes(b):
    out, n = [b'P'], 0
    for i in range(0, len(b), 8192):
        p = b[i:i + 8192]
        lo = p[12] | p[13] << 8 if len(p) == 8192 else 0
        up = p[14] | p[15] << 8 if len(p) == 8192 else 0
        if 24 <= lo < up <= 8192 and p[lo:up] == zero[:up - lo]:
            out += [struct.pack('>HH', lo, up - lo), p[:lo], p[up:]]
            n += 1
        else:
            out += [b'\0\0\0\0', p]
    return b''.join(out) if n else zlib.compress(b, 0)
"#,
    reader_head!(),
    r#"    last = SD.get('last')
    stored = last is not None and last[0] == path and last[1]
    while left > 0:
        b = f.read(min(chunk, left))
        if not b:
            break
        left -= len(b)
        if stored:
            m = len(b) // 16384 * 8192
            s = b[m:m + 8192]
            stored = len(zlib.compress(s, level)) * 4 > len(s) * 3
        if stored:
            yield holes(b)
        else:
            z = zlib.compress(b, level)
            stored = level > 0 and len(z) * 4 > len(b) * 3
            yield z
        SD['last'] = (path, stored)
$pgbb$"#
);

/// PL/Python that binds a libzstd already loaded in this backend (in `SD['zstd']`: the
/// library and one compression context, for the session): the one the postgres binary is
/// linked with (PostgreSQL 15+ built with zstd), or that another of its libraries brought in.
/// It is found in `/proc/self/maps` and bound with `RTLD_NOLOAD`, so `dlopen` returns what is
/// mapped (by name, else by device and inode) and never loads anything: a library replaced
/// on disk since the server started (`(deleted)` in the map) is still the mapped one. None
/// mapped, one that cannot be bound, or one older than 1.4: SQLSTATE 0A000 (feature not
/// supported), and nothing else raises that. Every function is given its argument and
/// result types before it is called.
macro_rules! zstd_load {
    () => {
        r#"
import ctypes, os, struct
z = SD.get('zstd')
if z is None:
    def bind():
        found = None
        with open('/proc/self/maps') as m:
            for line in m:
                f = line.rstrip('\n').split(None, 5)
                if len(f) == 6 and os.path.basename(f[5]).startswith('libzstd.so'):
                    found = f[5][:-len(' (deleted)')] if f[5].endswith(' (deleted)') else f[5]
                    break
        if found is None or not found.startswith('/'):
            return 'this server has no libzstd loaded (it was built without zstd)'
        try:
            lib = ctypes.CDLL(found, mode=os.RTLD_NOLOAD)
            S = ctypes.c_size_t
            for name, args, res in (('ZSTD_versionNumber', [], ctypes.c_uint), ('ZSTD_compressBound', [S], S),
                                    ('ZSTD_isError', [S], ctypes.c_uint), ('ZSTD_getErrorName', [S], ctypes.c_char_p),
                                    ('ZSTD_createCCtx', [], ctypes.c_void_p),
                                    ('ZSTD_compressCCtx', [ctypes.c_void_p, ctypes.c_void_p, S, ctypes.c_char_p, S, ctypes.c_int], S)):
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
        except (OSError, AttributeError) as e:
            return 'could not bind the server\'s libzstd (%s)' % e
        if lib.ZSTD_versionNumber() < 10400:
            return 'the server\'s libzstd is older than 1.4'
        return lib
    lib = bind()
    if isinstance(lib, str):
        plpy.error(lib, sqlstate='0A000')
    cctx = lib.ZSTD_createCCtx()
    if not cctx:
        plpy.error('could not create a zstd compression context', sqlstate='53200')
    z = SD['zstd'] = (lib, cctx)
"#
    };
}

/// Whether this session can compress with the server's libzstd ([`zstd_load!`]): an error
/// with SQLSTATE 0A000 if not. A `DO` block: nothing is created.
pub const ZSTD_PROBE: &str = concat!("DO $pgbb$", zstd_load!(), "$pgbb$ LANGUAGE plpython3u");

/// The zstd compression helper: [`CREATE_ZLIB_READER`]'s calling convention and rows, each
/// chunk one zstd frame (with its content size) from the server's own libzstd
/// ([`zstd_load!`]) at `level`. zstd stores what does not compress by itself, at memory
/// speed, so there is no stored mode here; a frame starts with the bytes 28 B5 2F FD, which
/// no zlib stream and no stored chunk (`P`) does (see `page_holes::unpack`).
pub const CREATE_ZSTD_READER: &str = concat!(
    r#"
CREATE FUNCTION pg_temp.pgbb_read_zstd(path pg_catalog.bytea, chunk pg_catalog.int8, level pg_catalog.int4,
                                       off pg_catalog.int8, want pg_catalog.int8)
RETURNS SETOF pg_catalog.bytea LANGUAGE plpython3u STRICT AS $pgbb$"#,
    zstd_load!(),
    "lib, cctx = z\n",
    reader_head!(),
    r#"    cap = lib.ZSTD_compressBound(max(1, chunk))
    out = SD.get('out')
    if out is None or len(out) < cap:
        out = SD['out'] = ctypes.create_string_buffer(cap)
    while left > 0:
        b = f.read(min(chunk, left))
        if not b:
            break
        left -= len(b)
        n = lib.ZSTD_compressCCtx(cctx, out, len(out), b, len(b), level)
        if lib.ZSTD_isError(n):
            plpy.error('zstd: ' + lib.ZSTD_getErrorName(n).decode('ascii', 'replace'))
        yield ctypes.string_at(out, n)
$pgbb$"#
);

/// [`READ_ZLIB`] through [`CREATE_ZSTD_READER`].
pub const READ_ZSTD: &str = "SELECT pg_temp.pgbb_read_zstd($1, $2, $3, $4, $5)";

/// Streams a file (or, with `off`/`len` ≥ 0, one piece of it) compressed: see
/// [`CREATE_ZLIB_READER`]. A target-list set-returning function runs value-per-call, so
/// rows leave the server as they are produced.
pub const READ_ZLIB: &str = "SELECT pg_temp.pgbb_read_zlib($1, $2, $3, $4, $5)";

/// Streams a file plainly with built-in functions, one row per chunk: (size, mtime, chunk).
/// A single row with a NULL size means the file does not exist; an empty file gives one row
/// with a NULL chunk. A NULL chunk after that means the file vanished while being read.
/// The path ($1) travels as raw bytes (see `text_path!`).
pub const READ_PLAIN: &str = concat!(
    "SELECT st.size, extract(epoch FROM st.modification)::bigint, \
            pg_catalog.pg_read_binary_file(f.p, o, $2, true) \
       FROM (SELECT ",
    text_path!("$1"),
    " AS p) AS f \
      CROSS JOIN LATERAL pg_catalog.pg_stat_file(f.p, true) AS st \
       LEFT JOIN LATERAL pg_catalog.generate_series(0::bigint, st.size - 1, $2) AS o ON true"
);

/// [`READ_PLAIN`] for one piece of a file: bytes $3 .. $3 + $4, cut at the file's size as
/// stat'd here (no chunk past its end; a piece that starts past it has none). Short chunks
/// mean the file shrank while being read (zero-filled by the worker up to that size).
pub const READ_PLAIN_RANGE: &str = concat!(
    "SELECT st.size, extract(epoch FROM st.modification)::bigint, \
            pg_catalog.pg_read_binary_file(f.p, o, least($2, $3 + $4 - o), true) \
       FROM (SELECT ",
    text_path!("$1"),
    " AS p) AS f \
      CROSS JOIN LATERAL pg_catalog.pg_stat_file(f.p, true) AS st \
       LEFT JOIN LATERAL pg_catalog.generate_series($3::bigint, least($3 + $4, st.size) - 1, $2) AS o ON true"
);

/// A chunk `r.d` (one read of a data file) without the empty middle of its pages: for each
/// 8192-byte page, in order, a 4-byte header, the hole's start and length (`int2send`, big
/// endian), then the page without the hole. A page loses its hole only when its header's
/// `pd_lower` (bytes 12–13) and `pd_upper` (14–15, little endian as on x86 and ARM) mark one
/// (24 ≤ lower < upper ≤ 8192) *and* every byte of it is zero on the server: the worker puts
/// back exactly those zeros, so any file, any page, any byte order comes back byte for byte
/// (a page whose fields mean something else just travels whole, with a zero header). A short
/// last page travels whole. The page is cut out once (`OFFSET 0`: not re-read for every use),
/// and the chunk's read, a volatile function, is not repeated either. Full-page images in WAL
/// leave out the same hole. Measured here: about 440 MB/s per core (docs/benchmarks.md).
macro_rules! pages_without_holes {
    () => {
        "CASE WHEN pg_catalog.length(r.d) = 0 THEN r.d ELSE ( \
           SELECT pg_catalog.string_agg( \
                    pg_catalog.int2send(h.lo::pg_catalog.int2) || pg_catalog.int2send(h.n::pg_catalog.int2) \
                    || CASE WHEN h.n > 0 THEN pg_catalog.substr(h.p, 1, h.lo) || pg_catalog.substr(h.p, h.lo + h.n + 1) \
                            ELSE h.p END, \
                    ''::pg_catalog.bytea ORDER BY h.b) \
             FROM (SELECT g.b, g.p, CASE WHEN g.n > 0 THEN g.lo ELSE 0 END AS lo, g.n \
                     FROM (SELECT b, s.p, u.lo, \
                                  CASE WHEN pg_catalog.length(s.p) = 8192 AND u.lo >= 24 AND u.lo < u.up AND u.up <= 8192 \
                                        AND pg_catalog.substr(s.p, u.lo + 1, u.up - u.lo) \
                                            = pg_catalog.substr(pg_catalog.decode(pg_catalog.repeat('00', 8192), 'hex'), 1, u.up - u.lo) \
                                       THEN u.up - u.lo ELSE 0 END AS n \
                             FROM pg_catalog.generate_series(0, (pg_catalog.length(r.d) - 1) / 8192) AS b \
                            CROSS JOIN LATERAL (SELECT pg_catalog.substr(r.d, b * 8192 + 1, 8192) AS p OFFSET 0) AS s \
                            CROSS JOIN LATERAL (SELECT pg_catalog.get_byte(s.p, 12) + pg_catalog.get_byte(s.p, 13) * 256 AS lo, \
                                                       pg_catalog.get_byte(s.p, 14) + pg_catalog.get_byte(s.p, 15) * 256 AS up) AS u \
                          ) AS g) AS h) END"
    };
}

/// A plain read whose chunks are sent without their pages' holes: chunks from `$from` to
/// `$to` (exclusive), each read `$len` bytes long (see [`READ_HOLES`]).
macro_rules! read_holes {
    ($from:literal, $to:literal, $len:literal) => {
        concat!(
            "SELECT st.size, extract(epoch FROM st.modification)::bigint, ",
            pages_without_holes!(),
            " FROM (SELECT ",
            text_path!("$1"),
            " AS p) AS f \
              CROSS JOIN LATERAL pg_catalog.pg_stat_file(f.p, true) AS st \
               LEFT JOIN LATERAL pg_catalog.generate_series(",
            $from,
            ", ",
            $to,
            " - 1, $2) AS o ON true \
               LEFT JOIN LATERAL (SELECT pg_catalog.pg_read_binary_file(f.p, o, ",
            $len,
            ", true) AS d) AS r ON true"
        )
    };
}

/// [`READ_PLAIN`] with each chunk's pages sent without their holes (see
/// `pages_without_holes!`): over a network, the zeros in the middle of data pages do not
/// travel. Rows as for [`READ_PLAIN`]; the chunk column is in that format.
pub const READ_HOLES: &str = read_holes!("0::bigint", "st.size", "$2");

/// [`READ_PLAIN_RANGE`] with pages sent without their holes (see [`READ_HOLES`]).
pub const READ_HOLES_RANGE: &str = read_holes!("$3::bigint", "least($3 + $4, st.size)", "least($2, $3 + $4 - o)");

/// The server's path of a file whose path is not valid UTF-8 (which cannot travel as text):
/// found one component at a time by the raw bytes of its names ($1, a `bytea[]`), from the
/// data directory down, so that any directory or file name works. `pg_ls_dir` is strict: it
/// lists nothing once every component is matched.
macro_rules! walk_to_raw_path {
    () => {
        concat!(
            "WITH RECURSIVE walk(p, i) AS ( \
                 SELECT NULL::pg_catalog.text, 0 \
               UNION ALL \
                 SELECT CASE WHEN w.i = 0 THEN n ELSE w.p || '/' || n END, w.i + 1 \
                   FROM walk AS w, \
                        pg_catalog.pg_ls_dir(CASE WHEN w.i = 0 THEN '.' \
                                                  WHEN w.i < pg_catalog.cardinality($1::pg_catalog.bytea[]) THEN w.p END, \
                                             true, false) AS n \
                  WHERE ",
            raw_name!("n"),
            " = ($1::pg_catalog.bytea[])[w.i + 1] \
             ) "
        )
    };
}

/// [`READ_PLAIN`] for a file whose path is not valid UTF-8 ($1: its components, see
/// `walk_to_raw_path!`; $2: the chunk size). No row at all if it is not there.
pub const READ_PLAIN_BY_NAME: &str = concat!(
    walk_to_raw_path!(),
    "SELECT st.size, extract(epoch FROM st.modification)::bigint, pg_catalog.pg_read_binary_file(f.p, o, $2, true) \
       FROM (SELECT p FROM walk WHERE i = pg_catalog.cardinality($1::pg_catalog.bytea[])) AS f \
       CROSS JOIN LATERAL pg_catalog.pg_stat_file(f.p, true) AS st \
       LEFT JOIN LATERAL pg_catalog.generate_series(0::bigint, st.size - 1, $2) AS o ON true"
);

/// The 22 bytes that end a block's entry in the copy's fingerprints when the block is to be
/// compared by its page header (its first 10 bytes: LSN and checksum) instead of its SHA-256
/// (see `crate::fingerprint`): "pgbb-compare-by-header". A SHA-256 ends so with probability
/// 2^-176.
macro_rules! header_tag_hex {
    () => {
        "706762622d636f6d706172652d62792d686561646572"
    };
}

/// [`header_tag_hex!`] as bytes.
pub const HEADER_TAG: &[u8; 22] = b"pgbb-compare-by-header";

/// `--delta`: the blocks of a file that differ from the copy's. $2 is the read size (a
/// multiple of [`crate::compare::BLOCK`]), $3 the copy's block fingerprints, 32 bytes for each
/// 8192-byte block of the local file, concatenated: its SHA-256, or its page header's first 10
/// bytes followed by [`HEADER_TAG`], compared with the first 10 bytes of the server's block
/// (LSN and checksum; a server block with LSN 0 always differs). A block past the copy's end
/// has none, and so differs, unhashed: a copy that holds nothing of a range, a hole or past its
/// end, costs the server no hashing there. Nothing past the size stat'd first is read (a file that grows meanwhile is
/// cut there, as in a full backup). One row per differing block: (size, mtime, offset, bytes,
/// cut), in file order; the server hashes with the built-in `sha256(bytea)`, so only
/// differing blocks travel. A read that came back short (the file shrank while it was read)
/// sends its last block whatever its hash, with `cut`, where the bytes ended: the worker
/// zero-fills from there to the end of that read, as a full backup zero-fills a file that
/// shrank. A file whose blocks all match gives one row with a NULL offset; a missing file one
/// row with a NULL size; a NULL block means the file vanished while it was read.
macro_rules! compare_blocks {
    ($from:literal) => {
        compare_blocks!("", $from, "$3::pg_catalog.bytea", "c.blk")
    };
    ($from:literal, offsets) => {
        compare_blocks!("", $from, "$3::pg_catalog.bytea", OFFSETS_ONLY)
    };
    ($from:literal, range) => {
        compare_blocks!(@ "", $from, "$3::pg_catalog.bytea", "c.blk", RANGE)
    };
    ($from:literal, range, offsets) => {
        compare_blocks!(@ "", $from, "$3::pg_catalog.bytea", OFFSETS_ONLY, RANGE)
    };
    ($cols:literal, $from:literal, $hashes:literal, OFFSETS_ONLY) => {
        compare_blocks!(
            $cols,
            $from,
            $hashes,
            "CASE WHEN c.cut IS NULL THEN pg_catalog.substr(c.blk, 1, 0) ELSE c.blk END"
        )
    };
    (@ $cols:literal, $from:literal, $hashes:literal, OFFSETS_ONLY, RANGE) => {
        compare_blocks!(
            @ $cols,
            $from,
            $hashes,
            "CASE WHEN c.cut IS NULL THEN pg_catalog.substr(c.blk, 1, 0) ELSE c.blk END",
            RANGE
        )
    };
    ($cols:literal, $from:literal, $hashes:literal, $blk:literal) => {
        compare_blocks!(@ $cols, $from, $hashes, $blk, "st.size", "0::bigint", "st.size")
    };
    (@ $cols:literal, $from:literal, $hashes:literal, $blk:literal, RANGE) => {
        compare_blocks!(
            @ $cols,
            $from,
            $hashes,
            $blk,
            "CASE WHEN st.size IS NOT NULL THEN $6::pg_catalog.int8 END",
            "$4::pg_catalog.int8",
            "$5::pg_catalog.int8"
        )
    };
    (@ $cols:literal, $from:literal, $hashes:literal, $blk:literal, $size:literal, $start:literal, $end:literal) => {
        concat!(
            "SELECT ",
            $cols,
            $size,
            ", extract(epoch FROM st.modification)::bigint, c.off, ",
            $blk,
            ", c.cut \
               FROM ",
            $from,
            " CROSS JOIN LATERAL pg_catalog.pg_stat_file(f.p, true) AS st \
               LEFT JOIN LATERAL ( \
                 SELECT o + b * 8192 AS off, x.blk, \
                        CASE WHEN x.short THEN o + pg_catalog.length(d.d) END AS cut \
                   FROM pg_catalog.generate_series(",
            $start,
            ", ",
            $end,
            " - 1, $2) AS o \
                  CROSS JOIN LATERAL pg_catalog.pg_read_binary_file(f.p, o, least($2, ",
            $end,
            " - o), true) AS d(d) \
                  CROSS JOIN LATERAL pg_catalog.generate_series(0::bigint, \
                        COALESCE((pg_catalog.length(d.d) - 1) / 8192, 0)) AS b \
                  CROSS JOIN LATERAL (SELECT pg_catalog.substr(d.d, (b * 8192 + 1)::int, 8192) AS blk, \
                        b = COALESCE((pg_catalog.length(d.d) - 1) / 8192, 0) \
                          AND pg_catalog.length(d.d) < least($2, ",
            $end,
            " - o) AS short) AS x \
                  WHERE d.d IS NULL OR x.short \
                     OR pg_catalog.length(",
            $hashes,
            ") < ((o - ",
            $start,
            ") / 8192 + b + 1) * 32 \
                     OR CASE WHEN pg_catalog.substr(",
            $hashes,
            ", (((o - ",
            $start,
            ") / 8192 + b) * 32 + 11)::int, 22) = pg_catalog.decode('",
            header_tag_hex!(),
            "', 'hex') \
                        THEN pg_catalog.substr(x.blk, 1, 8) = pg_catalog.decode('0000000000000000', 'hex') \
                          OR pg_catalog.substr(x.blk, 1, 10) IS DISTINCT FROM pg_catalog.substr(",
            $hashes,
            ", (((o - ",
            $start,
            ") / 8192 + b) * 32 + 1)::int, 10) \
                        ELSE pg_catalog.sha256(x.blk) IS DISTINCT FROM pg_catalog.substr(",
            $hashes,
            ", (((o - ",
            $start,
            ") / 8192 + b) * 32 + 1)::int, 32) END \
               ) AS c ON st.size IS NOT NULL"
        )
    };
}

/// See `compare_blocks!`; the path ($1) travels as raw bytes.
pub const COMPARE_BLOCKS: &str = compare_blocks!("(SELECT pg_catalog.convert_from($1, 'SQL_ASCII') AS p) AS f");

/// [`COMPARE_BLOCKS`] that says where the differing blocks are without sending them: their
/// block is empty (`''`), to be read through the compression helper
/// (`sql_incr::read_blocks_zlib`). A read that came back short still sends its last block,
/// with `cut`; a NULL block still means the file vanished.
pub const COMPARE_OFFSETS: &str =
    compare_blocks!("(SELECT pg_catalog.convert_from($1, 'SQL_ASCII') AS p) AS f", offsets);

/// [`COMPARE_BLOCKS`] of one piece of a large file, so that the worker hashes the next piece
/// of its copy while the server compares this one: $4 and $5 the piece's start and end (a
/// multiple of $2 from the file's start), $6 the size stat'd before the first piece (the
/// size column; nothing past it is read, a file that shrank since is zero-filled as above),
/// $3 the hashes of the copy's blocks from $4.
pub const COMPARE_RANGE: &str = compare_blocks!("(SELECT pg_catalog.convert_from($1, 'SQL_ASCII') AS p) AS f", range);

/// [`COMPARE_RANGE`] that only locates the differing blocks (see [`COMPARE_OFFSETS`]).
pub const COMPARE_RANGE_OFFSETS: &str =
    compare_blocks!("(SELECT pg_catalog.convert_from($1, 'SQL_ASCII') AS p) AS f", range, offsets);

/// [`COMPARE_BLOCKS`] for a file whose path is not valid UTF-8 ($1: its components, see
/// `walk_to_raw_path!`). No row at all if it is not there.
pub const COMPARE_BLOCKS_BY_NAME: &str = concat!(
    walk_to_raw_path!(),
    compare_blocks!("(SELECT p FROM walk WHERE i = pg_catalog.cardinality($1::pg_catalog.bytea[])) AS f")
);

/// [`COMPARE_OFFSETS`] for a file whose path is not valid UTF-8 (see
/// [`COMPARE_BLOCKS_BY_NAME`]).
pub const COMPARE_OFFSETS_BY_NAME: &str = concat!(
    walk_to_raw_path!(),
    compare_blocks!("(SELECT p FROM walk WHERE i = pg_catalog.cardinality($1::pg_catalog.bytea[])) AS f", offsets)
);

/// Many small files with one statement (pg_rewind's `libpq_source.c` fetches the same way,
/// over `unnest`): $1 their paths as raw bytes (`bytea[]`, see `text_path!`), $2 the largest
/// size read here. One row per path, in the order given: (its position from 1, size, mtime,
/// size ≤ $2, bytes). The bytes are cut at the size stat'd (nothing past it is read); a
/// missing file has a NULL size; NULL bytes after a size mean it vanished while it was read;
/// a file larger than $2 (it grew since it was listed) has no bytes: read it on its own.
pub const READ_MANY: &str = concat!(
    "SELECT r.i, st.size, extract(epoch FROM st.modification)::bigint, st.size <= $2, \
            CASE WHEN st.size <= $2 THEN pg_catalog.pg_read_binary_file(",
    text_path!("r.raw"),
    ", 0, st.size, true) END \
       FROM pg_catalog.unnest($1::pg_catalog.bytea[]) WITH ORDINALITY AS r(raw, i) \
      CROSS JOIN LATERAL pg_catalog.pg_stat_file(",
    text_path!("r.raw"),
    ", true) AS st"
);

/// Many whole files read through the compression helper `function` (schema-qualified) with
/// one statement: $1 the paths (raw bytes, `bytea[]`), $2 the chunk size, $3 the level. Rows:
/// (position of the file from 1, bytes): for each file the helper's header (size, mtime),
/// then its compressed chunks, files in the order given; no row for a missing file.
pub fn read_many_zlib(function: &str) -> String {
    format!(
        "SELECT r.i, z.z FROM pg_catalog.unnest($1::pg_catalog.bytea[]) WITH ORDINALITY AS r(p, i) \
         CROSS JOIN LATERAL {function}(r.p, $2::pg_catalog.int8, $3::pg_catalog.int4, \
                                       0::pg_catalog.int8, (-1)::pg_catalog.int8) AS z(z)"
    )
}

/// `--delta` for many small files with one statement: [`COMPARE_BLOCKS`] of each path of $1
/// (raw bytes, `bytea[]`) against its block hashes in $3 (`bytea[]`, the same order), $2 the
/// read size. (`ROWS FROM`: the two-array `unnest` is shorthand for it, and not found as a
/// qualified function.) The rows of [`COMPARE_BLOCKS`], each led by the position of its file (from 1);
/// a file's rows are together, files in the order given.
pub const COMPARE_MANY: &str = compare_blocks!(
    "f.i, ",
    "(SELECT r.i, pg_catalog.convert_from(r.raw, 'SQL_ASCII') AS p, r.h \
        FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.bytea[]), pg_catalog.unnest($3::pg_catalog.bytea[])) \
              WITH ORDINALITY AS r(raw, h, i)) AS f",
    "f.h",
    "c.blk"
);

/// [`READ_PAGE`] by the components of a path that is not valid UTF-8 ($1), offset $2,
/// length $3.
pub const READ_PAGE_BY_NAME: &str = concat!(
    walk_to_raw_path!(),
    "SELECT pg_catalog.pg_read_binary_file(p, $2, $3, true) FROM walk \
      WHERE i = pg_catalog.cardinality($1::pg_catalog.bytea[])"
);

/// One page again, after it failed verification.
pub const READ_PAGE: &str = concat!("SELECT pg_catalog.pg_read_binary_file(", text_path!("$1"), ", $2, $3, true)");

/// One directory's regular files and their sizes (for the WAL loop), plus the position up to
/// which WAL has been written (primary) or received/replayed (standby).
pub fn list_wal(s: &mut Session) -> Result<(Vec<(String, u64)>, Lsn), PgError> {
    const WHAT: &str = "could not list pg_wal";
    // The position first: every segment complete at that position is in the listing that
    // follows unless it was removed.
    let r = s.query_one(
        "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() \
                 THEN greatest(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn()) \
                 ELSE pg_catalog.pg_current_wal_lsn() END)::pg_catalog.text",
        &[],
        "could not read the current WAL position",
    )?;
    let lsn: Option<String> = r.get(0);
    let lsn = lsn.and_then(|l| l.parse().ok()).unwrap_or(Lsn(0));
    // Names as raw bytes: a stray file whose name the client encoding cannot carry must not
    // stop the loop. Only UTF-8 names can be WAL segments or history files.
    let rows = s.query(
        concat!(
            "SELECT ",
            raw_name!("n"),
            ", st.size FROM pg_catalog.pg_ls_dir('pg_wal', true, false) AS n, \
                    pg_catalog.pg_stat_file('pg_wal/' || n, true) AS st \
              WHERE NOT st.isdir"
        ),
        &[],
        WHAT,
    )?;
    // A name that is not UTF-8 is neither a segment nor a history file: skipped.
    let mut files = Vec::new();
    for r in &rows {
        let (name, size) = (r.try_get::<_, Vec<u8>>(0), r.try_get::<_, i64>(1));
        let (name, size) = (name.map_err(|e| PgError::query(WHAT, e))?, size.map_err(|e| PgError::query(WHAT, e))?);
        match String::from_utf8(name) {
            Ok(n) => files.push((n, size.max(0) as u64)),
            Err(e) => log::debug!("pg_wal/{} is not a WAL file: skipped", String::from_utf8_lossy(e.as_bytes())),
        }
    }
    files.sort();
    Ok((files, lsn))
}

/// (block_size, blocks per relation segment).
pub fn page_geometry(s: &mut Session) -> Result<(i64, u32), PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.current_setting('block_size')::bigint, \
                (SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'segment_size')",
        &[],
        "could not read the page geometry",
    )?;
    Ok((r.get(0), r.get::<_, i64>(1) as u32))
}

/// `catalog_version_no`: with the major version it names a tablespace's directory.
pub fn catalog_version(s: &mut Session) -> Result<i32, PgError> {
    let r = s.query_one(
        "SELECT catalog_version_no FROM pg_catalog.pg_control_system()",
        &[],
        "could not read the catalog version",
    )?;
    Ok(r.get(0))
}

/// The cluster's system identifier (for the version 2 manifest).
pub fn system_identifier(s: &mut Session) -> Result<u64, PgError> {
    let r = s.query_one(
        "SELECT system_identifier FROM pg_catalog.pg_control_system()",
        &[],
        "could not read the system identifier",
    )?;
    Ok(r.get::<_, i64>(0) as u64)
}

/// `on` when the cluster has data checksums.
pub fn data_checksums(s: &mut Session) -> Result<bool, PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.current_setting('data_checksums') = 'on'",
        &[],
        "could not read data_checksums",
    )?;
    Ok(r.get(0))
}

pub fn wal_segment_size(s: &mut Session) -> Result<u64, PgError> {
    let r = s.query_one(
        "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size'",
        &[],
        "could not read wal_segment_size",
    )?;
    Ok(r.get::<_, i64>(0) as u64)
}

/// `target_session_attrs=read-write|read-only`: `on` in a read-only session (hot standby, or
/// `default_transaction_read_only`), as libpq asks it. Run before the session's setup, so it
/// is a statement with no function in it.
pub const TRANSACTION_READ_ONLY: &str = "SHOW transaction_read_only";

/// `target_session_attrs=primary|standby|prefer-standby`: true on a server in recovery, as
/// libpq asks a server that does not report `in_hot_standby`.
pub const IN_HOT_STANDBY: &str = "SELECT pg_catalog.pg_is_in_recovery()";

/// The size and mtime (Unix seconds) of one server file (path as raw bytes), `None` if it is
/// not there.
pub fn file_stat(s: &mut Session, path: &[u8], what: &str) -> Result<Option<(u64, i64)>, PgError> {
    let r = s.query_one(
        "SELECT st.size, extract(epoch FROM st.modification)::bigint \
           FROM pg_catalog.pg_stat_file(pg_catalog.convert_from($1, 'SQL_ASCII'), true) AS st",
        &[&path],
        what,
    )?;
    let size: Option<i64> = r.try_get(0).map_err(|e| PgError::query(what, e))?;
    let mtime: Option<i64> = r.try_get(1).map_err(|e| PgError::query(what, e))?;
    Ok(size.map(|z| (z.max(0) as u64, mtime.unwrap_or(0))))
}
