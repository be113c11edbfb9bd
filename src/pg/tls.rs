//! TLS as libpq does it: which root certificates, revocation list, client certificate and key
//! a connection uses (the DSN's, else libpq's defaults in `~/.postgresql/`), libpq's rules for
//! them (a private key others can read is refused) and its messages (a host name mismatch
//! names the certificate's names). The files are read for each connection once the server
//! has agreed to TLS, as libpq reads them.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{ConnectConfiguration, SslConnector, SslConnectorBuilder, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Ref, X509StoreContextRef, X509};
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = ();
    fn from_str(s: &str) -> Result<SslMode, ()> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(()),
        })
    }
}

/// TLS settings from `sslmode`, `sslrootcert`, `sslcrl`, `sslcrldir`, `sslcert`, `sslkey`.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    pub crl_dir: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Offer ALPN `postgresql` (needed by `sslnegotiation=direct`).
    pub alpn: bool,
}

/// A TLS failure on this side, in libpq's words (a key file others can read, a certificate
/// that fails verification…): the connection fails with this message, and retrying it will
/// not help.
#[derive(Debug)]
pub struct TlsSetupError(pub String);

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

/// The home directory libpq looks in: `$HOME`, else the user's entry in the password file.
pub fn home_dir() -> Option<PathBuf> {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Some(PathBuf::from(h)),
        None => nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.dir),
    }
}

/// `~/.postgresql/NAME`, libpq's default for a TLS file.
fn default_file(name: &str) -> Option<PathBuf> {
    home_dir().map(|h| h.join(".postgresql").join(name))
}

/// OpenSSL's reason for a failure, as libpq shows it ("no start line"), else the whole stack.
fn reason(e: &ErrorStack) -> String {
    e.errors().first().and_then(|x| x.reason()).map_or_else(|| e.to_string(), str::to_string)
}

/// libpq's rule for a private key file: a regular file, not readable by others — mode 0600 or
/// less, or 0640 or less when owned by root (a system-wide key shared through a group).
pub fn check_key_file(key: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(key) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("certificate present, but not private key file \"{}\"", key.display()))
        }
        Err(e) => return Err(format!("could not stat private key file \"{}\": {e}", key.display())),
    };
    if !meta.is_file() {
        return Err(format!("private key file \"{}\" is not a regular file", key.display()));
    }
    let loose = if meta.uid() == 0 { meta.mode() & 0o037 } else { meta.mode() & 0o077 };
    if loose != 0 {
        return Err(format!(
            "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
            key.display()
        ));
    }
    Ok(())
}

/// Reads a private key, PEM or else DER. An encrypted key is not prompted for (pgbb has no
/// `sslpassword`): it fails to load.
fn read_key(key: &Path) -> Result<PKey<Private>, String> {
    let failed = |why: String| format!("could not load private key file \"{}\": {why}", key.display());
    let bytes = std::fs::read(key).map_err(|e| failed(e.to_string()))?;
    PKey::private_key_from_pem_callback(&bytes, |_| Ok(0))
        .or_else(|pem| PKey::private_key_from_der(&bytes).map_err(|_| failed(reason(&pem))))
}

/// Does a DNS name from a certificate match `host`? Exact, or a wildcard `*.rest` matching one
/// leading label (libpq's rule: `*` only first, never matching a dot), case-insensitive.
fn dns_matches(name: &[u8], host: &str) -> Result<bool, String> {
    if name.contains(&0) {
        return Err("SSL certificate's name contains embedded null".into());
    }
    let host = host.as_bytes();
    if name.eq_ignore_ascii_case(host) {
        return Ok(true);
    }
    if name.len() < 3 || !name.starts_with(b"*.") || name.len() > host.len() {
        return Ok(false);
    }
    let cut = host.len() - name.len();
    Ok(name[1..].eq_ignore_ascii_case(&host[cut + 1..]) && !host[..cut].contains(&b'.'))
}

