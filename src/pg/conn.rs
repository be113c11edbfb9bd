//! Connection settings the libpq way (a DSN plus the PG* environment, see [`super::settings`])
//! and the server they lead to (see [`super::hosts`]), and a session wrapper that logs every
//! SQL statement at debug level.

use std::sync::{Arc, OnceLock};

use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row, RowIter};

use super::hosts::{self, Endpoint, TargetAttrs};
use super::settings;
use super::tls::{LibpqTls, SslMode, TlsSettings, TlsSetupError};
use super::{conninfo, describe, PgError};

/// Environment variable through which the master hands the password to its children,
/// so that it never appears on a command line.
pub const PASSWORD_ENV: &str = "PGPASSWORD";

/// Resolved connection settings.
#[derive(Clone)]
pub struct ConnInfo {
    /// The driver's settings without hosts, ports, or a password from the password file.
    config: Config,
    /// Every setting as libpq keywords, resolved, without the password.
    params: conninfo::Params,
    tls: TlsSettings,
    endpoints: Vec<Endpoint>,
    target: TargetAttrs,
    random_order: bool,
    /// The password file's password for each endpoint (libpq looks one up per host), when
    /// no password was given.
    file_passwords: Vec<Option<String>>,
    /// The endpoint the first connection went to: every later one goes there too, and so do
    /// the children (a backup must come from one server). Shared by clones.
    chosen: Arc<OnceLock<usize>>,
}

impl ConnInfo {
    /// Parses a key=value or URI connection string; unset parts come from the environment
    /// (see `settings::complete`), then libpq's defaults.
    pub fn from_dsn(dsn: &str) -> Result<ConnInfo, PgError> {
        let mut params = conninfo::parse(dsn).map_err(PgError::BadDsn)?;
        settings::complete(&mut params)?;
        let endpoints = hosts::endpoints(params.get("host"), params.get("hostaddr"), params.get("port"))
            .map_err(PgError::BadDsn)?;
        let s = settings::from_params(&params)?;
        let mut config = s.config;
        if let Some(p) = params.get("password") {
            config.password(p);
        } else if let Some(p) = settings::env(PASSWORD_ENV)? {
            config.password(p);
        }
        let file_passwords = match settings::passfile_path(&params).filter(|_| config.get_password().is_none()) {
            Some(file) => endpoints
                .iter()
                .map(|e| {
                    let port = e.port.to_string();
                    let (db, user) = (config.get_dbname().unwrap_or(""), config.get_user().unwrap_or(""));
                    settings::passfile_password(&file, [&e.passfile_host(), &port, db, user])
                })
                .collect(),
            None => vec![None; endpoints.len()],
        };
        params.remove("password");
        Ok(ConnInfo {
            config,
            params,
            tls: s.tls,
            endpoints,
            target: s.target,
            random_order: s.random_order,
            file_passwords,
            chosen: Arc::new(OnceLock::new()),
        })
    }

    /// The endpoint connections go to: the chosen one, else (before the first) the first.
    fn endpoint(&self) -> (usize, &Endpoint) {
        let i = self.chosen.get().copied().unwrap_or(0);
        (i, &self.endpoints[i])
    }

    /// The password, if any: the one given, else the password file's for the server of this
    /// run (handed to children through the environment).
    pub fn password(&self) -> Option<String> {
        match self.config.get_password() {
            Some(p) => Some(String::from_utf8_lossy(p).into_owned()),
            None => self.file_passwords[self.endpoint().0].clone(),
        }
    }

    /// The password file, when the password came from it (`-R` names the file, as
    /// pg_basebackup does, rather than copying the password out of it).
    pub fn passfile_used(&self) -> Option<String> {
        self.file_passwords[self.endpoint().0].as_ref()?;
        settings::passfile_path(&self.params).map(|p| p.display().to_string())
    }

