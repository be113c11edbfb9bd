//! Connection settings the libpq way (DSN plus PG* environment) and a session wrapper that
//! logs every SQL statement at debug level.

use std::time::Duration;

use postgres::config::Host;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row, RowIter};

use super::tls::{LibpqTls, SslMode, TlsSettings, TlsSetupError};
use super::{conninfo, describe, PgError};

/// Environment variable through which the master hands the password to its children,
/// so that it never appears on a command line.
pub const PASSWORD_ENV: &str = "PGPASSWORD";

/// Resolved connection settings.
#[derive(Clone)]
pub struct ConnInfo {
    config: Config,
    /// Every setting as libpq keywords, resolved, without the password.
    params: conninfo::Params,
    tls: TlsSettings,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| env("USER"))
        .unwrap_or_else(|| "postgres".into())
}

/// sslrootcert=system (the system's trusted roots) is safe only with the host name checked:
/// verify-full is then the default sslmode and the only one allowed, as in libpq.
fn system_roots_need_verify_full(params: &mut conninfo::Params) -> Result<(), PgError> {
    if params.get("sslrootcert").map(String::as_str) != Some("system") {
        return Ok(());
    }
    match params.get("sslmode").map(String::as_str) {
        None => {
            params.insert("sslmode".into(), "verify-full".into());
            Ok(())
        }
        Some("verify-full") => Ok(()),
        Some(weak) => Err(PgError::BadDsn(format!(
            "weak sslmode \"{weak}\" may not be used with sslrootcert=system (use \"verify-full\")"
        ))),
    }
}

/// Splits one password-file line into its five fields (`\\` escapes `:` and `\\`).
fn passfile_fields(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

/// The password for these settings from `PGPASSFILE` or `~/.pgpass`, as libpq finds it: the
/// first line whose host, port, database and user match (`*` matches anything; a socket
/// directory counts as `localhost`). A file readable by group or others is ignored, with a
/// warning, as libpq does.
pub fn passfile_password(config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = match env("PGPASSFILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => super::tls::home_dir()?.join(".pgpass"),
    };
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let want = [host.as_str(), port.as_str(), config.get_dbname().unwrap_or(""), config.get_user().unwrap_or("")];
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).find_map(|l| {
        let f = passfile_fields(l)?;
        f.iter().zip(want).all(|(have, want)| have == "*" || have == want).then(|| f[4].clone())
    })
}