/// Does an IP address from a certificate match `host`? Also its text, for messages.
fn ip_matches(ip: &[u8], host: &str) -> Result<(bool, String), String> {
    let cert_ip: IpAddr = match ip.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(ip).map_err(|e| e.to_string())?),
        16 => IpAddr::from(<[u8; 16]>::try_from(ip).map_err(|e| e.to_string())?),
        n => return Err(format!("certificate contains IP address with invalid length {n}")),
    };
    Ok((host.parse::<IpAddr>().is_ok_and(|h| h == cert_ip), cert_ip.to_string()))
}

/// libpq's host name check for verify-full: the certificate's subject alternative names, and
/// its common name unless a SAN of the host's kind (DNS name or IP address) exists. A mismatch
/// names the first name examined and how many others there were.
pub fn check_host_name(cert: &X509Ref, host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host name must be specified for a verified SSL connection".into());
    }
    let host_is_ip = host.parse::<IpAddr>().is_ok();
    let (mut examined, mut first, mut check_cn) = (0usize, None::<String>, true);
    for name in cert.subject_alt_names().iter().flatten() {
        let (matched, shown) = if let Some(dns) = name.dnsname() {
            check_cn &= host_is_ip;
            (dns_matches(dns.as_bytes(), host)?, dns.to_string())
        } else if let Some(ip) = name.ipaddress() {
            check_cn &= !host_is_ip;
            ip_matches(ip, host)?
        } else {
            continue;
        };
        examined += 1;
        first.get_or_insert(shown);
        if matched {
            return Ok(());
        }
    }
    if check_cn {
        if let Some(cn) = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next() {
            let bytes = cn.data().as_slice();
            examined += 1;
            first.get_or_insert_with(|| String::from_utf8_lossy(bytes).into_owned());
            if dns_matches(bytes, host)? {
                return Ok(());
            }
        }
    }
    let first = first.unwrap_or_default();
    Err(match examined {
        0 => "could not get server's host name from server certificate".into(),
        1 => format!("server certificate for \"{first}\" does not match host name \"{host}\""),
        n => format!(
            "server certificate for \"{first}\" (and {} other name{}) does not match host name \"{host}\"",
            n - 1,
            if n == 2 { "" } else { "s" }
        ),
    })
}

impl TlsSettings {
    fn verifies(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// Loads the root certificates (sslrootcert, else ~/.postgresql/root.crt, or the system's
    /// with `system`) and, from a file, the revocation list. Ok(false) when there is none
    /// and the mode does not need one.
    fn load_roots(&self, store: &mut X509StoreBuilder) -> Result<bool, String> {
        let Some(path) = self.root_cert.clone().or_else(|| default_file("root.crt")) else {
            if self.verifies() {
                return Err("could not get home directory to locate root certificate file; either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification".into());
            }
            return Ok(false);
        };
        if path == Path::new("system") {
            store
                .set_default_paths()
                .map_err(|e| format!("could not load system root certificate paths: {}", reason(&e)))?;
            return Ok(true);
        }
        if std::fs::metadata(&path).is_err() {
            if self.verifies() {
                return Err(format!("root certificate file \"{}\" does not exist; either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification", path.display()));
            }
            return Ok(false);
        }
        let unreadable = |why: String| format!("could not read root certificate file \"{}\": {why}", path.display());
        let pem = std::fs::read(&path).map_err(|e| unreadable(e.to_string()))?;
        let certs = X509::stack_from_pem(&pem).map_err(|e| unreadable(reason(&e)))?;
        if certs.is_empty() {
            return Err(unreadable("no certificate found".into()));
        }
        for c in certs {
            store.add_cert(c).map_err(|e| unreadable(reason(&e)))?;
        }
        self.load_crl(store);
        Ok(true)
    }

    /// sslcrl / sslcrldir, else ~/.postgresql/root.crl: when one loads, every certificate of
    /// the chain is checked against it. A missing list is no error (libpq does not require one).
    fn load_crl(&self, store: &mut X509StoreBuilder) {
        let file = match (&self.crl, &self.crl_dir) {
            (None, None) => default_file("root.crl"),
            (f, _) => f.clone(),
        };
        let mut loaded = false;
        if let Some(f) = file {
            if let Ok(l) = store.add_lookup(X509Lookup::file()) {
                loaded |= l.load_crl_file(&f, SslFiletype::PEM).is_ok();
            }
        }
        if let Some(d) = self.crl_dir.as_ref().and_then(|d| d.to_str()) {
            if let Ok(l) = store.add_lookup(X509Lookup::hash_dir()) {
                loaded |= l.add_dir(d, SslFiletype::PEM).is_ok();
            }
        }
        if loaded {
            let _ = store.set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL);
        }
    }