    /// The password given in the DSN or PGPASSWORD.
    pub fn password_given(&self) -> Option<String> {
        self.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// A key=value connection string with everything but the password, for a child's argv.
    /// Once a server is chosen it names that host only: the children must reach the same
    /// server, whatever the host list and target_session_attrs would pick now.
    pub fn child_dsn(&self) -> String {
        let mut p = self.params.clone();
        if let Some(&i) = self.chosen.get() {
            let e = &self.endpoints[i];
            for k in ["host", "hostaddr", "target_session_attrs", "load_balance_hosts"] {
                p.remove(k);
            }
            if let Some(h) = &e.host {
                p.insert("host".into(), h.clone());
            }
            if let Some(a) = e.hostaddr {
                p.insert("hostaddr".into(), a.to_string());
            }
            p.insert("port".into(), e.port.to_string());
        }
        p.iter().map(|(k, v)| format!("{k}={}", conninfo::quote_value(v))).collect::<Vec<_>>().join(" ")
    }

    /// The resolved settings as given (no password), e.g. for `primary_conninfo`.
    pub fn params(&self) -> &conninfo::Params {
        &self.params
    }

    /// Where we connect, for messages (never the password).
    pub fn target(&self) -> String {
        self.target_at(self.endpoint().1)
    }

    fn target_at(&self, e: &Endpoint) -> String {
        format!("{} as user \"{}\" database \"{}\"", e.describe(), self.user(), self.dbname())
    }

    /// True when the server is on this machine (every host of the list, until one is
    /// chosen): a Unix socket, `localhost` or a loopback address. Compression only costs
    /// CPU there (`--compress auto` leaves it off).
    pub fn is_local(&self) -> bool {
        match self.chosen.get() {
            Some(&i) => self.endpoints[i].is_local(),
            None => self.endpoints.iter().all(Endpoint::is_local),
        }
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("")
    }

    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("")
    }

    /// Opens a session named `app` in pg_stat_activity, with a safe `search_path` from its
    /// first statement on (see `startup_options`) and every timeout that could cut a long
    /// backup turned off.
    pub fn connect(&self, app: &str) -> Result<Session, PgError> {
        let mut config = self.config.clone();
        config.application_name(app);
        config.options(&startup_options(self.config.get_options()));
        log::debug!("connecting to {} as {app:?}", self.target());
        let client = self.open(&config)?;
        let mut s = Session {
            client,
            app: app.to_string(),
            prepared: std::collections::HashMap::new(),
            backend_pid: None,
            conn: self.clone(),
            finished: Default::default(),
        };
        s.setup()?;
        Ok(s)
    }

    /// What cancels a statement of a session of these settings: its token, sent over TLS
    /// when the settings allow TLS (as the session itself was), in the clear otherwise.
    pub fn canceller(&self, s: &Session) -> Canceller {
        let tls = (self.tls.mode != SslMode::Disable).then(|| LibpqTls::new(self.tls.clone()));
        Canceller { token: s.client.cancel_token(), tls, finished: s.finished.clone() }
    }
}

impl ConnInfo {
    /// The client for a new session: to the run's server, or, for the first connection,
    /// to the first host (in libpq's order) that accepts it and fits target_session_attrs
    /// (`prefer-standby`: a standby if any host is one) — that one becomes the run's server.
    fn open(&self, config: &Config) -> Result<Client, PgError> {
        if let Some(&i) = self.chosen.get() {
            return self.open_at(config, i, TargetAttrs::Any);
        }
        let order = hosts::order(self.endpoints.len(), self.random_order);
        let mut failed = Vec::new();
        for &want in self.target.passes() {
            for &i in &order {
                match self.open_at(config, i, want) {
                    Ok(c) => {
                        let _ = self.chosen.set(i);
                        return Ok(c);
                    }
                    Err(e) => failed.push(e),
                }
            }
        }
        Err(all_failed(failed))
    }

    fn open_at(&self, base: &Config, i: usize, want: TargetAttrs) -> Result<Client, PgError> {
        let e = &self.endpoints[i];
        let mut config = base.clone();
        e.apply(&mut config);
        if let (None, Some(p)) = (config.get_password(), &self.file_passwords[i]) {
            config.password(p);
        }
        let connected = if self.tls.mode == SslMode::Disable {
            config.connect(NoTls)
        } else {
            config.connect(LibpqTls::new(self.tls.clone()))
        };
        let mut client = connected.map_err(|err| self.connect_error(e, &err))?;
        match hosts::check(&mut client, want) {
            Ok(None) => Ok(client),
            Ok(Some(why)) => Err(PgError::Connect { target: self.target_at(e), message: why.into(), code: None }),
            Err(err) => Err(self.connect_error(e, &err)),
        }
    }

