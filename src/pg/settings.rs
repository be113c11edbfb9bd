//! libpq's keywords and PG* environment variables turned into the driver's settings. Every
//! keyword pgbb accepts is honoured or refused with libpq's words, never ignored; a PG*
//! variable pgbb reads that is not valid UTF-8 is refused, not skipped.

use std::time::Duration;

use postgres::config::{ChannelBinding, SslNegotiation};
use postgres::Config;

use super::conninfo::Params;
use super::hosts::{self, TargetAttrs};
use super::tls::{SslMode, TlsSettings};
use super::PgError;

/// The keywords pgbb takes from the environment when the DSN does not set them, and their
/// variables (libpq's names).
const ENV_VARS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("dbname", "PGDATABASE"),
    ("passfile", "PGPASSFILE"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("sslmode", "PGSSLMODE"),
    ("sslnegotiation", "PGSSLNEGOTIATION"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcrl", "PGSSLCRL"),
    ("sslcrldir", "PGSSLCRLDIR"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
];

/// Every keyword pgbb accepts (see [`from_params`]).
pub const KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "passfile",
    "dbname",
    "options",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "channel_binding",
    "target_session_attrs",
    "load_balance_hosts",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslcert",
    "sslkey",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
];

/// `connect_timeout` when neither the DSN nor PGCONNECT_TIMEOUT sets it: pgbb's documented
/// default (libpq's is to wait for ever).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the keywords ask of each connection.
#[derive(Debug)]
pub struct Settings {
    /// The driver's settings, without hosts and ports (see [`hosts::Endpoint`]).
    pub config: Config,
    pub tls: TlsSettings,
    pub target: TargetAttrs,
    pub random_order: bool,
}

/// A set environment variable, `None` when unset or empty; an error when it is not UTF-8:
/// a setting pgbb was given must never be skipped.
pub fn env(name: &str) -> Result<Option<String>, PgError> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v).filter(|v| !v.is_empty())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(PgError::BadEnv(format!(
            "the environment variable {name} is not valid UTF-8 ({:?}): pgbb cannot use it; set it in UTF-8 or unset it",
            v
        ))),
    }
}

