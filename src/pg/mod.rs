//! Everything that talks to PostgreSQL: connections, server capabilities, and the SQL itself.

pub mod caps;
pub mod conn;
pub mod conninfo;
pub mod hosts;
pub mod raw;
pub mod run;
pub mod settings;
pub mod sql;
pub mod sql_dest;
pub mod sql_helper;
pub mod sql_incr;
pub mod tls;

pub use caps::Caps;
pub use conn::{ConnInfo, Session};
pub use postgres::error::SqlState;

/// The groups of SQLSTATEs pgbb tells apart by their leading characters. The only place a
/// code is read as text: everywhere else codes are [`SqlState`] constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlClass {
    /// Class 08, connection exception: the connection failed or broke.
    ConnectionException,
    /// Class 28, invalid authorization specification: authentication failed.
    InvalidAuthorization,
    /// 57P01–57P05 (of class 57, operator intervention): the server ended the session or
    /// refuses it for now (shutdown, crash, starting up, database dropped, idle timeout).
    ServerEndedSession,
}

impl SqlClass {
    pub fn of(code: &SqlState) -> Option<SqlClass> {
        let c = code.code();
        if c.starts_with("08") {
            Some(SqlClass::ConnectionException)
        } else if c.starts_with("28") {
            Some(SqlClass::InvalidAuthorization)
        } else if c.starts_with("57P") {
            Some(SqlClass::ServerEndedSession)
        } else {
            None
        }
    }
}

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid connection string: {0}")]
    BadDsn(String),
    /// A PG* environment variable pgbb reads cannot be used (not UTF-8).
    #[error("{0}")]
    BadEnv(String),
    #[error("could not connect to {target}: {message}")]
    Connect { target: String, message: String, code: Option<SqlState> },
    /// The TLS settings on this side cannot work (a key file others can read, a certificate
    /// without its key, a server certificate that fails verification): a connection failure,
    /// as libpq reports it, that retrying will not heal.
    #[error("could not connect to {target}: {message}")]
    Tls { target: String, message: String },
    #[error("{what}: {message}")]
    Query { what: String, message: String, closed: bool, code: Option<SqlState> },
    #[error("server version {0} is not supported: pgbb needs PostgreSQL 13 or later")]
    TooOld(String),
    #[error("wal_level is \"{0}\" on the server; a base backup needs wal_level = replica (or logical): set it in postgresql.conf and restart the server")]
    WalLevel(String),
    #[error("role \"{role}\" lacks privileges pgbb needs; as a superuser, in database \"{db}\", run:\n{grants}")]
    Privileges { role: String, db: String, grants: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("the compression helper is not available: {0}\n(install plpython3u in this database and connect as a superuser, or have a superuser run `pgbb --install-helper` on the primary once and grant its use, or use --compress=none)")]
    Compression(String),
}

impl PgError {
    /// Wraps a driver error from a statement, keeping the server's words.
    pub fn query(what: impl Into<String>, e: postgres::Error) -> PgError {
        let code = e.code().cloned();
        PgError::Query {
            what: what.into(),
            message: describe(&e),
            closed: e.is_closed() || e.as_db_error().is_none(),
            code,
        }
    }

    /// True when the connection itself is gone (as opposed to one statement failing).
    pub fn connection_lost(&self) -> bool {
        match self {
            PgError::Query { closed, .. } => {
                *closed || matches!(self.class(), Some(SqlClass::ServerEndedSession | SqlClass::ConnectionException))
            }
            PgError::Connect { .. } | PgError::Tls { .. } => true,
            _ => false,
        }
    }

    /// True when a new connection may succeed later: the server restarting or shutting down,
    /// a network cut, too many connections. False for what waiting will not heal: failed
    /// authentication, a role or database that does not exist, missing privileges, TLS
    /// settings, and every error that is not about the connection.
    pub fn may_heal(&self) -> bool {
        let lasting = self.class() == Some(SqlClass::InvalidAuthorization)
            || matches!(self.code(), Some(&SqlState::INVALID_CATALOG_NAME | &SqlState::INSUFFICIENT_PRIVILEGE));
        match self {
            PgError::Connect { .. } => !lasting,
            PgError::Query { .. } => self.connection_lost() && !lasting,
            _ => false,
        }
    }

    /// The SQLSTATE of a failed statement or connection.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgError::Query { code, .. } | PgError::Connect { code, .. } => code.as_ref(),
            _ => None,
        }
    }

    /// The group of its SQLSTATE, when pgbb tells that group apart.
    pub fn class(&self) -> Option<SqlClass> {
        self.code().and_then(SqlClass::of)
    }
}

/// The server's message (with detail and hint) or the driver's, in one line.
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = db.message().to_string();
        if db.code() == &postgres::error::SqlState::ADMIN_SHUTDOWN {
            // The same words for pg_terminate_backend and for a shutdown.
            s.push_str(" (the server ended this session: an administrator or another pgbb --clean terminated it, or the server is shutting down)");
        }
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    if e.is_closed() || s.starts_with("error communicating with the server") {
        // The server went away mid-statement (terminated backend, shutdown, network).
        s = format!("the server closed the connection unexpectedly ({s}");
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s.push_str(&format!(": {inner}"));
            src = inner.source();
        }
        s.push(')');
        return s;
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(&format!(": {t}"));
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_reconnection_can_heal() {
        let connect = |code: Option<&str>| PgError::Connect {
            target: "t".into(),
            message: "m".into(),
            code: code.map(SqlState::from_code),
        };
        let query = |code: Option<&str>, closed| PgError::Query {
            what: "w".into(),
            message: "m".into(),
            closed,
            code: code.map(SqlState::from_code),
        };
        assert!(connect(None).may_heal(), "refused, unreachable");
        assert!(connect(Some("57P03")).may_heal(), "the server is starting up");
        assert!(connect(Some("53300")).may_heal(), "too many connections");
        for lasting in ["28P01", "28000", "3D000", "42501"] {
            assert!(!connect(Some(lasting)).may_heal(), "{lasting}");
        }
        assert!(query(Some("57P01"), false).may_heal(), "terminated by a shutdown");
        assert!(query(None, true).may_heal(), "connection closed");
        assert!(!query(Some("42P01"), false).may_heal(), "a failed statement");
        assert!(!PgError::Tls { target: "t".into(), message: "m".into() }.may_heal());
        assert!(!PgError::Unsupported("x".into()).may_heal());
    }
}