    /// A failed connection in libpq's words: a TLS failure on this side or a channel
    /// binding the server did not do as its own message (a lasting one), else the server's
    /// or the driver's, with the SQLSTATE when there is one.
    fn connect_error(&self, at: &Endpoint, e: &postgres::Error) -> PgError {
        let target = self.target_at(at);
        if let Some(t) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<TlsSetupError>()) {
            return PgError::Tls { target, message: t.0.clone() };
        }
        let message = describe(e);
        if message.contains("server did not use channel binding") {
            let why =
                if self.tls.mode == SslMode::Disable { " (sslmode=disable: without TLS there is none)" } else { "" };
            let message = format!("channel binding required but not supported by server's authentication request{why}");
            return PgError::Tls { target, message };
        }
        PgError::Connect { target, message, code: e.code().cloned() }
    }

    /// Whether backend `pid` still exists, asked over a new short-lived session; `None` when
    /// the server cannot be reached within a few seconds.
    fn backend_exists(&self, pid: i32) -> Option<bool> {
        let mut quick = self.clone();
        quick.config.connect_timeout(std::time::Duration::from_secs(3));
        let mut s = quick.connect("pgbb probe").ok()?;
        // A probe explains nothing itself.
        s.backend_pid = None;
        super::sql::backend_exists(&mut s, pid).ok()
    }
}

/// Appended to the startup `options` of every session: a hostile role may plant look-alikes
/// of catalog functions in a schema it can write and put that schema first with `ALTER
/// DATABASE/ROLE ... SET search_path` (the CVE-2018-1058 class). Options in the startup packet
/// outrank those settings, and the server applies options in order, so the user's own
/// `options` (which come first) cannot override this either. `pg_temp` last: temporary objects
/// never shadow catalog ones, and functions are never looked up there anyway.
const SAFE_SEARCH_PATH: &str = "-c search_path=pg_catalog,pg_temp";

/// The user's `options` (from the DSN or PGOPTIONS), then [`SAFE_SEARCH_PATH`].
fn startup_options(user: Option<&str>) -> String {
    match user.map(str::trim).filter(|o| !o.is_empty()) {
        // A trailing backslash would escape the separating space and swallow ours.
        Some(o) if o.ends_with('\\') => format!("{o}  {SAFE_SEARCH_PATH}"),
        Some(o) => format!("{o} {SAFE_SEARCH_PATH}"),
        None => SAFE_SEARCH_PATH.to_string(),
    }
}