/// Fills what the DSN left unset from the PG* variables, then libpq's defaults: a socket
/// directory (or localhost), port 5432, the operating system user, a database named like
/// the user, sslmode prefer (verify-full with sslrootcert=system).
pub fn complete(params: &mut Params) -> Result<(), PgError> {
    for (key, var) in ENV_VARS {
        if !params.contains_key(*key) {
            if let Some(v) = env(var)? {
                params.insert(key.to_string(), v);
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
    system_roots_need_verify_full(params)?;
    params.entry("sslmode".into()).or_insert_with(|| "prefer".into());
    Ok(())
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".into())
}

/// sslrootcert=system (the system's trusted roots) is safe only with the host name checked:
/// verify-full is then the default sslmode and the only one allowed, as in libpq.
fn system_roots_need_verify_full(params: &mut Params) -> Result<(), PgError> {
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

/// An integer option as libpq reads it (`strtol`: blanks around, a sign, decimal digits).
fn parse_int(v: &str, key: &str) -> Result<i32, String> {
    v.trim().parse::<i32>().map_err(|_| format!("invalid integer value \"{v}\" for connection option \"{key}\""))
}

/// libpq's `connect_timeout`: seconds per host; 0 or less means no limit, 1 is taken as 2
/// ("rounding could cause connection to fail unexpectedly quickly").
pub fn connect_timeout(v: &str) -> Result<Option<Duration>, String> {
    let secs = parse_int(v, "connect_timeout")?;
    Ok((secs > 0).then(|| Duration::from_secs(secs.max(2) as u64)))
}

fn channel_binding(v: &str) -> Result<ChannelBinding, String> {
    match v {
        "disable" => Ok(ChannelBinding::Disable),
        "prefer" => Ok(ChannelBinding::Prefer),
        "require" => Ok(ChannelBinding::Require),
        _ => Err(format!("invalid channel_binding value: \"{v}\"")),
    }
}

/// `sslnegotiation`: true for `direct` (TLS at once, PostgreSQL 17+), which libpq allows only
/// with an sslmode that insists on TLS.
fn direct_tls(v: &str, mode: &str) -> Result<bool, String> {
    match v {
        "postgres" => Ok(false),
        "direct" if matches!(mode, "require" | "verify-ca" | "verify-full") => Ok(true),
        "direct" => Err(format!(
            "weak sslmode \"{mode}\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")"
        )),
        _ => Err(format!("invalid sslnegotiation value: \"{v}\"")),
    }
}

/// The settings every keyword in `params` asks for; an unknown keyword or a value libpq
/// would refuse is an error in libpq's words.
pub fn from_params(params: &Params) -> Result<Settings, PgError> {
    let bad = |m: String| PgError::BadDsn(m);
    let invalid = |k: &str, v: &str| PgError::BadDsn(format!("invalid {k} value: \"{v}\""));
    let mut s =
        Settings { config: Config::new(), tls: TlsSettings::default(), target: TargetAttrs::Any, random_order: false };
    let mut timeout = Some(DEFAULT_CONNECT_TIMEOUT);
    let sslmode = params.get("sslmode").map_or("prefer", String::as_str);
    for (k, v) in params {
        match k.as_str() {
            // The host list (see hosts::endpoints), the password and its file: ConnInfo's.
            "host" | "hostaddr" | "port" | "password" | "passfile" => {}
            "user" => {
                s.config.user(v);
            }
            "dbname" => {
                s.config.dbname(v);
            }
            "options" => {
                s.config.options(v);
            }
            "connect_timeout" => timeout = connect_timeout(v).map_err(bad)?,
            "channel_binding" => {
                s.config.channel_binding(channel_binding(v).map_err(bad)?);
            }
            "target_session_attrs" => s.target = TargetAttrs::parse(v).map_err(bad)?,
            "load_balance_hosts" => s.random_order = hosts::parse_load_balance(v).map_err(bad)?,
            "sslmode" => s.tls.mode = v.parse().map_err(|_| invalid(k, v))?,
            "sslnegotiation" => {
                if direct_tls(v, sslmode).map_err(bad)? {
                    s.config.ssl_negotiation(SslNegotiation::Direct);
                }
            }
            "sslrootcert" => s.tls.root_cert = Some(v.into()),
            "sslcrl" => s.tls.crl = Some(v.into()),
            "sslcrldir" => s.tls.crl_dir = Some(v.into()),
            "sslcert" => s.tls.cert = Some(v.into()),
            "sslkey" => s.tls.key = Some(v.into()),
            // pgbb names its sessions itself (pgbb, pgbb worker N, ...); -R writes these for
            // the standby's walreceiver.
            "application_name" | "fallback_application_name" => {}
            // pgbb's own keepalives and tcp_user_timeout are always on (below); -R writes
            // these for the standby.
            "keepalives" | "keepalives_idle" | "keepalives_interval" | "keepalives_count" | "tcp_user_timeout" => {
                parse_int(v, k).map_err(bad)?;
            }
            other => return Err(PgError::BadDsn(format!("invalid connection option \"{other}\""))),
        }
    }
    if let Some(t) = timeout {
        s.config.connect_timeout(t);
    }
    s.config.ssl_mode(match s.tls.mode {
        SslMode::Disable => postgres::config::SslMode::Disable,
        SslMode::Allow | SslMode::Prefer => postgres::config::SslMode::Prefer,
        _ => postgres::config::SslMode::Require,
    });
    s.tls.alpn = s.config.get_ssl_negotiation() == SslNegotiation::Direct;
    // A dead peer must turn into an error, not a hang.
    s.config.keepalives(true);
    s.config.keepalives_idle(Duration::from_secs(10));
    s.config.keepalives_interval(Duration::from_secs(5));
    s.config.keepalives_retries(3);
    // Unacknowledged data for 30 s (a request sent into a dead network) is an error too.
    s.config.tcp_user_timeout(Duration::from_secs(30));
    Ok(s)
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

/// The password file libpq reads: `passfile` (PGPASSFILE), else `~/.pgpass`.
pub fn passfile_path(params: &Params) -> Option<std::path::PathBuf> {
    match params.get("passfile") {
        Some(p) => Some(p.into()),
        None => super::tls::home_dir().map(|h| h.join(".pgpass")),
    }
}

/// The password for `want` (host, port, database, user) from the password file, as libpq
/// finds it: the first line whose fields match (`*` matches anything). A file readable by
/// group or others is ignored, with a warning, as libpq does.
pub fn passfile_password(path: &std::path::Path, want: [&str; 4]) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
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
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).find_map(|l| {
        let f = passfile_fields(l)?;
        f.iter().zip(want).all(|(have, want)| have == "*" || have == want).then(|| f[4].clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dsn: &str) -> Result<Settings, String> {
        let mut p = super::super::conninfo::parse(dsn)?;
        complete(&mut p).map_err(|e| e.to_string())?;
        from_params(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn connect_timeout_as_libpq() {
        assert_eq!(connect_timeout("0").unwrap(), None, "0: wait for ever");
        assert_eq!(connect_timeout("-5").unwrap(), None, "negative: wait for ever");
        assert_eq!(connect_timeout("1").unwrap(), Some(Duration::from_secs(2)), "1 is raised to 2");
        assert_eq!(connect_timeout(" 7 ").unwrap(), Some(Duration::from_secs(7)));
        assert_eq!(
            connect_timeout("2s").unwrap_err(),
            "invalid integer value \"2s\" for connection option \"connect_timeout\""
        );
        let t = |dsn: &str| settings(dsn).unwrap().config.get_connect_timeout().copied();
        assert_eq!(t("host=/tmp"), Some(DEFAULT_CONNECT_TIMEOUT), "pgbb's documented default");
        assert_eq!(t("host=/tmp connect_timeout=0"), None);
        assert_eq!(t("host=/tmp connect_timeout=1"), Some(Duration::from_secs(2)));
        let kept = settings("host=/tmp connect_timeout=0 user=u dbname=d channel_binding=require").unwrap();
        assert_eq!((kept.config.get_user(), kept.config.get_dbname()), (Some("u"), Some("d")));
        assert_eq!(kept.config.get_channel_binding(), ChannelBinding::Require);
    }

    #[test]
    fn security_and_routing_keywords_are_honoured_or_refused() {
        let cb = |v: &str| settings(&format!("host=/tmp channel_binding={v}")).map(|s| s.config.get_channel_binding());
        assert_eq!(cb("require").unwrap(), ChannelBinding::Require);
        assert_eq!(cb("disable").unwrap(), ChannelBinding::Disable);
        assert_eq!(cb("bogus").unwrap_err(), "invalid connection string: invalid channel_binding value: \"bogus\"");
        let s = settings("host=a,b target_session_attrs=prefer-standby load_balance_hosts=random").unwrap();
        assert_eq!((s.target, s.random_order), (TargetAttrs::PreferStandby, true));
        assert!(settings("host=a target_session_attrs=master").unwrap_err().contains("invalid target_session_attrs"));
        assert!(settings("host=a load_balance_hosts=yes").unwrap_err().contains("invalid load_balance_hosts"));
        let direct = settings("host=a sslmode=require sslnegotiation=direct").unwrap();
        assert_eq!(direct.config.get_ssl_negotiation(), SslNegotiation::Direct);
        assert!(direct.tls.alpn);
        assert!(settings("host=a sslnegotiation=direct").unwrap_err().contains("weak sslmode \"prefer\""));
        assert!(settings("host=a sslnegotiation=fast").unwrap_err().contains("invalid sslnegotiation value"));
        assert!(settings("host=a keepalives=x").unwrap_err().contains("invalid integer value \"x\""));
        assert!(settings("host=a service=x").unwrap_err().contains("invalid connection option \"service\""));
    }

    #[test]
    fn every_keyword_listed_is_accepted() {
        let value = |k: &str| match k {
            "host" => "/tmp",
            "hostaddr" => "127.0.0.1",
            "port" | "connect_timeout" | "tcp_user_timeout" => "5",
            k if k.starts_with("keepalives") => "1",
            "channel_binding" => "prefer",
            "target_session_attrs" => "any",
            "load_balance_hosts" => "disable",
            "sslmode" => "require",
            "sslnegotiation" => "postgres",
            _ => "x",
        };
        let p: Params = KEYWORDS.iter().map(|k| (k.to_string(), value(k).to_string())).collect();
        from_params(&p).unwrap();
    }

    #[test]
    fn password_file() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("pass");
        std::fs::write(&f, "# comment\nother:*:*:*:no\nlocalhost:5433:*:bob:pa\\:ss\n*:*:*:*:fallback\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(passfile_password(&f, ["localhost", "5433", "x", "bob"]).as_deref(), Some("pa:ss"));
        assert_eq!(passfile_password(&f, ["localhost", "5433", "x", "alice"]).as_deref(), Some("fallback"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(passfile_password(&f, ["localhost", "5433", "x", "bob"]), None, "a world-readable file is ignored");
        assert_eq!(passfile_fields("a:b:c:d:e\\\\f").unwrap()[4], "e\\f");
        assert!(passfile_fields("a:b:c").is_none());
    }
}