    /// The client certificate (sslcert, else ~/.postgresql/postgresql.crt, used when it
    /// exists) and then its key (sslkey, else ~/.postgresql/postgresql.key), which must exist,
    /// be private and match it.
    fn load_client(&self, b: &mut SslConnectorBuilder) -> Result<(), String> {
        let Some(cert) = self.cert.clone().or_else(|| default_file("postgresql.crt")) else { return Ok(()) };
        match std::fs::metadata(&cert) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => return Ok(()),
            Err(e) => return Err(format!("could not open certificate file \"{}\": {e}", cert.display())),
        }
        b.set_certificate_chain_file(&cert)
            .map_err(|e| format!("could not read certificate file \"{}\": {}", cert.display(), reason(&e)))?;
        let key = self.key.clone().or_else(|| default_file("postgresql.key")).unwrap_or_default();
        check_key_file(&key)?;
        let pkey = read_key(&key)?;
        b.set_private_key(&pkey)
            .and_then(|()| b.check_private_key())
            .map_err(|e| format!("certificate does not match private key file \"{}\": {}", key.display(), reason(&e)))
    }

    /// The OpenSSL settings for one connection to `host`. Certificates are checked when a
    /// root certificate is at hand in require, verify-ca and verify-full (libpq: "if a root CA
    /// file exists, require behaves as verify-ca"), the host name in verify-full; what fails
    /// is put in `failure` in libpq's words.
    fn configure(&self, host: &str, failure: Arc<Mutex<Option<String>>>) -> Result<ConnectConfiguration, String> {
        let setup = |e: ErrorStack| format!("could not create SSL context: {}", reason(&e));
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
        // Only the roots named for libpq, not the system's that the builder loaded.
        let mut store = X509StoreBuilder::new().map_err(setup)?;
        let have_root = self.load_roots(&mut store)?;
        b.set_cert_store(store.build());
        self.load_client(&mut b)?;
        if self.alpn {
            postgres_openssl::set_postgresql_alpn(&mut b).map_err(setup)?;
        }
        let mut cfg = b.build().configure().map_err(setup)?;
        cfg.set_verify_hostname(false);
        if !have_root || matches!(self.mode, SslMode::Allow | SslMode::Prefer) {
            cfg.set_verify(SslVerifyMode::NONE);
            return Ok(cfg);
        }
        let (full, host) = (self.mode == SslMode::VerifyFull, host.to_string());
        cfg.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| verify(ok, ctx, full, &host, &failure));
        Ok(cfg)
    }
}

/// OpenSSL's verification callback: keeps its verdict on the chain, adds libpq's host name
/// check on the server's own certificate, and records the first failure for the message.
fn verify(ok: bool, ctx: &mut X509StoreContextRef, full: bool, host: &str, failure: &Mutex<Option<String>>) -> bool {
    let why = if !ok {
        Some(format!("SSL error: certificate verify failed: {}", ctx.error().error_string()))
    } else if full && ctx.error_depth() == 0 {
        ctx.current_cert().and_then(|c| check_host_name(c, host).err())
    } else {
        None
    };
    match why {
        None => true,
        Some(m) => {
            if let Ok(mut f) = failure.lock() {
                f.get_or_insert(m);
            }
            false
        }
    }
}

/// The `MakeTlsConnect` pgbb connects with: libpq's TLS rules for every connection.
#[derive(Clone)]
pub struct LibpqTls(Arc<TlsSettings>);

impl LibpqTls {
    pub fn new(settings: TlsSettings) -> LibpqTls {
        LibpqTls(Arc::new(settings))
    }
}

impl MakeTlsConnect<Socket> for LibpqTls {
    type Stream = postgres_openssl::TlsStream<Socket>;
    type TlsConnect = LibpqConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<LibpqConnect, Self::Error> {
        Ok(LibpqConnect { settings: self.0.clone(), host: domain.to_string() })
    }
}