impl ConnInfo {
    /// Parses a key=value or URI connection string; unset parts come from the environment
    /// (PGHOST, PGHOSTADDR, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGPASSFILE, PGOPTIONS,
    /// PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, PGCONNECT_TIMEOUT), then libpq's defaults.
    pub fn from_dsn(dsn: &str) -> Result<ConnInfo, PgError> {
        let mut params = conninfo::parse(dsn).map_err(PgError::BadDsn)?;
        for (key, var) in [
            ("host", "PGHOST"),
            ("hostaddr", "PGHOSTADDR"),
            ("port", "PGPORT"),
            ("user", "PGUSER"),
            ("dbname", "PGDATABASE"),
            ("options", "PGOPTIONS"),
            ("sslmode", "PGSSLMODE"),
            ("sslrootcert", "PGSSLROOTCERT"),
            ("sslcrl", "PGSSLCRL"),
            ("sslcrldir", "PGSSLCRLDIR"),
            ("sslcert", "PGSSLCERT"),
            ("sslkey", "PGSSLKEY"),
            ("connect_timeout", "PGCONNECT_TIMEOUT"),
            ("application_name", "PGAPPNAME"),
        ] {
            if !params.contains_key(key) {
                if let Some(v) = env(var) {
                    params.insert(key.into(), v);
                }
            }
        }
        if !params.contains_key("host") && !params.contains_key("hostaddr") {
            let sock = ["/var/run/postgresql", "/tmp"].into_iter().find(|d| std::path::Path::new(d).is_dir());
            params.insert("host".into(), sock.unwrap_or("localhost").into());
        }
        params.entry("port".into()).or_insert_with(|| "5432".into());
        let user = params.get("user").cloned().unwrap_or_else(os_user);
        params.insert("user".into(), user.clone());
        params.entry("dbname".into()).or_insert(user);
        params.entry("connect_timeout".into()).or_insert_with(|| "10".into());
        system_roots_need_verify_full(&mut params)?;
        params.entry("sslmode".into()).or_insert_with(|| "prefer".into());

        let bad = |k: &str, v: &str| PgError::BadDsn(format!("invalid value for \"{k}\": \"{v}\""));
        let mut config = Config::new();
        let mut tls = TlsSettings::default();
        for (k, v) in &params {
            match k.as_str() {
                "host" => {
                    for h in v.split(',') {
                        config.host(h);
                    }
                }
                "hostaddr" => {
                    for a in v.split(',') {
                        config.hostaddr(a.parse().map_err(|_| bad(k, a))?);
                    }
                }
                "port" => {
                    for p in v.split(',') {
                        config.port(if p.is_empty() { 5432 } else { p.parse().map_err(|_| bad(k, p))? });
                    }
                }
                "user" => {
                    config.user(v);
                }
                "password" => {
                    config.password(v);
                }
                "dbname" => {
                    config.dbname(v);
                }
                "options" => {
                    config.options(v);
                }
                "connect_timeout" => {
                    let secs: u64 = v.parse().map_err(|_| bad(k, v))?;
                    config.connect_timeout(Duration::from_secs(secs.max(2)));
                }
                "sslmode" => tls.mode = v.parse().map_err(|_| bad(k, v))?,
                "sslrootcert" => tls.root_cert = Some(v.into()),
                "sslcrl" => tls.crl = Some(v.into()),
                "sslcrldir" => tls.crl_dir = Some(v.into()),
                "sslcert" => tls.cert = Some(v.into()),
                "sslkey" => tls.key = Some(v.into()),
                // pgbb names its sessions itself (pgbb, pgbb worker N, ...).
                "application_name" | "fallback_application_name" => {}
                // Handled by pgbb itself (keepalives are always on, see below).
                "keepalives" | "keepalives_idle" | "keepalives_interval" | "keepalives_count" | "tcp_user_timeout" => {}
                "target_session_attrs" | "channel_binding" | "load_balance_hosts" | "sslnegotiation" => {}
                other => return Err(PgError::BadDsn(format!("invalid connection option \"{other}\""))),
            }
        }
        if config.get_password().is_none() {
            if let Some(p) = env(PASSWORD_ENV) {
                config.password(p);
            } else if let Some(p) = passfile_password(&config) {
                config.password(p);
            }
        }
        config.ssl_mode(match tls.mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        // A dead peer must turn into an error, not a hang.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        // Unacknowledged data for 30 s (a request sent into a dead network) is an error too.
        config.tcp_user_timeout(Duration::from_secs(30));
        params.remove("password");
        Ok(ConnInfo { config, params, tls })
    }

    /// The password, if any (handed to children through the environment).
    pub fn password(&self) -> Option<String> {
        self.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// A key=value connection string with everything but the password, for a child's argv.
    pub fn child_dsn(&self) -> String {
        self.params.iter().map(|(k, v)| format!("{k}={}", conninfo::quote_value(v))).collect::<Vec<_>>().join(" ")
    }

    /// The resolved settings (no password), e.g. for `primary_conninfo`.
    pub fn params(&self) -> &conninfo::Params {
        &self.params
    }

    /// Where we connect, for messages (never the password).
    pub fn target(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(s)) => format!("host \"{s}\""),
            Some(Host::Unix(p)) => format!("socket in \"{}\"", p.display()),
            None => "default host".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{host} port {port} as user \"{}\" database \"{}\"",
            self.config.get_user().unwrap_or(""),
            self.config.get_dbname().unwrap_or("")
        )
    }

    /// True when every host is on this machine: a Unix socket, `localhost` or a loopback
    /// address. Compression only costs CPU there (`--compress auto` leaves it off).
    pub fn is_local(&self) -> bool {
        let addrs = self.config.get_hostaddrs();
        if !addrs.is_empty() {
            return addrs.iter().all(|a| a.is_loopback());
        }
        let hosts = self.config.get_hosts();
        !hosts.is_empty()
            && hosts.iter().all(|h| match h {
                Host::Unix(_) => true,
                Host::Tcp(name) => {
                    name.eq_ignore_ascii_case("localhost")
                        || name.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
                }
            })
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
        let connected = if self.tls.mode == SslMode::Disable {
            config.connect(NoTls)
        } else {
            config.connect(LibpqTls::new(self.tls.clone()))
        };
        let client = connected.map_err(|e| self.connect_error(&e))?;
        let mut s = Session {
            client,
            app: app.to_string(),
            prepared: std::collections::HashMap::new(),
            backend_pid: None,
            conn: self.clone(),
        };
        s.setup()?;
        Ok(s)
    }

