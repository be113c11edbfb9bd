//! libpq connection strings: `key=value` pairs and `postgresql://` URIs parsed into keyword
//! pairs, so that every libpq keyword pgbb knows — TLS ones included — can be honoured.

use std::collections::BTreeMap;

/// Parsed keyword → value pairs, in libpq's names (`host`, `port`, `dbname`, `sslmode`…).
pub type Params = BTreeMap<String, String>;

/// Parses a libpq connection string (either form).
pub fn parse(s: &str) -> Result<Params, String> {
    let t = s.trim();
    if t.starts_with("postgresql://") || t.starts_with("postgres://") {
        parse_uri(t)
    } else {
        parse_pairs(t)
    }
}

/// A value as it must appear in a key=value connection string: bare when it can be, else
/// single-quoted with `'` and `\` escaped.
pub fn quote_value(v: &str) -> String {
    if !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
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

fn parse_pairs(s: &str) -> Result<Params, String> {
    let mut out = Params::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after \"{key}\""));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted string for \"{key}\"")),
                    Some('\\') => {
                        value.push(chars.next().ok_or_else(|| format!("unterminated quoted string for \"{key}\""))?)
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err("empty keyword".into());
        }
        out.insert(key, value);
    }
}

/// A URI component decoded as libpq decodes it: the decoding is the `percent-encoding` crate's,
/// which passes a malformed `%` through as it is; libpq refuses it, and `%00`.
fn percent_decode(s: &str) -> Result<String, String> {
    let well_formed = |t: &str| t.as_bytes().get(..2).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
    for t in s.split('%').skip(1) {
        if !well_formed(t) {
            return Err(format!("invalid percent-encoded token in {s:?}"));
        }
        if t.starts_with("00") {
            return Err(format!("forbidden value %00 in percent-encoded value {s:?}"));
        }
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|d| d.into_owned())
        .map_err(|_| format!("invalid UTF-8 after percent-decoding {s:?}"))
}

fn parse_uri(s: &str) -> Result<Params, String> {
    let mut out = Params::new();
    let rest = s.split_once("://").map(|(_, r)| r).unwrap_or("");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let hostlist = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.insert("user".into(), percent_decode(user)?);
            }
            if let Some(p) = password {
                out.insert("password".into(), percent_decode(p)?);
            }
            hosts
        }
        None => authority,
    };
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for h in hostlist.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = if let Some(r) = h.strip_prefix('[') {
            let (host, after) = r.split_once(']').ok_or_else(|| format!("unterminated IPv6 address in {h:?}"))?;
            (host.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match h.rsplit_once(':') {
                Some((host, port)) => (percent_decode(host)?, Some(port.to_string())),
                None => (percent_decode(h)?, None),
            }
        };
        hosts.push(host);
        ports.push(port.unwrap_or_default());
    }
    if !hosts.is_empty() {
        out.insert("host".into(), hosts.join(","));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        out.insert("port".into(), ports.join(","));
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.insert("dbname".into(), percent_decode(db)?);
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("missing \"=\" in URI parameter {pair:?}"))?;
        out.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pairs() {
        assert_eq!(
            parse("host=/tmp port = 5433 user='bob \\'o' dbname=x\\ y sslmode=verify-full").unwrap(),
            p(&[("host", "/tmp"), ("port", "5433"), ("user", "bob 'o"), ("dbname", "x y"), ("sslmode", "verify-full")])
        );
        assert_eq!(parse("").unwrap(), Params::new());
        assert!(parse("host").is_err());
        assert!(parse("host='x").is_err());
    }

    #[test]
    fn uris() {
        assert_eq!(
            parse("postgresql://al%40x:p%3Aw@db.example:6000/my%20db?sslmode=require&application_name=a").unwrap(),
            p(&[
                ("user", "al@x"),
                ("password", "p:w"),
                ("host", "db.example"),
                ("port", "6000"),
                ("dbname", "my db"),
                ("sslmode", "require"),
                ("application_name", "a"),
            ])
        );
        assert_eq!(
            parse("postgres://%2Fvar%2Frun%2Fpostgresql/db").unwrap(),
            p(&[("host", "/var/run/postgresql"), ("dbname", "db")])
        );
        assert_eq!(parse("postgresql://[::1]:5432,h2/").unwrap(), p(&[("host", "::1,h2"), ("port", "5432,")]));
        assert_eq!(parse("postgresql://").unwrap(), Params::new());
        assert_eq!(parse("postgresql:///db?host=/tmp").unwrap(), p(&[("dbname", "db"), ("host", "/tmp")]));
        assert!(parse("postgresql://h/d?x").is_err());
    }

    #[test]
    fn malformed_percent_encoding_is_refused_as_libpq_refuses_it() {
        for bad in ["postgresql://u%4@h/", "postgresql://u%zz@h/", "postgresql://h/d%", "postgresql://u%%41@h/"] {
            assert!(parse(bad).unwrap_err().contains("invalid percent-encoded token"), "{bad}");
        }
        // A sign is not a hex digit; %00 would put a NUL in the value.
        assert!(parse("postgresql://u%+1@h/").is_err());
        assert!(parse("postgresql://u%00x@h/").unwrap_err().contains("%00"));
        assert!(parse("postgresql://h/%ff").unwrap_err().contains("UTF-8"));
        assert_eq!(parse("postgresql://h/caf%C3%A9").unwrap(), p(&[("host", "h"), ("dbname", "café")]));
    }
}