/// One TLS handshake, set up when the server has said yes to TLS.
pub struct LibpqConnect {
    settings: Arc<TlsSettings>,
    host: String,
}

type Handshake = Pin<Box<dyn Future<Output = Result<postgres_openssl::TlsStream<Socket>, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl TlsConnect<Socket> for LibpqConnect {
    type Stream = postgres_openssl::TlsStream<Socket>;
    type Error = BoxError;
    type Future = Handshake;

    fn connect(self, stream: Socket) -> Handshake {
        Box::pin(async move {
            let failure = Arc::new(Mutex::new(None));
            let cfg = self.settings.configure(&self.host, failure.clone()).map_err(TlsSetupError)?;
            let handshake = postgres_openssl::TlsConnector::new(cfg, &self.host);
            match TlsConnect::<Socket>::connect(handshake, stream).await {
                Ok(s) => Ok(s),
                Err(e) => match failure.lock().ok().and_then(|mut f| f.take()) {
                    Some(m) => Err(Box::new(TlsSetupError(m)) as BoxError),
                    None => Err(e),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn wildcards_as_libpq() {
        let m = |n: &str, h: &str| dns_matches(n.as_bytes(), h).unwrap();
        assert!(m("db.example.com", "DB.Example.com"));
        assert!(m("*.example.com", "db.example.com"));
        assert!(!m("*.example.com", "a.db.example.com"), "* never matches a dot");
        assert!(!m("*.example.com", "example.com"));
        assert!(!m("db*.example.com", "db1.example.com"), "* only first");
        assert!(!m("*", "anything"));
        assert!(dns_matches(b"db\0.evil", "db").is_err());
    }

    fn cert(cn: &str, sans: &[&str]) -> X509 {
        use openssl::x509::extension::SubjectAlternativeName;
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        if !sans.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for s in sans {
                match s.strip_prefix("IP:") {
                    Some(ip) => san.ip(ip),
                    None => san.dns(s),
                };
            }
            let ext = san.build(&b.x509v3_context(None, None)).unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&key, openssl::hash::MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn host_names_as_libpq() {
        let c = cert("localhost", &["localhost"]);
        assert!(check_host_name(&c, "localhost").is_ok());
        // An IP host: no IP SAN, so the CN is examined too: two names.
        assert_eq!(
            check_host_name(&c, "127.0.0.1").unwrap_err(),
            "server certificate for \"localhost\" (and 1 other name) does not match host name \"127.0.0.1\""
        );
        // A DNS host: a DNS SAN exists, the CN is not examined.
        assert_eq!(
            check_host_name(&c, "db.example").unwrap_err(),
            "server certificate for \"localhost\" does not match host name \"db.example\""
        );
        let c = cert("db", &["a.example", "IP:10.0.0.1", "*.db.example"]);
        assert!(check_host_name(&c, "10.0.0.1").is_ok());
        assert!(check_host_name(&c, "x.db.example").is_ok());
        assert_eq!(
            check_host_name(&c, "b.example").unwrap_err(),
            "server certificate for \"a.example\" (and 2 other names) does not match host name \"b.example\""
        );
        // The CN alone, when there is no SAN.
        let c = cert("db.example", &[]);
        assert!(check_host_name(&c, "DB.example").is_ok());
        assert_eq!(
            check_host_name(&c, "other").unwrap_err(),
            "server certificate for \"db.example\" does not match host name \"other\""
        );
    }

    #[test]
    fn key_file_rules() {
        let t = tempfile::tempdir().unwrap();
        let key = t.path().join("k");
        assert!(check_key_file(&key).unwrap_err().starts_with("certificate present, but not private key file"));
        std::fs::write(&key, "x").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o644, false), (0o604, false), (0o660, false)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_key_file(&key).is_ok(), ok, "{mode:o}");
        }
        // 0640 is allowed to root's files only (these are root's when the tests run as root).
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(check_key_file(&key).is_ok(), nix::unistd::geteuid().is_root());
        assert!(check_key_file(t.path()).unwrap_err().ends_with("is not a regular file"));
    }
}