    /// Whether backend `pid` still exists, asked over a new short-lived session; `None` when
    /// the server cannot be reached within a few seconds.
    fn backend_exists(&self, pid: i32) -> Option<bool> {
        let mut quick = self.clone();
        quick.config.connect_timeout(Duration::from_secs(3));
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

impl ConnInfo {
    /// A failed connection in libpq's words: a TLS failure on this side as its own message
    /// (a lasting one), else the server's or the driver's, with the SQLSTATE when there is one.
    fn connect_error(&self, e: &postgres::Error) -> PgError {
        let tls = std::error::Error::source(e).and_then(|s| s.downcast_ref::<TlsSetupError>());
        match tls {
            Some(t) => PgError::Tls { target: self.target(), message: t.0.clone() },
            None => PgError::Connect {
                target: self.target(),
                message: describe(e),
                code: e.code().map(|c| c.code().to_string()),
            },
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
    prepared: std::collections::HashMap<&'static str, postgres::Statement>,
    /// The server process of this session (to tell, when the connection is lost, whether
    /// the server ended it).
    backend_pid: Option<i32>,
    conn: ConnInfo,
}

impl Session {
    /// [`super::sql::SESSION_SETUP`], and the backend's pid, in one round trip.
    fn setup(&mut self) -> Result<(), PgError> {
        const WHAT: &str = "could not configure the session";
        let sql = format!("{}; {}", super::sql::SESSION_SETUP, super::sql::BACKEND_PID);
        self.log(&sql);
        let msgs = self.client.simple_query(&sql).map_err(|e| PgError::query(WHAT, e))?;
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
        r.map_err(|e| self.explain(e))
    }

    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<Vec<Row>, PgError> {
        self.log(sql);
        self.said_while_idle(what)?;
        let r = self.client.query(sql, params).map_err(|e| PgError::query(what, e));
        r.map_err(|e| self.explain(e))
    }

    pub fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<Row, PgError> {
        self.log(sql);
        self.said_while_idle(what)?;
        let r = self.client.query_one(sql, params).map_err(|e| PgError::query(what, e));
        r.map_err(|e| self.explain(e))
    }

    /// Runs a query whose rows are streamed as the server produces them; the statement is
    /// prepared on first use and kept for the session.
    pub fn stream<'a>(
        &'a mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<RowIter<'a>, PgError> {
        self.log(sql);
        self.said_while_idle(what)?;
        let stmt = match self.prepared.get(sql) {
            Some(st) => st.clone(),
            None => {
                let st = self.client.prepare(sql).map_err(|e| PgError::query(what, e))?;
                self.prepared.insert(sql, st.clone());
                st
            }
        };
        self.client.query_raw(&stmt, params.iter().copied()).map_err(|e| PgError::query(what, e))
    }

    /// A token that cancels this session's running statement from another thread.
    pub fn cancel_token(&self) -> postgres::CancelToken {
        self.client.cancel_token()
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
        assert_eq!(again.config.get_ports(), &[5433]);
        let uri = ConnInfo::from_dsn("postgresql://al:pw@localhost:6000/db1").unwrap();
        assert!(!uri.child_dsn().contains("pw"));
        assert_eq!(uri.password().as_deref(), Some("pw"));
        assert!(ConnInfo::from_dsn("host='unterminated").is_err());
    }

    #[test]
    fn password_file() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("pass");
        std::fs::write(&f, "# comment\nother:*:*:*:no\nlocalhost:5433:*:bob:pa\\:ss\n*:*:*:*:fallback\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::env::set_var("PGPASSFILE", &f);
        let mut c = <Config as std::str::FromStr>::from_str("host=/tmp port=5433 user=bob dbname=x").unwrap();
        assert_eq!(passfile_password(&c).as_deref(), Some("pa:ss"));
        c.user("alice");
        assert_eq!(passfile_password(&c).as_deref(), Some("fallback"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(passfile_password(&c), None, "a world-readable file is ignored");
        std::env::remove_var("PGPASSFILE");
        assert_eq!(passfile_fields("a:b:c:d:e\\\\f").unwrap()[4], "e\\f");
        assert!(passfile_fields("a:b:c").is_none());
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
