//! Which server a connection goes to, chosen as libpq chooses it: the hosts of `host`,
//! `hostaddr` and `port` are tried in order (shuffled with `load_balance_hosts=random`), each
//! held to `target_session_attrs`; the first that fits is taken. A backup must come from one
//! server, so every later connection of the run goes to that same host (see `ConnInfo`).

use std::net::IpAddr;

use postgres::{Client, Config, SimpleQueryMessage};

/// libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetAttrs {
    #[default]
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl TargetAttrs {
    pub fn parse(v: &str) -> Result<TargetAttrs, String> {
        Ok(match v {
            "any" => TargetAttrs::Any,
            "read-write" => TargetAttrs::ReadWrite,
            "read-only" => TargetAttrs::ReadOnly,
            "primary" => TargetAttrs::Primary,
            "standby" => TargetAttrs::Standby,
            "prefer-standby" => TargetAttrs::PreferStandby,
            _ => return Err(format!("invalid target_session_attrs value: \"{v}\"")),
        })
    }

    /// The passes over the host list: `prefer-standby` looks for a standby among all hosts
    /// first, then takes any.
    pub fn passes(self) -> &'static [TargetAttrs] {
        match self {
            TargetAttrs::PreferStandby => &[TargetAttrs::Standby, TargetAttrs::Any],
            TargetAttrs::Any => &[TargetAttrs::Any],
            TargetAttrs::ReadWrite => &[TargetAttrs::ReadWrite],
            TargetAttrs::ReadOnly => &[TargetAttrs::ReadOnly],
            TargetAttrs::Primary => &[TargetAttrs::Primary],
            TargetAttrs::Standby => &[TargetAttrs::Standby],
        }
    }
}

/// libpq's `load_balance_hosts`: true for `random`.
pub fn parse_load_balance(v: &str) -> Result<bool, String> {
    match v {
        "disable" => Ok(false),
        "random" => Ok(true),
        _ => Err(format!("invalid load_balance_hosts value: \"{v}\"")),
    }
}

/// One entry of the host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// A host name, an IP address or a socket directory (absolute path); `None` when only
    /// `hostaddr` names it.
    pub host: Option<String>,
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl Endpoint {
    /// Sets this host (only) on a config that has none.
    pub fn apply(&self, config: &mut Config) {
        if let Some(h) = &self.host {
            config.host(h);
        }
        if let Some(a) = self.hostaddr {
            config.hostaddr(a);
        }
        config.port(self.port);
    }

    /// For messages: `host "db" port 5432`, `host "db" (10.0.0.1) port 5432`, `socket in "/tmp" port 5432`.
    pub fn describe(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Some(h), _) if h.starts_with('/') => format!("socket in \"{h}\" port {}", self.port),
            (Some(h), Some(a)) => format!("host \"{h}\" ({a}) port {}", self.port),
            (Some(h), None) => format!("host \"{h}\" port {}", self.port),
            (None, Some(a)) => format!("host \"{a}\" port {}", self.port),
            (None, None) => format!("default host port {}", self.port),
        }
    }

    /// On this machine: a Unix socket, `localhost` or a loopback address.
    pub fn is_local(&self) -> bool {
        if let Some(a) = self.hostaddr {
            return a.is_loopback();
        }
        self.host.as_deref().is_some_and(|h| {
            h.starts_with('/')
                || h.eq_ignore_ascii_case("localhost")
                || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
        })
    }

    /// The host a password file line is matched against: the host name, else the address;
    /// a socket directory counts as `localhost`.
    pub fn passfile_host(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Some(h), _) if h.starts_with('/') => "localhost".into(),
            (Some(h), _) if !h.is_empty() => h.clone(),
            (_, Some(a)) => a.to_string(),
            _ => "localhost".into(),
        }
    }
}

fn list(v: Option<&String>) -> Vec<&str> {
    v.map_or_else(Vec::new, |v| v.split(',').collect())
}

/// The host list from `host`, `hostaddr` and `port`, by libpq's rules: as many entries as
/// `hostaddr` has, else as `host` has; `host` must then match `hostaddr` one for one; one
/// port serves every host, else there is one per host (an empty one is 5432).
pub fn endpoints(
    host: Option<&String>,
    hostaddr: Option<&String>,
    port: Option<&String>,
) -> Result<Vec<Endpoint>, String> {
    let (hosts, addrs, ports) = (list(host), list(hostaddr), list(port));
    let n = if addrs.is_empty() { hosts.len().max(1) } else { addrs.len() };
    if !addrs.is_empty() && !hosts.is_empty() && hosts.len() != n {
        return Err(format!("could not match {} host names to {n} hostaddr values", hosts.len()));
    }
    if ports.len() > 1 && ports.len() != n {
        return Err(format!("could not match {} port numbers to {n} hosts", ports.len()));
    }
    (0..n)
        .map(|i| {
            let p = ports.get(if ports.len() == 1 { 0 } else { i }).copied().unwrap_or("").trim();
            let port = if p.is_empty() {
                5432
            } else {
                p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| format!("invalid port number: \"{p}\""))?
            };
            let hostaddr = match addrs.get(i).copied().filter(|a| !a.is_empty()) {
                Some(a) => Some(a.parse().map_err(|_| format!("could not parse network address \"{a}\""))?),
                None => None,
            };
            let host = hosts.get(i).copied().filter(|h| !h.is_empty()).map(str::to_string);
            if host.is_none() && hostaddr.is_none() {
                return Err("a host in the list is empty and has no hostaddr".to_string());
            }
            Ok(Endpoint { host, hostaddr, port })
        })
        .collect()
}