/// One error for a connection that failed on every host: the only one as it is, else each
/// host's reason (as libpq lists them), lasting only when every reason is.
fn all_failed(mut failed: Vec<PgError>) -> PgError {
    if failed.len() == 1 {
        return failed.remove(0);
    }
    let lasting = failed.iter().all(|e| matches!(e, PgError::Tls { .. }));
    let message = failed
        .iter()
        .map(|e| match e {
            PgError::Connect { target, message, .. } | PgError::Tls { target, message } => {
                format!("{target}: {message}")
            }
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let target = format!("any of the {} hosts", failed.len());
    if lasting {
        return PgError::Tls { target, message };
    }
    let code = failed.iter().rev().find_map(|e| match e {
        PgError::Connect { code, .. } => code.clone(),
        _ => None,
    });
    PgError::Connect { target, message, code }
}

/// Cancels the running statement of one session from another thread (see
/// [`ConnInfo::canceller`]).
#[derive(Clone)]
pub struct Canceller {
    token: postgres::CancelToken,
    tls: Option<LibpqTls>,
    /// The session's count of statements that have returned (see [`Canceller::finished`]).
    finished: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Canceller {
    /// How many statements of the session have returned so far. A cancel request that
    /// reaches the server while the session is between statements (or between a statement's
    /// Parse and its Execute) is dropped by the server; while this count has not moved, the
    /// statement the cancel was meant for has not returned, and the request can be sent again.
    pub fn finished(&self) -> u64 {
        self.finished.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn cancel(&self) -> Result<(), postgres::Error> {
        match &self.tls {
            Some(t) => self.token.cancel_query(t.clone()),
            None => self.token.cancel_query(NoTls),
        }
    }
}

/// One open connection. Every statement goes through here, so `-d` shows all SQL.
pub struct Session {
    client: Client,
    app: String,
    /// Statements prepared once per session for [`Session::stream`]: a file then costs one
    /// round trip (Bind/Execute) instead of two (Parse/Describe first), and the server plans
    /// it once (measured: the per-file cost that dominates a cluster of many small files).
    prepared: std::collections::HashMap<String, postgres::Statement>,
    /// The server process of this session (to tell, when the connection is lost, whether
    /// the server ended it).
    backend_pid: Option<i32>,
    conn: ConnInfo,
    /// Statements that have returned, for [`Canceller::finished`].
    finished: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Session {
    /// `r`, counted as a statement that returned.
    fn returned<T>(&self, r: T) -> T {
        self.finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        r
    }

    /// [`super::sql::SESSION_SETUP`], and the backend's pid, in one round trip.
    fn setup(&mut self) -> Result<(), PgError> {
        const WHAT: &str = "could not configure the session";
        let sql = format!("{}; {}", super::sql::SESSION_SETUP, super::sql::BACKEND_PID);
        self.log(&sql);
        let r = self.client.simple_query(&sql);
        let msgs = self.returned(r).map_err(|e| PgError::query(WHAT, e))?;
        self.backend_pid = msgs.iter().find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        });
        Ok(())
    }

    /// `e` with its cause when the connection was lost without the server's words (it drops
    /// them when it ends a session in the middle of sending a row): a backend that is gone
    /// while the server is up, asked over a new session, was ended by the server. A timeout
    /// is the network's doing and is left as it is.
    pub fn explain(&self, e: PgError) -> PgError {
        match e {
            PgError::Query { what, message, closed: true, code: None } if !message.contains("timed out") => {
                let gone = self.backend_pid.filter(|&pid| self.conn.backend_exists(pid) == Some(false));
                let message = match gone {
                    Some(pid) => format!(
                        "the server ended this session (its backend, pid {pid}, is gone): an administrator or \
                         another pgbb --clean terminated it, or it crashed; {message}"
                    ),
                    None => message,
                };
                PgError::Query { what, message, closed: true, code: None }
            }
            other => other,
        }
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    fn log(&self, sql: &str) {
        log::debug!("SQL: {}", sql.split_whitespace().collect::<Vec<_>>().join(" "));
    }

    /// What the server said while the session was idle, as the error of the statement about
    /// to be sent. When the server ends a session (`pg_terminate_backend`, a shutdown) it
    /// sends the reason and closes the socket; unread, the next statement would fail with a
    /// bare "broken pipe" instead of that reason.
    fn said_while_idle(&mut self, what: &str) -> Result<(), PgError> {
        use postgres::fallible_iterator::FallibleIterator;
        match self.client.notifications().iter().next() {
            Err(e) if e.as_db_error().is_some() => Err(PgError::query(what, e)),
            _ => Ok(()),
        }
    }

    pub fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<(), PgError> {
        self.log(sql);
        self.said_while_idle(what)?;
        let r = if params.is_empty() {
            self.client.batch_execute(sql).map_err(|e| PgError::query(what, e))
        } else {
            self.client.execute(sql, params).map(drop).map_err(|e| PgError::query(what, e))
        };
        self.returned(r).map_err(|e| self.explain(e))
    }

    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<Vec<Row>, PgError> {
        self.log(sql);
        self.said_while_idle(what)?;
        let r = self.client.query(sql, params).map_err(|e| PgError::query(what, e));
        self.returned(r).map_err(|e| self.explain(e))
    }

    pub fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<Row, PgError> {
        self.log(sql);
        self.said_while_idle(what)?;
        let r = self.client.query_one(sql, params).map_err(|e| PgError::query(what, e));
        self.returned(r).map_err(|e| self.explain(e))
    }

    /// Runs a query whose rows are streamed as the server produces them; the statement is
    /// prepared on first use and kept for the session.
    pub fn stream<'a>(
        &'a mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<RowIter<'a>, PgError> {
        self.log(sql);
        self.said_while_idle(what)?;
        let stmt = match self.prepared.get(sql) {
            Some(st) => st.clone(),
            None => {
                let st = self.client.prepare(sql).map_err(|e| PgError::query(what, e))?;
                self.prepared.insert(sql.to_string(), st.clone());
                st
            }
        };
        let r = self.client.query_raw(&stmt, params.iter().copied()).map_err(|e| PgError::query(what, e));
        self.finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        r
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_dsn_has_no_password() {
        let c = ConnInfo::from_dsn("host=/tmp/x port=5433 user=bob password=s3cret dbname=d").unwrap();
        let dsn = c.child_dsn();
        assert!(!dsn.contains("s3cret"), "{dsn}");
        assert_eq!(c.password().as_deref(), Some("s3cret"));
        let again = ConnInfo::from_dsn(&dsn).unwrap();
        assert_eq!(again.user(), "bob");
        assert_eq!(again.dbname(), "d");
        assert_eq!(again.endpoints[0].port, 5433);
        let uri = ConnInfo::from_dsn("postgresql://al:pw@localhost:6000/db1").unwrap();
        assert!(!uri.child_dsn().contains("pw"));
        assert_eq!(uri.password().as_deref(), Some("pw"));
        assert!(ConnInfo::from_dsn("host='unterminated").is_err());
    }

    #[test]
    fn connect_timeout_zero_waits_for_ever_as_in_libpq() {
        use std::time::Duration;
        let t = |dsn: &str| ConnInfo::from_dsn(dsn).unwrap().config.get_connect_timeout().copied();
        assert_eq!(t("host=/tmp connect_timeout=0"), None);
        assert_eq!(t("host=/tmp connect_timeout=-1"), None);
        assert_eq!(t("host=/tmp connect_timeout=1"), Some(Duration::from_secs(2)));
        assert_eq!(t("host=/tmp connect_timeout=30"), Some(Duration::from_secs(30)));
        assert_eq!(t("host=/tmp"), Some(Duration::from_secs(10)), "pgbb's documented default");
        assert!(!ConnInfo::from_dsn("host=/tmp").unwrap().child_dsn().contains("connect_timeout"));
    }

    #[test]
    fn children_follow_the_chosen_server() {
        let c = ConnInfo::from_dsn(
            "host=a,b hostaddr=10.0.0.1,10.0.0.2 port=1,2 user=u dbname=d target_session_attrs=primary \
             load_balance_hosts=random",
        )
        .unwrap();
        assert!(c.child_dsn().contains("host=a,b"), "{}", c.child_dsn());
        assert!(!c.is_local());
        c.chosen.set(1).unwrap();
        let d = c.child_dsn();
        assert!(d.contains("host=b ") && d.contains("hostaddr=10.0.0.2 ") && d.contains("port=2 "), "{d}");
        assert!(!d.contains("target_session_attrs") && !d.contains("load_balance_hosts"), "{d}");
        assert_eq!(c.clone().child_dsn(), d, "clones share the choice");
        assert_eq!(c.target(), "host \"b\" (10.0.0.2) port 2 as user \"u\" database \"d\"");
        assert_eq!(ConnInfo::from_dsn(&d).unwrap().endpoints.len(), 1);
    }

    #[test]
    fn system_roots_need_verify_full() {
        let c = ConnInfo::from_dsn("host=db sslrootcert=system").unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert!(c.child_dsn().contains("sslmode=verify-full"), "children get the same mode");
        assert!(ConnInfo::from_dsn("host=db sslrootcert=system sslmode=verify-full").is_ok());
        let weak = ConnInfo::from_dsn("host=db sslrootcert=system sslmode=verify-ca").err().unwrap();
        assert!(weak.to_string().contains("weak sslmode \"verify-ca\" may not be used with sslrootcert=system"));
    }

    #[test]
    fn local_servers() {
        let local = |dsn: &str| ConnInfo::from_dsn(dsn).unwrap().is_local();
        assert!(local("host=/tmp/x"));
        assert!(local("host=localhost"));
        assert!(local("host=127.0.0.5"));
        assert!(local("host=::1"));
        assert!(local("host=db.example hostaddr=127.0.0.1"));
        assert!(!local("host=10.251.0.2"));
        assert!(!local("host=db.example"));
        assert!(!local("host=/tmp/x,db.example"));
        assert!(!local("host=localhost hostaddr=192.0.2.1"));
    }

    #[test]
    fn the_safe_search_path_comes_last() {
        assert_eq!(startup_options(None), "-c search_path=pg_catalog,pg_temp");
        assert_eq!(startup_options(Some("  ")), "-c search_path=pg_catalog,pg_temp");
        assert_eq!(
            startup_options(Some("-c search_path=public -c work_mem=64MB")),
            "-c search_path=public -c work_mem=64MB -c search_path=pg_catalog,pg_temp"
        );
        assert_eq!(startup_options(Some("-c x=a\\")), "-c x=a\\  -c search_path=pg_catalog,pg_temp");
        let c = ConnInfo::from_dsn("host=/tmp/x options='-c search_path=public'").unwrap();
        assert!(!c.child_dsn().contains("pg_catalog"), "children add it themselves: {}", c.child_dsn());
    }

    #[test]
    fn quoting() {
        assert_eq!(conninfo::quote_value("a b'c\\"), "'a b\\'c\\\\'");
        assert_eq!(conninfo::quote_value("plain"), "plain");
        assert_eq!(conninfo::quote_value(""), "''");
    }
}
