//! Connection settings the libpq way (DSN plus PG* environment) and a session wrapper that
//! logs every SQL statement at debug level.

use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row, RowIter};

use super::{describe, PgError};

/// Environment variable through which the master hands the password to its children,
/// so that it never appears on a command line.
pub const PASSWORD_ENV: &str = "PGPASSWORD";

/// Resolved connection settings.
#[derive(Clone)]
pub struct ConnInfo {
    config: Config,
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

fn quote(v: &str) -> String {
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
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
        None => std::path::PathBuf::from(env("HOME")?).join(".pgpass"),
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
    /// Parses a key=value or URI connection string; unset parts come from PGHOST, PGPORT,
    /// PGUSER, PGDATABASE, PGPASSWORD and PGCONNECT_TIMEOUT, then libpq's defaults.
    pub fn from_dsn(dsn: &str) -> Result<ConnInfo, PgError> {
        let mut config = if dsn.trim().is_empty() {
            Config::new()
        } else {
            Config::from_str(dsn).map_err(|e| PgError::BadDsn(describe(&e)))?
        };
        if config.get_hosts().is_empty() {
            match env("PGHOST") {
                Some(h) => {
                    for h in h.split(',') {
                        config.host(h);
                    }
                }
                None => {
                    let sock = ["/var/run/postgresql", "/tmp"].into_iter().find(|d| std::path::Path::new(d).is_dir());
                    config.host(sock.unwrap_or("localhost"));
                }
            }
        }
        if config.get_ports().is_empty() {
            let port = match env("PGPORT") {
                Some(p) => p.parse::<u16>().map_err(|_| PgError::BadDsn(format!("invalid PGPORT {p:?}")))?,
                None => 5432,
            };
            config.port(port);
        }
        if config.get_user().is_none() {
            config.user(&env("PGUSER").unwrap_or_else(os_user));
        }
        if config.get_dbname().is_none() {
            let db = env("PGDATABASE").unwrap_or_else(|| config.get_user().unwrap_or("postgres").to_string());
            config.dbname(&db);
        }
        if config.get_password().is_none() {
            if let Some(p) = env(PASSWORD_ENV) {
                config.password(p);
            } else if let Some(p) = passfile_password(&config) {
                config.password(p);
            }
        }
        if config.get_connect_timeout().is_none() {
            let secs = match env("PGCONNECT_TIMEOUT") {
                Some(t) => t.parse::<u64>().map_err(|_| PgError::BadDsn(format!("invalid PGCONNECT_TIMEOUT {t:?}")))?,
                None => 10,
            };
            config.connect_timeout(Duration::from_secs(secs.max(2)));
        }
        // A dead peer must turn into an error, not a hang.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        // Unacknowledged data for 30 s (a request sent into a dead network) is an error too.
        config.tcp_user_timeout(Duration::from_secs(30));
        Ok(ConnInfo { config })
    }

    /// The password, if any (handed to children through the environment).
    pub fn password(&self) -> Option<String> {
        self.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// A key=value connection string with everything but the password, for a child's argv.
    pub fn child_dsn(&self) -> String {
        let mut parts = Vec::new();
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.to_string_lossy().into_owned(),
            })
            .collect();
        parts.push(format!("host={}", quote(&hosts.join(","))));
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        parts.push(format!("port={}", quote(&ports.join(","))));
        if let Some(u) = self.config.get_user() {
            parts.push(format!("user={}", quote(u)));
        }
        if let Some(d) = self.config.get_dbname() {
            parts.push(format!("dbname={}", quote(d)));
        }
        if let Some(o) = self.config.get_options() {
            parts.push(format!("options={}", quote(o)));
        }
        if let Some(t) = self.config.get_connect_timeout() {
            parts.push(format!("connect_timeout={}", t.as_secs()));
        }
        parts.join(" ")
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

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("")
    }

    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("")
    }

    /// Opens a session named `app` in pg_stat_activity, with every timeout that could cut a
    /// long backup turned off.
    pub fn connect(&self, app: &str) -> Result<Session, PgError> {
        let mut config = self.config.clone();
        config.application_name(app);
        log::debug!("connecting to {} as {app:?}", self.target());
        let client =
            config.connect(NoTls).map_err(|e| PgError::Connect { target: self.target(), message: describe(&e) })?;
        let mut s = Session { client, app: app.to_string() };
        s.execute(super::sql::SESSION_SETUP, &[], "could not configure the session")?;
        Ok(s)
    }
}

/// One open connection. Every statement goes through here, so `-d` shows all SQL.
pub struct Session {
    client: Client,
    app: String,
}

impl Session {
    pub fn app(&self) -> &str {
        &self.app
    }

    fn log(&self, sql: &str) {
        log::debug!("SQL: {}", sql.split_whitespace().collect::<Vec<_>>().join(" "));
    }

    pub fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<(), PgError> {
        self.log(sql);
        if params.is_empty() {
            self.client.batch_execute(sql).map_err(|e| PgError::query(what, e))
        } else {
            self.client.execute(sql, params).map(drop).map_err(|e| PgError::query(what, e))
        }
    }

    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<Vec<Row>, PgError> {
        self.log(sql);
        self.client.query(sql, params).map_err(|e| PgError::query(what, e))
    }

    pub fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<Row, PgError> {
        self.log(sql);
        self.client.query_one(sql, params).map_err(|e| PgError::query(what, e))
    }

    /// Runs a query whose rows are streamed as the server produces them.
    pub fn stream<'a>(
        &'a mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<RowIter<'a>, PgError> {
        self.log(sql);
        self.client.query_raw(sql, params.iter().copied()).map_err(|e| PgError::query(what, e))
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
        let mut c = Config::from_str("host=/tmp port=5433 user=bob dbname=x").unwrap();
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
    fn quoting() {
        assert_eq!(quote("a b'c\\"), "'a b\\'c\\\\'");
    }
}