/// The order the hosts are tried in: as given, or shuffled (a Fisher-Yates shuffle seeded
/// from the standard library's per-process random keys).
pub fn order(n: usize, random: bool) -> Vec<usize> {
    use std::hash::{BuildHasher, Hasher};
    let mut v: Vec<usize> = (0..n).collect();
    if random {
        for i in (1..n).rev() {
            let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
            v.swap(i, (r % (i as u64 + 1)) as usize);
        }
    }
    v
}

/// Does the freshly opened session fit `want`? `Ok(None)` when it does, else libpq's reason.
/// Read-write is what `transaction_read_only` says at the start of a session (it is on in
/// hot standby and with `default_transaction_read_only`); primary and standby are what
/// `pg_is_in_recovery()` says.
pub fn check(client: &mut Client, want: TargetAttrs) -> Result<Option<&'static str>, postgres::Error> {
    let (sql, on_fails, off_fails) = match want {
        TargetAttrs::Any | TargetAttrs::PreferStandby => return Ok(None),
        TargetAttrs::ReadWrite => (super::sql::TRANSACTION_READ_ONLY, Some("session is read-only"), None),
        TargetAttrs::ReadOnly => (super::sql::TRANSACTION_READ_ONLY, None, Some("session is not read-only")),
        TargetAttrs::Primary => (super::sql::IN_HOT_STANDBY, Some("server is in hot standby mode"), None),
        TargetAttrs::Standby => (super::sql::IN_HOT_STANDBY, None, Some("server is not in hot standby mode")),
    };
    log::debug!("SQL: {sql}");
    let on = client.simple_query(sql)?.iter().any(|m| match m {
        SimpleQueryMessage::Row(r) => matches!(r.get(0), Some("on" | "t")),
        _ => false,
    });
    Ok(if on { on_fails } else { off_fails })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn host_lists_as_libpq() {
        let e = endpoints(s("a,b").as_ref(), None, s("5433").as_ref()).unwrap();
        assert_eq!(e.iter().map(|e| e.port).collect::<Vec<_>>(), [5433, 5433], "one port for every host");
        let e = endpoints(s("a,b").as_ref(), None, s("1,").as_ref()).unwrap();
        assert_eq!(e[1].port, 5432, "an empty port is the default");
        let e = endpoints(s("db,").as_ref(), s("10.0.0.1,10.0.0.2").as_ref(), None).unwrap();
        assert_eq!(e[1], Endpoint { host: None, hostaddr: Some("10.0.0.2".parse().unwrap()), port: 5432 });
        assert_eq!(e[0].describe(), "host \"db\" (10.0.0.1) port 5432");
        assert_eq!(
            endpoints(s("a,b,c").as_ref(), s("10.0.0.1,10.0.0.2").as_ref(), None).unwrap_err(),
            "could not match 3 host names to 2 hostaddr values"
        );
        assert_eq!(
            endpoints(s("a,b,c").as_ref(), None, s("1,2").as_ref()).unwrap_err(),
            "could not match 2 port numbers to 3 hosts"
        );
        assert!(endpoints(s("a").as_ref(), None, s("x").as_ref()).is_err());
        assert!(endpoints(None, s("not-an-ip").as_ref(), None).is_err());
    }

    #[test]
    fn settings_as_libpq() {
        assert_eq!(TargetAttrs::parse("prefer-standby").unwrap().passes(), [TargetAttrs::Standby, TargetAttrs::Any]);
        assert_eq!(TargetAttrs::parse("primary").unwrap(), TargetAttrs::Primary);
        assert_eq!(TargetAttrs::parse("master").unwrap_err(), "invalid target_session_attrs value: \"master\"");
        assert!(parse_load_balance("random").unwrap());
        assert!(!parse_load_balance("disable").unwrap());
        assert_eq!(parse_load_balance("on").unwrap_err(), "invalid load_balance_hosts value: \"on\"");
    }

    #[test]
    fn random_order_is_a_permutation_and_varies() {
        assert_eq!(order(4, false), [0, 1, 2, 3]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut o = order(4, true);
            seen.insert(o.clone());
            o.sort();
            assert_eq!(o, [0, 1, 2, 3]);
        }
        assert!(seen.len() > 10, "{seen:?}");
    }
}
