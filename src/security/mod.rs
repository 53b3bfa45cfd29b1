//! Access control for mdsub's endpoints: CURVE key pairs and key files
//! (`mdsub keygen`), a server policy (CURVE with an allow-list of client
//! public keys, and/or an allow-list of source addresses), and the ZAP
//! handler agent that enforces it (ZeroMQ's ZAP, RFC 27).
//!
//! How it fits together: a server socket that has a [`ServerAccess`] gets
//! `ZMQ_ZAP_DOMAIN` (and, with CURVE, `ZMQ_CURVE_SERVER` and its secret key);
//! libzmq then asks the context's ZAP handler (a REP socket bound at
//! `inproc://zeromq.zap.01`) about every new connection before any message
//! flows. [`ZapAgent`] is that handler: it answers with [`ZapPolicy::decide`]
//! (socket-free, unit-tested), counts accepted and refused peers by
//! mechanism and reason ([`ZapCounters`]), and says each refusal on stderr
//! with the peer's address and mechanism (rate-limited). Clients carry a
//! [`ClientKeys`] (their own pair and the server's public key).
//!
//! What this protects and what it does not is in `docs/SECURITY.md`.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{
    Agent, AgentCounters, AgentError, AgentHandle, IdleStrategy, Inbox, RunSpec, Runner, Step, StopFlag,
};
use crate::diag::RefusalLog;
use crate::wire::handshake::{AcceptFailure, HandshakeFailure, Side};

/// The inproc endpoint where libzmq looks for a context's ZAP handler.
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// The ZAP domain mdsub's server sockets use.
pub const ZAP_DOMAIN: &str = "mdsub";

/// Errors loading keys or policies.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("cannot read the bearer token file {path}")]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bearer token file {path}: {reason}")]
    BadTokenFile { path: PathBuf, reason: String },
    #[error("`{value}` is not an address or CIDR block (e.g. 127.0.0.1, 10.0.0.0/8, ::1)")]
    BadAddress { value: String },
    #[error("this libzmq has no CURVE (built without libsodium): `mdsub info` says which capabilities it has")]
    NoCurve,
    #[error(
        "{path}: no NAME.pub in it: an allow-list directory holds the public keys of the clients let in, \
         and an empty one would let in every client that knows the server's public key"
    )]
    NoPublicKeys { path: PathBuf },
}

/// A CURVE public key: 32 bytes, written as 40 Z85 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

/// A CURVE secret key (never printed).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

impl PublicKey {
    /// The 40-character Z85 text libzmq's `zmq_curve_keypair` produces.
    pub fn z85(&self) -> String {
        zmq::z85_encode(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.z85())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.z85())
    }
}

/// The 85 characters of ZeroMQ's Z85 encoding (RFC 32).
const Z85_ALPHABET: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Decode 40 Z85 characters into 32 key bytes.
pub fn decode_z85_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 40 {
        return Err(format!("a CURVE key is 40 Z85 characters, got {}", text.len()));
    }
    // libzmq's decoder does not refuse every character outside the alphabet.
    if let Some(c) = text.chars().find(|c| !Z85_ALPHABET.contains(*c)) {
        return Err(format!("not Z85 text: {c:?} is not a Z85 character"));
    }
    let bytes = zmq::z85_decode(text).map_err(|_| "not Z85 text".to_string())?;
    bytes.try_into().map_err(|_| "does not decode to 32 bytes".to_string())
}

/// A CURVE key pair.
#[derive(Debug, Clone)]
pub struct Keypair {
    pub public: PublicKey,
    pub secret: SecretKey,
}

impl Keypair {
    /// A fresh pair from libzmq (`zmq_curve_keypair`, libsodium's RNG).
    pub fn generate() -> Result<Keypair, SecurityError> {
        if !zmq::has("curve").unwrap_or(false) {
            return Err(SecurityError::NoCurve);
        }
        let pair = zmq::CurveKeyPair::new().map_err(|_| SecurityError::NoCurve)?;
        Ok(Keypair { public: PublicKey(pair.public_key), secret: SecretKey(pair.secret_key) })
    }

    /// Write `DIR/NAME.key` (both keys, mode 0600) and `DIR/NAME.pub` (the
    /// public key only) in the ZPL certificate layout CZMQ's `zcert` uses,
    /// with the keys as the Z85 text `zmq_curve_keypair` produces. Returns
    /// the two paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), SecurityError> {
        let secret_path = dir.join(format!("{name}.key"));
        let public_path = dir.join(format!("{name}.pub"));
        let secret_z85 = self.secret_z85();
        let public_text = format!(
            "#   ZeroMQ CURVE Public Certificate (mdsub keygen)\n#   Give this file to peers that must trust '{name}'.\nmetadata\ncurve\n    public-key = \"{}\"\n",
            self.public
        );
        let secret_text = format!(
            "#   ZeroMQ CURVE **Secret** Certificate (mdsub keygen)\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\nmetadata\ncurve\n    public-key = \"{}\"\n    secret-key = \"{secret_z85}\"\n",
            self.public
        );
        write_file(&public_path, public_text.as_bytes(), 0o644)?;
        write_file(&secret_path, secret_text.as_bytes(), 0o600)?;
        Ok((secret_path, public_path))
    }

    /// The secret key as the 40 Z85 characters a key file holds (never printed).
    fn secret_z85(&self) -> String {
        zmq::z85_encode(&self.secret.0).unwrap_or_default()
    }

    /// Load a pair from a secret certificate written by [`Keypair::write`]
    /// (or by CZMQ's `zcert_save_secret`).
    pub fn load(path: &Path) -> Result<Keypair, SecurityError> {
        let text = read_file(path)?;
        let public = cert_field(&text, "public-key").ok_or_else(|| bad(path, "no public-key line"))?;
        let secret = cert_field(&text, "secret-key").ok_or_else(|| {
            bad(path, "no secret-key line (is this a .pub file? a pair is used from its NAME.key file)")
        })?;
        let pair = Keypair {
            public: PublicKey(decode_z85_key(public).map_err(|r| bad(path, &format!("public-key: {r}")))?),
            secret: SecretKey(decode_z85_key(secret).map_err(|r| bad(path, &format!("secret-key: {r}")))?),
        };
        // A pair put together from two files (or edited) would fail every handshake, each
        // side blaming the other: the public key is derived from the secret one and must be it.
        let derived = crate::zmqx::curve_public(&pair.secret.0).ok_or(SecurityError::NoCurve)?;
        if derived != pair.public.0 {
            return Err(bad(
                path,
                &format!(
                    "its public-key is not the one its secret-key makes ({}): the two do not belong \
                     together; make a new pair with `mdsub keygen`",
                    PublicKey(derived)
                ),
            ));
        }
        warn_if_others_can_read(path, Secret::Key);
        Ok(pair)
    }
}

/// Load a public key: a certificate (`.pub` or `.key`) or a file holding just
/// the 40 Z85 characters.
pub fn load_public(path: &Path) -> Result<PublicKey, SecurityError> {
    let text = read_file(path)?;
    if cert_field(&text, "secret-key").is_some() {
        warn_secret_where_public_belongs(path);
    }
    let z85 = match cert_field(&text, "public-key") {
        Some(key) => key,
        // A bare key is one line; a certificate without its public-key line is not a key.
        None if text.trim().lines().count() == 1 => text.trim(),
        None => return Err(bad(path, "no public-key line (a certificate, or a file of just the 40-character key)")),
    };
    decode_z85_key(z85).map(PublicKey).map_err(|r| bad(path, &r))
}

/// Load every public key an allow-list names: files, or directories whose
/// `*.pub` files are read. A directory with none is refused
/// ([`SecurityError::NoPublicKeys`]): an empty allow-list lets every client in.
pub fn load_public_keys(paths: &[PathBuf]) -> Result<HashSet<PublicKey>, SecurityError> {
    let mut keys = HashSet::new();
    for path in paths {
        if path.is_dir() {
            let entries =
                std::fs::read_dir(path).map_err(|source| SecurityError::Read { path: path.clone(), source })?;
            let mut found = false;
            for entry in entries {
                let entry = entry.map_err(|source| SecurityError::Read { path: path.clone(), source })?;
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "pub") {
                    keys.insert(load_public(&p)?);
                    found = true;
                }
            }
            if !found {
                return Err(SecurityError::NoPublicKeys { path: path.clone() });
            }
        } else {
            keys.insert(load_public(path)?);
        }
    }
    Ok(keys)
}

/// Say once per file that a file read for its public key holds a secret key too: a peer's
/// `NAME.key` given as `--server-key` or in an allow-list works (its public key is read), but
/// the secret has left the host it belongs to.
fn warn_secret_where_public_belongs(path: &Path) {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    if !first_time(&WARNED, path) {
        return;
    }
    crate::diag!(
        "warning: {} holds a secret key where only a public key is needed (its public key is used): give the \
         peer's NAME.pub instead, and keep NAME.key on the host it belongs to",
        path.display()
    );
}

/// Whether `path` (as the file it is) is not in `warned` yet; it is from now on.
fn first_time(warned: &std::sync::Mutex<Vec<PathBuf>>, path: &Path) -> bool {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut warned = warned.lock().unwrap_or_else(|p| p.into_inner());
    let first = !warned.contains(&key);
    if first {
        warned.push(key);
    }
    first
}

/// What a file others can read gives away.
#[derive(Clone, Copy)]
enum Secret {
    Key,
    Token,
}

/// Say once per file, on stderr, that a secret key or token file can be read (or written) by
/// users other than its owner, as ssh does of a private key; mdsub uses it anyway
/// (docs/SECURITY.md: a secret mounted by an orchestrator is often 0644 in a container nobody
/// else uses).
fn warn_if_others_can_read(path: &Path, secret: Secret) {
    use std::os::unix::fs::PermissionsExt;
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 || !first_time(&WARNED, path) {
        return;
    }
    crate::diag!("{}", open_key_warning(path, mode, secret));
}

/// The warning for a secret key (or token) file of permissions `mode` that others can reach.
fn open_key_warning(path: &Path, mode: u32, secret: Secret) -> String {
    let who = match (mode & 0o070 != 0, mode & 0o007 != 0) {
        (true, true) => "its group and every other user",
        (true, false) => "its group",
        _ => "every other user",
    };
    let (file, what, gives) = match secret {
        Secret::Key => ("secret key file", "the secret key", "pass as this peer"),
        Secret::Token => ("bearer token file", "the token", "read /metrics past the token check"),
    };
    format!(
        "warning: {file} {} has mode {mode:04o}: {who} can reach {what} in it, and with it {gives}; \
         `chmod 600 {}` (mdsub uses it anyway)",
        path.display(),
        path.display()
    )
}

fn cert_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

fn bad(path: &Path, reason: &str) -> SecurityError {
    SecurityError::BadKeyFile { path: path.to_path_buf(), reason: reason.to_string() }
}

fn read_file(path: &Path) -> Result<String, SecurityError> {
    read_small(path).map_err(|source| SecurityError::Read { path: path.to_path_buf(), source })
}

/// The most a key or token file may hold: a certificate is about 300 bytes.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Read a key or token file: a regular file of at most [`MAX_KEY_FILE_BYTES`]. Anything else
/// is refused before it is read: `/dev/zero` given as a key was read until memory ran out, and
/// a FIFO blocked the open forever (it is opened non-blocking, so the check comes first).
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let file = crate::infile::open(path, "a key or token file is a small text file")?;
    let meta = file.metadata()?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(invalid(format!(
            "it holds {} bytes, more than a key or token file (at most {MAX_KEY_FILE_BYTES})",
            meta.len()
        )));
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text)?;
    Ok(text)
}

/// Write `bytes` to `path` with permissions `mode`, whatever was there: a temporary file
/// beside it (made new, so nothing it does not own is followed or kept) gets the bytes and
/// the mode, then replaces `path`. Opening `path` itself kept an existing file's mode
/// (`keygen --force` over a 0666 key left it 0666).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SecurityError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let wrap = |source| SecurityError::Write { path: path.to_path_buf(), source };
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have taken bits away from `mode` at creation; this is exact.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(wrap)
}

/// An address block: `10.0.0.0/8`, `127.0.0.1` (a /32), `::1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrBlock {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for AddrBlock {
    type Err = SecurityError;
    fn from_str(s: &str) -> Result<Self, SecurityError> {
        let err = || SecurityError::BadAddress { value: s.to_string() };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().map_err(|_| err())?, Some(p.parse::<u8>().map_err(|_| err())?)),
            None => (s.parse::<IpAddr>().map_err(|_| err())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(AddrBlock { addr, prefix })
    }
}

impl AddrBlock {
    /// Whether `ip` lies in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// What a server socket demands of its peers.
#[derive(Debug, Clone, Default)]
pub struct ServerAccess {
    /// CURVE: the server's pair, and the client keys allowed (empty: any
    /// client that knows the server's public key).
    pub curve: Option<(Keypair, HashSet<PublicKey>)>,
    /// Source addresses allowed (empty: any).
    pub allow_addrs: Vec<AddrBlock>,
}

impl ServerAccess {
    /// No access control at all (the default on loopback).
    pub fn is_open(&self) -> bool {
        self.curve.is_none() && self.allow_addrs.is_empty()
    }

    /// Set `socket` up as a server under this policy: the ZAP domain (so the
    /// context's ZAP handler is asked about every peer) and, with CURVE, the
    /// server role and secret key. Call before bind.
    pub fn apply(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        if self.is_open() {
            return Ok(());
        }
        socket.set_zap_domain(ZAP_DOMAIN)?;
        if let Some((pair, _)) = &self.curve {
            socket.set_curve_server(true)?;
            socket.set_curve_secretkey(&pair.secret.0)?;
        }
        Ok(())
    }

    /// [`ServerAccess::apply`] to server socket `socket` (made in `ctx`, not bound yet) and,
    /// when a ZAP handler serves `ctx` (`zap`), a [`HandshakeWatch`] on it for that handler:
    /// the peers libzmq refuses in their handshake (before ZAP is asked) are counted and said
    /// with ZAP's refusals. Every server socket is set up through this. With a watch, the
    /// connections that completed their handshake are counted too ([`HandshakenPeers`]).
    pub fn secure(
        &self,
        ctx: &zmq::Context,
        socket: &mut zmq::Socket,
        zap: Option<impl WatchHandshakes>,
    ) -> Result<Option<Arc<HandshakenPeers>>, SecureError> {
        self.apply(socket).map_err(SecureError::Options)?;
        let Some(zap) = zap else { return Ok(None) };
        let watch = HandshakeWatch::attach(ctx, socket).map_err(|source| AgentError::Zmq {
            role: zap.role().to_string(),
            context: "monitoring a server socket's handshakes",
            source,
        })?;
        let peers = watch.peers.clone();
        zap.take(watch)?;
        Ok(Some(peers))
    }

    /// The socket-free decision rules for this policy.
    pub fn policy(&self) -> ZapPolicy {
        ZapPolicy {
            require_curve: self.curve.is_some(),
            allowed_keys: self.curve.as_ref().map(|(_, k)| k.clone()).unwrap_or_default(),
            allow_addrs: self.allow_addrs.clone(),
        }
    }
}

/// Who may scrape an HTTP endpoint (`/metrics`), where CURVE does not
/// apply: an allow-list of source addresses and/or a bearer token (the
/// `Authorization: Bearer TOKEN` header Prometheus sends with
/// `authorization: { credentials_file: FILE }` in its scrape config).
#[derive(Clone, Default)]
pub struct HttpAccess {
    /// Source addresses allowed (empty: any).
    pub allow_addrs: Vec<AddrBlock>,
    /// The token a request must carry (None: no token needed).
    pub token: Option<Vec<u8>>,
}

impl fmt::Debug for HttpAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAccess")
            .field("allow_addrs", &self.allow_addrs)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Why an HTTP request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// Its source address is outside the allow-list (403).
    Address,
    /// A token is required and it carried none (401).
    NoToken,
    /// It carried another token (401).
    WrongToken,
}

impl HttpRefusal {
    /// The reason it is counted and said under ([`crate::diag::Refusals`]).
    pub fn reason(self) -> &'static str {
        match self {
            HttpRefusal::Address => "address_not_allowed",
            HttpRefusal::NoToken => "no_bearer_token",
            HttpRefusal::WrongToken => "wrong_bearer_token",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HttpRefusal::Address => "address not allowed",
            HttpRefusal::NoToken => "no bearer token",
            HttpRefusal::WrongToken => "wrong bearer token",
        }
    }
}

impl HttpAccess {
    /// No access control at all (the default: `/metrics` binds loopback).
    pub fn is_open(&self) -> bool {
        self.allow_addrs.is_empty() && self.token.is_none()
    }

    /// Read the token from `path`: the file's content without surrounding
    /// whitespace (as Prometheus reads `credentials_file`); empty is an error.
    pub fn read_token(path: &Path) -> Result<Vec<u8>, SecurityError> {
        let text = read_small(path).map_err(|source| SecurityError::ReadToken { path: path.to_path_buf(), source })?;
        let token = text.trim();
        let bad = |why: &str| SecurityError::BadTokenFile {
            path: path.to_path_buf(),
            reason: format!("it must hold one token (no spaces), and {why}"),
        };
        if token.is_empty() {
            return Err(bad("it is empty"));
        }
        match (token.lines().count(), token.split_whitespace().count()) {
            (1, 1) => {}
            (1, words) => return Err(bad(&format!("it has spaces ({words} words)"))),
            (lines, _) => return Err(bad(&format!("it has {lines} lines"))),
        }
        // Only of a token it uses: a file refused was warned of first, its mode, then the refusal.
        warn_if_others_can_read(path, Secret::Token);
        Ok(token.as_bytes().to_vec())
    }

    /// Accept (Ok) or refuse one request from `peer` whose `Authorization`
    /// header value is `authorization`. The token is compared in constant time.
    pub fn decide(&self, peer: IpAddr, authorization: Option<&str>) -> Result<(), HttpRefusal> {
        if !self.allow_addrs.is_empty() && !self.allow_addrs.iter().any(|b| b.contains(peer)) {
            return Err(HttpRefusal::Address);
        }
        if let Some(token) = &self.token {
            let given = authorization
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim().as_bytes())
                .ok_or(HttpRefusal::NoToken)?;
            let same = given.len() == token.len() && given.iter().zip(token).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
            if !same {
                return Err(HttpRefusal::WrongToken);
            }
        }
        Ok(())
    }
}

/// What a client presents to a CURVE server.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    pub client: Keypair,
    pub server_public: PublicKey,
}

impl ClientKeys {
    /// Set `socket` up as a CURVE client. Call before connect.
    pub fn apply(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        socket.set_curve_serverkey(&self.server_public.0)?;
        socket.set_curve_publickey(&self.client.public.0)?;
        socket.set_curve_secretkey(&self.client.secret.0)
    }

    /// [`ClientKeys::apply`] when there are keys; a plain (NULL) client otherwise.
    pub fn apply_if(keys: Option<&ClientKeys>, socket: &zmq::Socket) -> zmq::Result<()> {
        keys.map_or(Ok(()), |k| k.apply(socket))
    }
}

/// One ZAP request, as libzmq sends it (RFC 27, version 1.0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZapRequest {
    pub request_id: Vec<u8>,
    pub domain: String,
    pub address: String,
    pub mechanism: String,
    /// CURVE: the client's 32-byte public key; PLAIN: user, password.
    pub credentials: Vec<Vec<u8>>,
}

impl ZapRequest {
    /// Parse the frames of a request; a malformed one is an error with the reason.
    pub fn parse(frames: &[zmq::Message]) -> Result<ZapRequest, String> {
        if frames.len() < 6 {
            return Err(format!("a ZAP request has at least 6 frames, got {}", frames.len()));
        }
        if &frames[0][..] != b"1.0" {
            return Err("ZAP version is not 1.0".into());
        }
        let text = |m: &zmq::Message| String::from_utf8_lossy(m).into_owned();
        Ok(ZapRequest {
            request_id: frames[1].to_vec(),
            domain: text(&frames[2]),
            address: text(&frames[3]),
            mechanism: text(&frames[5]),
            credentials: frames[6..].iter().map(|m| m.to_vec()).collect(),
        })
    }
}

/// Why a peer was refused: by ZAP ([`ZapPolicy::decide`]), or by libzmq's own handshake
/// before ZAP is asked ([`Refusal::of_handshake`], seen on the server socket's monitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address is outside the allow-list.
    Address,
    /// CURVE is required and it came with another mechanism.
    Mechanism,
    /// Its CURVE public key is not on the allow-list.
    Key,
    /// Its greeting named another security mechanism (a client without CURVE keys at a CURVE
    /// server, or one with keys at a server without CURVE): `ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH`.
    HandshakeMechanism,
    /// Its CURVE handshake did not decrypt (`ZMTP_CRYPTOGRAPHIC`, `ZMTP_KEY_EXCHANGE`): most often
    /// its server key is not this server's public key.
    HandshakeCrypto,
    /// It broke the ZMTP handshake otherwise.
    HandshakeProtocol,
    /// The connection ended during the handshake with no reason from libzmq.
    HandshakeNoDetail,
    /// libzmq could not accept the connection at all (`accept()` failed, most often out of
    /// descriptors: [`crate::wire::handshake::AcceptFailure`]); counted per attempt.
    AcceptFailed,
}

impl Refusal {
    /// The reason it is counted and said under ([`crate::diag::Refusals`]).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Address => "address_not_allowed",
            Refusal::Mechanism => "mechanism_not_allowed",
            Refusal::Key => "key_not_allowed",
            Refusal::HandshakeMechanism => "handshake_failed_mechanism",
            Refusal::HandshakeCrypto => "handshake_failed_crypto",
            Refusal::HandshakeProtocol => "handshake_failed_protocol",
            Refusal::HandshakeNoDetail => "handshake_failed_no_detail",
            Refusal::AcceptFailed => crate::wire::handshake::AcceptFailure::REASON,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Address => "address not allowed",
            Refusal::Mechanism => "mechanism not allowed",
            Refusal::Key => "client key not allowed",
            Refusal::HandshakeMechanism => "another security mechanism",
            Refusal::HandshakeCrypto => "CURVE handshake did not decrypt",
            Refusal::HandshakeProtocol => "broke the ZMTP handshake",
            Refusal::HandshakeNoDetail => "the connection ended during the handshake",
            Refusal::AcceptFailed => "could not accept the connection",
        }
    }

    /// What a refusal by libzmq's handshake means, for its log line, at a server that demands
    /// CURVE (`curve`) or not: the one table of handshake failures says it.
    pub fn explain(self, curve: bool) -> &'static str {
        let failure = match self {
            Refusal::HandshakeMechanism => HandshakeFailure::MechanismMismatch,
            Refusal::HandshakeCrypto => HandshakeFailure::Crypto,
            Refusal::HandshakeProtocol => HandshakeFailure::Protocol,
            Refusal::HandshakeNoDetail => HandshakeFailure::NoDetail,
            r => return r.as_str(),
        };
        failure.explain(Side::Server, curve)
    }

    /// The refusal a server socket's monitor event says, if it says one: `event` is a
    /// `ZMQ_EVENT_*`, `value` its first value (a protocol error's code). A refusal by ZAP
    /// (`HANDSHAKE_FAILED_AUTH`) is not one: the ZAP handler decided and counted it.
    pub fn of_handshake(event: u64, value: Option<u64>) -> Option<Refusal> {
        Self::of_failure(HandshakeFailure::of_event(event, value)?)
    }

    /// The refusal a handshake failure at a server socket is (None for ZAP's own, `Auth`).
    pub fn of_failure(failure: HandshakeFailure) -> Option<Refusal> {
        match failure {
            HandshakeFailure::NoDetail => Some(Refusal::HandshakeNoDetail),
            HandshakeFailure::MechanismMismatch => Some(Refusal::HandshakeMechanism),
            HandshakeFailure::Crypto => Some(Refusal::HandshakeCrypto),
            HandshakeFailure::Protocol => Some(Refusal::HandshakeProtocol),
            HandshakeFailure::Auth => None,
        }
    }
}

/// The monitor events a server socket's [`HandshakeWatch`] asks for: the handshake failures
/// libzmq decides before ZAP is asked (ZAP's own refusals are the handler's), and each
/// connection's outcome and end, so one that ends with no outcome is seen ([`HandshakeLedger`]).
/// One event or two per connection, none per message.
const HANDSHAKE_EVENTS: u64 = (zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
    | zmq_sys::ZMQ_EVENT_HANDSHAKE_SUCCEEDED
    | zmq_sys::ZMQ_EVENT_DISCONNECTED
    | zmq_sys::ZMQ_EVENT_ACCEPT_FAILED) as u64;

/// The fewest connections a [`HandshakeLedger`] remembers the outcome of at once; it remembers
/// as many as this process may hold descriptors for, when that is more.
const MIN_LEDGER_CONNECTIONS: usize = 1 << 16;

/// Socket-free: which connections of a server socket's monitor have an outcome, so one that
/// ends without any is a refusal too. libzmq says nothing but `DISCONNECTED` of a peer whose
/// bytes are not ZMTP 3 (random bytes, a ZMTP 1.0 or 2.0 greeting at a socket under a policy,
/// a ZMTP 1.0 stream it cannot decode): such a peer broke the handshake
/// ([`Refusal::HandshakeProtocol`]). Bounded by the connections open at once: each needs a
/// descriptor, so the bound is this process's descriptor limit (RLIMIT_NOFILE, at least 65 536)
/// and real connections do not reach it. Should it be reached anyway (the limit raised while
/// running, or ends libzmq's monitor never said), an outcome past it is not remembered: that
/// connection is neither joined nor left, and its end is counted as a refusal (twice for one
/// already refused). Each such one is counted ([`HandshakeLedger::forgotten`]) and the first
/// said ([`HandshakeLedger::take_full_line`]).
#[derive(Debug)]
pub struct HandshakeLedger {
    /// Each open connection with an outcome: true when its handshake succeeded.
    settled: std::collections::HashMap<(String, String), bool>,
    /// The most it remembers at once.
    bound: usize,
    /// Outcomes not remembered because it held `bound` already.
    forgotten: u64,
    /// The first of them is said.
    full_said: bool,
}

impl Default for HandshakeLedger {
    fn default() -> Self {
        let nofile =
            crate::wire::handshake::nofile_limit().map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        HandshakeLedger::with_bound(nofile.max(MIN_LEDGER_CONNECTIONS))
    }
}

/// What one monitor event changed in a server socket's connections that completed their
/// handshake ([`HandshakeLedger::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    None,
    /// A connection completed its handshake.
    Joined,
    /// A connection that had completed its handshake ended.
    Left,
}

impl HandshakeLedger {
    /// One that remembers at most `bound` connections' outcomes at once.
    pub fn with_bound(bound: usize) -> Self {
        HandshakeLedger { settled: std::collections::HashMap::new(), bound, forgotten: 0, full_said: false }
    }

    /// Outcomes not remembered because it was full: connections whose end is then counted
    /// as a refusal though their handshake had an outcome.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// The line to say the first time an outcome is not remembered (once per ledger).
    pub fn take_full_line(&mut self) -> Option<String> {
        (self.forgotten > 0 && !std::mem::replace(&mut self.full_said, true)).then(|| {
            format!(
                "handshake ledger full ({} connections with an outcome open at once): the outcome of \
                 the ones past it is not remembered, so their ends are counted as refused \
                 (handshake_failed_protocol) and a peer's arrival and end are not counted; said once",
                self.bound
            )
        })
    }

    /// Take one monitor event: the refusal it says, if any.
    pub fn on_event(&mut self, e: &crate::zmqx::MonitorEventV2) -> Option<Refusal> {
        self.step(e).0
    }

    /// [`HandshakeLedger::on_event`], and whether a connection whose handshake completed
    /// joined or left (one whose outcome was not remembered, past the bound, is neither).
    pub fn step(&mut self, e: &crate::zmqx::MonitorEventV2) -> (Option<Refusal>, PeerChange) {
        let key = (e.local.clone(), e.remote.clone());
        let Ok(event) = u32::try_from(e.event) else { return (None, PeerChange::None) };
        if event == zmq_sys::ZMQ_EVENT_DISCONNECTED {
            return match self.settled.remove(&key) {
                None => (Some(Refusal::HandshakeProtocol), PeerChange::None),
                Some(true) => (None, PeerChange::Left),
                Some(false) => (None, PeerChange::None),
            };
        }
        let succeeded = event == zmq_sys::ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
        let outcome = succeeded || HandshakeFailure::of_event(e.event, e.value).is_some();
        let mut change = PeerChange::None;
        if outcome && self.settled.len() < self.bound {
            self.settled.insert(key, succeeded);
            if succeeded {
                change = PeerChange::Joined;
            }
        } else if outcome {
            self.forgotten += 1;
        }
        (Refusal::of_handshake(e.event, e.value), change)
    }
}

/// How many connections of one server socket have completed their ZMTP handshake and not
/// ended yet, as its [`HandshakeWatch`] counts them (live; read by the socket's owner). A peer
/// whose bytes libzmq reads as ZMTP 1.0 (random bytes do: their first is not 0xFF) never
/// completes one: libzmq 4.3.5 has no mechanism for it and says no `HANDSHAKE_SUCCEEDED`.
#[derive(Debug, Default)]
pub struct HandshakenPeers(AtomicU64);

impl HandshakenPeers {
    /// The connections open now whose handshake completed.
    pub fn now(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A server socket's monitor (version 2 events, which name the peer), read by the ZAP handler
/// of its context: a client libzmq refuses in its handshake (no CURVE keys at a CURVE server,
/// a server key that is not this server's) never reaches ZAP, and was in no counter and no line.
pub struct HandshakeWatch {
    monitor: zmq::Socket,
    peers: Arc<HandshakenPeers>,
}

static HANDSHAKE_WATCHES: AtomicU64 = AtomicU64::new(0);

impl HandshakeWatch {
    /// Start the monitor on `socket` (made in `ctx`; before it binds, so no peer is missed).
    pub fn attach(ctx: &zmq::Context, socket: &mut zmq::Socket) -> zmq::Result<HandshakeWatch> {
        let n = HANDSHAKE_WATCHES.fetch_add(1, Relaxed);
        let inproc = format!("inproc://mdsub-handshakes-{}-{n}", std::process::id());
        crate::zmqx::monitor_v2(socket, &inproc, HANDSHAKE_EVENTS)?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.set_linger(0)?;
        monitor.connect(&inproc)?;
        Ok(HandshakeWatch { monitor, peers: Arc::default() })
    }
}

/// Why [`ServerAccess::secure`] could not set a server socket up.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    #[error("zmq error while setting the access options: {0}")]
    Options(#[source] zmq::Error),
    #[error(transparent)]
    Watch(#[from] AgentError),
}

/// Who reads a server socket's [`HandshakeWatch`]: a [`ZapHandler`] in its owner's loop (the
/// clone server) or the [`ZapService`]'s agent.
pub trait WatchHandshakes {
    /// The handler's role, for errors.
    fn role(&self) -> &str;
    /// Read `watch` from now on.
    fn take(self, watch: HandshakeWatch) -> Result<(), AgentError>;
}

impl WatchHandshakes for &mut ZapHandler {
    fn role(&self) -> &str {
        &self.role
    }

    fn take(self, watch: HandshakeWatch) -> Result<(), AgentError> {
        self.watches.push(watch);
        Ok(())
    }
}

/// Its events wait in the monitor until the agent takes the watch (at its next step, within
/// its 100 ms block).
impl WatchHandshakes for &ZapService {
    fn role(&self) -> &str {
        self.handle.as_ref().map_or("", |h| h.role())
    }

    fn take(self, watch: HandshakeWatch) -> Result<(), AgentError> {
        self.watches.send(watch).map_err(|_| AgentError::Fatal {
            role: self.role().to_string(),
            message: "the ZAP handler has stopped".into(),
        })
    }
}

/// What a server socket's monitor said about one peer: refused by libzmq's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRefused {
    pub refusal: Refusal,
    /// The peer (`tcp://10.0.0.7:51234`) and the endpoint it reached.
    pub peer: String,
    pub endpoint: String,
}

impl HandshakeRefused {
    /// `refusal`, as version 2 monitor event `event` names its peer and endpoint.
    pub fn of(refusal: Refusal, event: &crate::zmqx::MonitorEventV2) -> HandshakeRefused {
        HandshakeRefused { refusal, peer: event.remote.clone(), endpoint: event.local.clone() }
    }

    /// The line's detail at a server that demands CURVE (`curve`) or not:
    /// `10.0.0.7:51234 at tcp://0.0.0.0:5556: WHAT IT MEANS`.
    pub fn detail(&self, curve: bool) -> String {
        let peer = self.peer.strip_prefix("tcp://").unwrap_or(&self.peer);
        format!("{peer} at {}: {}", self.endpoint, self.refusal.explain(curve))
    }
}

/// The socket-free ZAP decision: allow-list of addresses, required
/// mechanism, allow-list of client keys.
#[derive(Debug, Clone, Default)]
pub struct ZapPolicy {
    pub require_curve: bool,
    pub allowed_keys: HashSet<PublicKey>,
    pub allow_addrs: Vec<AddrBlock>,
}

impl ZapPolicy {
    /// Accept (Ok) or refuse (the reason) one request.
    pub fn decide(&self, req: &ZapRequest) -> Result<(), Refusal> {
        if req.domain == crate::zmqx::OPEN_ZAP_DOMAIN {
            return Ok(()); // a socket of this context under no policy
        }
        if !self.allow_addrs.is_empty() {
            let ip = req.address.parse::<IpAddr>().ok();
            if !ip.is_some_and(|ip| self.allow_addrs.iter().any(|b| b.contains(ip))) {
                return Err(Refusal::Address);
            }
        }
        if self.require_curve {
            if req.mechanism != "CURVE" {
                return Err(Refusal::Mechanism);
            }
            if !self.allowed_keys.is_empty() {
                let key = req.credentials.first().and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok());
                if !key.is_some_and(|k| self.allowed_keys.contains(&PublicKey(k))) {
                    return Err(Refusal::Key);
                }
            }
        }
        Ok(())
    }
}

/// What the ZAP handler has decided so far, and the peers libzmq refused in their handshake
/// on the context's watched server sockets (live, readable by anyone).
#[derive(Debug, Default)]
pub struct ZapCounters {
    pub accepted: AtomicU64,
    pub refused_address: AtomicU64,
    pub refused_mechanism: AtomicU64,
    pub refused_key: AtomicU64,
    pub malformed: AtomicU64,
    pub handshake_mechanism: AtomicU64,
    pub handshake_crypto: AtomicU64,
    pub handshake_protocol: AtomicU64,
    pub handshake_no_detail: AtomicU64,
    pub accept_failed: AtomicU64,
    /// Handshake outcomes its [`HandshakeLedger`] did not remember, being full: not a refusal
    /// reason but how many counts above are off (each such connection's end is counted as
    /// `handshake_failed_protocol`, and a peer's arrival and end are not counted). 0 unless the
    /// ledger filled ([`HandshakeLedger::take_full_line`] says when).
    pub ledger_forgotten: AtomicU64,
}

/// Every refusal, in the order counters and lines name them.
const REFUSALS: [Refusal; 8] = [
    Refusal::Address,
    Refusal::Mechanism,
    Refusal::Key,
    Refusal::HandshakeMechanism,
    Refusal::HandshakeCrypto,
    Refusal::HandshakeProtocol,
    Refusal::HandshakeNoDetail,
    Refusal::AcceptFailed,
];

impl ZapCounters {
    /// Peers refused, every reason.
    pub fn refused(&self) -> u64 {
        REFUSALS.iter().map(|&r| self.of(r).load(Relaxed)).sum()
    }

    /// Every reason a peer is refused under, with its count so far (0 for those not seen).
    pub fn every_reason(&self) -> Vec<(&'static str, u64)> {
        REFUSALS.iter().map(|&r| (r.reason(), self.of(r).load(Relaxed))).collect()
    }

    /// The refusals counted so far, by reason (those not yet seen left out).
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        self.every_reason().into_iter().filter(|&(_, n)| n > 0).collect()
    }

    /// The lines a server's `STATUS?` reply carries: `access_refused=N` (every reason, always
    /// there), then `refused_REASON=N` for each reason seen, then `handshake_ledger_forgotten=N`
    /// once the handshake ledger filled ([`ZapCounters::ledger_forgotten`]).
    pub fn status_lines(&self) -> String {
        let mut out = format!("access_refused={}\n", self.refused());
        for (reason, n) in self.by_reason() {
            out.push_str(&format!("refused_{reason}={n}\n"));
        }
        let forgotten = self.ledger_forgotten.load(Relaxed);
        if forgotten > 0 {
            out.push_str(&format!("handshake_ledger_forgotten={forgotten}\n"));
        }
        out
    }

    fn of(&self, refusal: Refusal) -> &AtomicU64 {
        match refusal {
            Refusal::Address => &self.refused_address,
            Refusal::Mechanism => &self.refused_mechanism,
            Refusal::Key => &self.refused_key,
            Refusal::HandshakeMechanism => &self.handshake_mechanism,
            Refusal::HandshakeCrypto => &self.handshake_crypto,
            Refusal::HandshakeProtocol => &self.handshake_protocol,
            Refusal::HandshakeNoDetail => &self.handshake_no_detail,
            Refusal::AcceptFailed => &self.accept_failed,
        }
    }

    fn count(&self, refusal: Refusal) {
        self.of(refusal).fetch_add(1, Relaxed);
    }
}

/// The ZAP handler: a REP socket at [`ZAP_ENDPOINT`] of one context that
/// answers libzmq's questions with a [`ZapPolicy`]. Every socket of that
/// context with a ZAP domain is checked by it. An agent that already polls
/// sockets (the clone server) serves it in its own loop; [`ZapAgent`] runs
/// it on a thread of its own. It also reads the server sockets' [`HandshakeWatch`]es, so a
/// peer libzmq refuses before ZAP is asked is counted and said like one ZAP refuses.
pub struct ZapHandler {
    role: String,
    /// The ZAP REP socket; None under an open policy (no socket asks ZAP: only the watches
    /// are read).
    socket: Option<zmq::Socket>,
    policy: ZapPolicy,
    counters: Arc<ZapCounters>,
    frames: Vec<zmq::Message>,
    /// Refusals said on stderr by reason: the first of each at once, then a summary per 10 s.
    refusals: RefusalLog,
    watches: Vec<HandshakeWatch>,
    ledger: HandshakeLedger,
}

impl ZapHandler {
    /// Bind the handler in `ctx` (before any server socket of `ctx` binds,
    /// so no peer is let in unasked). `role` names it in logs.
    pub fn bind(ctx: &zmq::Context, role: &str, policy: ZapPolicy) -> Result<ZapHandler, AgentError> {
        let zmq_err = |context, source| AgentError::Zmq { role: role.to_string(), context, source };
        let socket = ctx.socket(zmq::REP).map_err(|e| zmq_err("making the ZAP socket", e))?;
        socket.set_linger(0).map_err(|e| zmq_err("setting ZAP linger", e))?;
        socket.bind(ZAP_ENDPOINT).map_err(|e| zmq_err("binding inproc://zeromq.zap.01", e))?;
        Ok(ZapHandler { socket: Some(socket), ..ZapHandler::watch_only(role, policy) })
    }

    /// The handler of server sockets under `access` in `ctx`: it answers ZAP (bound in `ctx`,
    /// before any server socket of `ctx` binds) when `access` is not open, and reads the
    /// watches of every server socket either way, so a peer that breaks the handshake at a
    /// socket without a policy is counted and said too.
    pub fn for_access(ctx: &zmq::Context, role: &str, access: &ServerAccess) -> Result<ZapHandler, AgentError> {
        if access.is_open() {
            Ok(ZapHandler::watch_only(role, access.policy()))
        } else {
            ZapHandler::bind(ctx, role, access.policy())
        }
    }

    /// A handler that answers no ZAP request and only reads watches.
    fn watch_only(role: &str, policy: ZapPolicy) -> ZapHandler {
        ZapHandler {
            role: role.to_string(),
            socket: None,
            policy,
            counters: Arc::new(ZapCounters::default()),
            frames: Vec::new(),
            refusals: RefusalLog::new(role),
            watches: Vec::new(),
            ledger: HandshakeLedger::default(),
        }
    }

    /// The sockets to wait on for its work: the ZAP socket and every watch's monitor.
    pub fn sockets(&self) -> impl Iterator<Item = &zmq::Socket> {
        self.socket.iter().chain(self.watches.iter().map(|w| &w.monitor))
    }

    /// The live counters.
    pub fn counters(&self) -> Arc<ZapCounters> {
        self.counters.clone()
    }

    /// Answer up to 64 waiting requests and read up to 64 events of each watch without
    /// blocking; how many requests and events were taken.
    pub fn serve(&mut self) -> Result<usize, AgentError> {
        let mut n = 0;
        while n < 64 && self.answer()? {
            n += 1;
        }
        for i in 0..self.watches.len() {
            let mut taken = 0;
            while taken < 64 && self.read_watch(i) {
                taken += 1;
            }
            n += taken;
        }
        // A burst of refusals is summarised without waiting for the next one.
        self.refusals.tick(crate::clock::monotonic_ns());
        Ok(n)
    }

    /// Take one event of watch `i`: a peer refused in its handshake is counted and said.
    fn read_watch(&mut self, i: usize) -> bool {
        match crate::zmqx::recv_message(&self.watches[i].monitor, &mut self.frames) {
            Ok(true) => {}
            Ok(false) | Err(_) => return false,
        }
        let event = crate::zmqx::MonitorEventV2::parse(&self.frames);
        let accept = event.as_ref().and_then(|e| Some((AcceptFailure::of_event(e.event, e.value)?, e)));
        if let Some((failure, e)) = accept {
            // No peer to name: libzmq could not take the connection (and will try again at once).
            self.counters.count(Refusal::AcceptFailed);
            let detail = format_args!("at {}: {}", e.local, failure.explain(crate::wire::handshake::nofile_limit()));
            self.refusals.refuse(Refusal::AcceptFailed.reason(), &detail, crate::clock::monotonic_ns());
            return true;
        }
        let refused = event.and_then(|e| {
            let (refusal, change) = self.ledger.step(&e);
            if let Some(line) = self.ledger.take_full_line() {
                crate::diag!("{}: {line}", self.role);
            }
            self.counters.ledger_forgotten.store(self.ledger.forgotten(), Relaxed);
            let peers = &self.watches[i].peers.0;
            match change {
                PeerChange::Joined => _ = peers.fetch_add(1, Relaxed),
                PeerChange::Left => _ = peers.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)),
                PeerChange::None => {}
            }
            Some(HandshakeRefused::of(refusal?, &e))
        });
        if let Some(r) = refused {
            self.counters.count(r.refusal);
            let detail = r.detail(self.policy.require_curve);
            self.refusals.refuse(r.refusal.reason(), &detail, crate::clock::monotonic_ns());
        }
        true
    }

    fn answer(&mut self) -> Result<bool, AgentError> {
        let Some(socket) = &self.socket else { return Ok(false) };
        let got = crate::zmqx::recv_message(socket, &mut self.frames).map_err(|source| AgentError::Zmq {
            role: self.role.clone(),
            context: "receiving a ZAP request",
            source,
        })?;
        if !got {
            return Ok(false);
        }
        let (request_id, verdict, address, mechanism) = match ZapRequest::parse(&self.frames) {
            Ok(req) => {
                let verdict = self.policy.decide(&req);
                (req.request_id, verdict.map_err(Some), req.address, req.mechanism)
            }
            Err(reason) => {
                self.counters.malformed.fetch_add(1, Relaxed);
                self.refusals.refuse("malformed_zap_request", &reason, crate::clock::monotonic_ns());
                let id = self.frames.get(1).map(|m| m.to_vec()).unwrap_or_default();
                (id, Err(None), String::new(), String::new())
            }
        };
        let (code, text): (&[u8], &str) = match verdict {
            Ok(()) => {
                self.counters.accepted.fetch_add(1, Relaxed);
                (b"200", "OK")
            }
            Err(Some(refusal)) => {
                self.counters.count(refusal);
                let now_ns = crate::clock::monotonic_ns();
                let detail = format_args!("{address} ({mechanism}): {}", refusal.as_str());
                self.refusals.refuse(refusal.reason(), &detail, now_ns);
                (b"400", refusal.as_str())
            }
            Err(None) => (b"500", "malformed request"),
        };
        let reply: [&[u8]; 6] = [b"1.0", &request_id, code, text.as_bytes(), b"", b""];
        let last = reply.len() - 1;
        let Some(socket) = &self.socket else { return Ok(false) };
        for (i, frame) in reply.iter().enumerate() {
            let flags = if i < last { zmq::SNDMORE } else { 0 };
            socket.send(*frame, flags).map_err(|source| AgentError::Zmq {
                role: self.role.clone(),
                context: "answering ZAP",
                source,
            })?;
        }
        Ok(true)
    }
}

/// A [`ZapHandler`] on a thread of its own (role `zap`), for contexts whose
/// owners do not poll it themselves; the [`HandshakeWatch`]es of server sockets made after
/// it started reach it through a channel ([`ServerAccess::secure`]).
pub struct ZapAgent(ZapAgentState);

struct ZapAgentState {
    handler: ZapHandler,
    /// The watches of server sockets made after it started ([`ZapService`]), taken at each step.
    new_watches: Option<Inbox<HandshakeWatch>>,
}

impl ZapAgent {
    /// Bind the handler in `ctx` (before any server socket of `ctx` binds).
    pub fn bind(ctx: &zmq::Context, role: &str, policy: ZapPolicy) -> Result<(ZapAgent, Arc<ZapCounters>), AgentError> {
        let handler = ZapHandler::bind(ctx, role, policy)?;
        let counters = handler.counters();
        Ok((ZapAgent(ZapAgentState { handler, new_watches: None }), counters))
    }
}

impl Agent for ZapAgent {
    fn role(&self) -> &str {
        &self.0.handler.role
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        if let Some(inbox) = &mut self.0.new_watches {
            self.0.handler.watches.extend(inbox);
        }
        self.0.handler.serve().map(Step::Worked)
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let _ = crate::zmqx::wait_any(self.0.handler.sockets(), zmq::POLLIN, timeout);
    }
}

/// A context's ZAP handler on its own thread ([`ZapAgent`], role `ROLE-zap`),
/// for server sockets whose owners do not poll ZAP themselves (the engine's
/// monitor PUB, the replay publisher). Stopped and joined on drop, which must
/// come before the context is dropped (libzmq's termination waits for the
/// handler's socket).
pub struct ZapService {
    handle: Option<AgentHandle<ZapAgent>>,
    stop: StopFlag,
    counters: Arc<ZapCounters>,
    watches: crossbeam::channel::Sender<HandshakeWatch>,
}

impl ZapService {
    /// Run the handler for `access` in `ctx` ([`ZapHandler::for_access`]: it answers ZAP unless
    /// `access` is open, and reads the handshake watches of the server sockets either way),
    /// before any server socket of `ctx` binds.
    pub fn start(ctx: &zmq::Context, role: &str, access: &ServerAccess) -> Result<ZapService, AgentError> {
        let handler = ZapHandler::for_access(ctx, &format!("{role}-zap"), access)?;
        let counters = handler.counters();
        let mut agent = ZapAgent(ZapAgentState { handler, new_watches: None });
        let (watches, rx) = crossbeam::channel::unbounded();
        agent.0.new_watches = Some(Inbox::new(rx));
        let stop = StopFlag::new();
        let handle = Runner::start(RunSpec::unpinned(IdleStrategy::Block { wait_us: 100_000 }), stop.clone(), agent)?;
        Ok(ZapService { handle: Some(handle), stop, counters, watches })
    }

    /// What the handler has decided so far (still there once stopped).
    pub fn counters(&self) -> Arc<ZapCounters> {
        self.counters.clone()
    }

    /// Its agent's role and live counters (None once stopped), for a report's thread table.
    pub fn agent_counters(&self) -> Option<(String, Arc<AgentCounters>)> {
        self.handle.as_ref().map(|h| (h.role().to_string(), h.counters().clone()))
    }

    /// Stop the handler and wait for its thread (once the server sockets it answers for are
    /// closed; dropping does it too).
    pub fn stop(&mut self) {
        self.stop.stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ZapService {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(address: &str, mechanism: &str, key: Option<[u8; 32]>) -> ZapRequest {
        ZapRequest {
            request_id: b"1".to_vec(),
            domain: ZAP_DOMAIN.into(),
            address: address.into(),
            mechanism: mechanism.into(),
            credentials: key.map(|k| vec![k.to_vec()]).unwrap_or_default(),
        }
    }

    #[test]
    fn the_zap_agent_wakes_for_a_refusal_on_its_fifth_watch() {
        // Before: its wait took the ZAP socket and three monitors, so a keyless peer at the
        // fourth server socket of a CURVE context (a replay's fourth shard) waited out the block.
        let ctx = zmq::Context::new();
        let access =
            ServerAccess { curve: Some((Keypair::generate().expect("pair"), HashSet::new())), allow_addrs: vec![] };
        let (mut agent, counters) = ZapAgent::bind(&ctx, "test-zap", access.policy()).expect("zap");
        let mut endpoints = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..5 {
            let mut s = ctx.socket(zmq::PUB).expect("pub");
            s.set_linger(0).expect("linger");
            access.secure(&ctx, &mut s, Some(&mut agent.0.handler)).expect("secure");
            endpoints.push(crate::zmqx::bind_resolved(&s, "tcp://127.0.0.1:*").expect("bind"));
            servers.push(s);
        }
        let keyless = ctx.socket(zmq::SUB).expect("sub");
        keyless.set_linger(0).expect("linger");
        keyless.connect(&endpoints[4]).expect("connect");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counters.handshake_mechanism.load(Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "the refusal was never counted");
            let t0 = std::time::Instant::now();
            agent.idle_wait(Duration::from_secs(5));
            let woke = agent.do_work().expect("work");
            if woke == Step::Worked(0) {
                continue; // a wake-up for an event that was no refusal (none expected, but harmless)
            }
            assert!(t0.elapsed() < Duration::from_secs(2), "woken at once, not after the block: {:?}", t0.elapsed());
        }
        assert_eq!(counters.refused(), counters.handshake_mechanism.load(Relaxed));
    }

    #[test]
    fn address_blocks_match_by_prefix() {
        let b: AddrBlock = "10.1.0.0/16".parse().unwrap();
        assert!(b.contains("10.1.200.3".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        let one: AddrBlock = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()), "v4-mapped v6 peer");
        assert!("10.0.0.0/33".parse::<AddrBlock>().is_err());
        assert!("not-an-ip".parse::<AddrBlock>().is_err());
    }

    #[test]
    fn policy_refuses_by_address_mechanism_and_key_in_that_order() {
        let allowed = [7u8; 32];
        let policy = ZapPolicy {
            require_curve: true,
            allowed_keys: [PublicKey(allowed)].into_iter().collect(),
            allow_addrs: vec!["127.0.0.1".parse().unwrap()],
        };
        assert_eq!(policy.decide(&req("127.0.0.1", "CURVE", Some(allowed))), Ok(()));
        assert_eq!(policy.decide(&req("127.0.0.2", "CURVE", Some(allowed))), Err(Refusal::Address));
        assert_eq!(policy.decide(&req("127.0.0.1", "NULL", None)), Err(Refusal::Mechanism));
        assert_eq!(policy.decide(&req("127.0.0.1", "CURVE", Some([8; 32]))), Err(Refusal::Key));
        assert_eq!(policy.decide(&req("garbage", "CURVE", Some(allowed))), Err(Refusal::Address));
        // A socket of the same context under no policy (its domain says so) is not judged by it.
        let open = ZapRequest { domain: crate::zmqx::OPEN_ZAP_DOMAIN.into(), ..req("127.0.0.2", "NULL", None) };
        assert_eq!(policy.decide(&open), Ok(()));
    }

    #[test]
    fn http_access_checks_address_then_bearer_token() {
        let a = HttpAccess { allow_addrs: vec!["127.0.0.1".parse().unwrap()], token: Some(b"s3cret".to_vec()) };
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(a.decide(local, Some("Bearer s3cret")), Ok(()));
        assert_eq!(a.decide(local, Some("bearer  s3cret ")), Ok(()), "scheme is case-insensitive");
        assert_eq!(a.decide("127.0.0.2".parse().unwrap(), Some("Bearer s3cret")), Err(HttpRefusal::Address));
        assert_eq!(a.decide(local, None), Err(HttpRefusal::NoToken));
        assert_eq!(a.decide(local, Some("Basic czNjcmV0")), Err(HttpRefusal::NoToken));
        assert_eq!(a.decide(local, Some("Bearer s3cre")), Err(HttpRefusal::WrongToken));
        assert_eq!(a.decide(local, Some("Bearer s3cretX")), Err(HttpRefusal::WrongToken));
        assert!(HttpAccess::default().decide("192.0.2.1".parse().unwrap(), None).is_ok());
        assert!(!format!("{a:?}").contains("s3cret"), "the token is never printed");
    }

    #[test]
    fn handshake_failures_are_refusals_by_their_code() {
        use zmq_sys as z;
        let failed =
            |code: u32| Refusal::of_handshake(u64::from(z::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL), Some(u64::from(code)));
        assert_eq!(failed(z::ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH), Some(Refusal::HandshakeMechanism));
        assert_eq!(failed(z::ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC), Some(Refusal::HandshakeCrypto));
        assert_eq!(failed(z::ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE), Some(Refusal::HandshakeCrypto));
        assert_eq!(failed(z::ZMQ_PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND), Some(Refusal::HandshakeProtocol));
        let event = |e: u32| Refusal::of_handshake(u64::from(e), Some(0));
        assert_eq!(event(z::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL), Some(Refusal::HandshakeNoDetail));
        assert_eq!(event(z::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH), None, "ZAP's own refusal: the handler counted it");
        assert_eq!(event(z::ZMQ_EVENT_HANDSHAKE_SUCCEEDED), None);
        assert_eq!(Refusal::of_handshake(u64::MAX, None), None);
        let r = HandshakeRefused {
            refusal: Refusal::HandshakeMechanism,
            peer: "tcp://10.0.0.7:51234".into(),
            endpoint: "tcp://0.0.0.0:5556".into(),
        };
        assert_eq!(
            r.detail(true),
            "10.0.0.7:51234 at tcp://0.0.0.0:5556: the client presents no CURVE keys and this server demands \
             CURVE: it needs --server-key (this server's NAME.pub) and --curve-key"
        );
        assert!(r.detail(false).contains("the client presents CURVE keys and this server does not demand CURVE"));
        let c = ZapCounters::default();
        for refusal in [Refusal::Key, Refusal::HandshakeCrypto, Refusal::HandshakeCrypto] {
            c.count(refusal);
        }
        assert_eq!(c.by_reason(), [("key_not_allowed", 1), ("handshake_failed_crypto", 2)]);
        assert_eq!(c.refused(), 3);
    }

    #[test]
    fn a_connection_that_ends_without_a_handshake_outcome_is_a_refusal() {
        use zmq_sys as z;
        let ev = |event: u32, remote: &str| crate::zmqx::MonitorEventV2 {
            event: u64::from(event),
            value: Some(0),
            local: "tcp://127.0.0.1:5556".into(),
            remote: remote.into(),
        };
        let mut l = HandshakeLedger::default();
        // A ZeroMQ peer that got in, and one ZAP refused: their ends are no refusal.
        assert_eq!(l.on_event(&ev(z::ZMQ_EVENT_HANDSHAKE_SUCCEEDED, "tcp://127.0.0.1:1")), None);
        assert_eq!(l.on_event(&ev(z::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, "tcp://127.0.0.1:2")), None);
        // A port check: said by libzmq, counted once (not again at its end).
        let check = ev(z::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, "tcp://127.0.0.1:3");
        assert_eq!(l.on_event(&check), Some(Refusal::HandshakeNoDetail));
        for port in 1..=3 {
            assert_eq!(l.on_event(&ev(z::ZMQ_EVENT_DISCONNECTED, &format!("tcp://127.0.0.1:{port}"))), None);
        }
        // Bytes that are not ZMTP 3: libzmq says only that the connection ended.
        assert_eq!(l.on_event(&ev(z::ZMQ_EVENT_DISCONNECTED, "tcp://127.0.0.1:4")), Some(Refusal::HandshakeProtocol));
        assert!(l.settled.is_empty(), "nothing kept past a connection's end");
    }

    /// Past its bound a ledger mis-counts: a peer that got in is not joined, and its end is a
    /// refusal. Before, that was silent and the bound was 65 536 whatever the descriptor limit.
    #[test]
    fn a_full_ledger_counts_and_says_what_it_mis_counts_and_real_connections_do_not_fill_it() {
        use zmq_sys as z;
        let ev = |event: u32, port: u16| crate::zmqx::MonitorEventV2 {
            event: u64::from(event),
            value: Some(0),
            local: "tcp://127.0.0.1:5556".into(),
            remote: format!("tcp://127.0.0.1:{port}"),
        };
        let mut l = HandshakeLedger::with_bound(2);
        for port in 1..=2 {
            assert_eq!(l.step(&ev(z::ZMQ_EVENT_HANDSHAKE_SUCCEEDED, port)), (None, PeerChange::Joined));
        }
        assert_eq!((l.forgotten(), l.take_full_line()), (0, None));
        // The third good peer: not remembered, so neither joined nor left, and its end a refusal.
        assert_eq!(l.step(&ev(z::ZMQ_EVENT_HANDSHAKE_SUCCEEDED, 3)), (None, PeerChange::None));
        let refused = l.step(&ev(z::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, 4));
        assert_eq!(refused, (Some(Refusal::HandshakeNoDetail), PeerChange::None));
        assert_eq!(l.forgotten(), 2);
        let line = l.take_full_line().expect("said");
        assert!(line.contains("handshake ledger full (2 connections") && line.contains("said once"), "{line}");
        assert_eq!(l.take_full_line(), None, "once");
        assert_eq!(l.step(&ev(z::ZMQ_EVENT_DISCONNECTED, 3)), (Some(Refusal::HandshakeProtocol), PeerChange::None));
        assert_eq!(l.step(&ev(z::ZMQ_EVENT_DISCONNECTED, 1)), (None, PeerChange::Left));
        // The default bound is at least the descriptor limit: connections that can be open at
        // once (each holds a descriptor) never fill it.
        let nofile = crate::wire::handshake::nofile_limit().unwrap_or(0);
        let default = HandshakeLedger::default().bound as u64;
        assert!(default >= nofile.max(MIN_LEDGER_CONNECTIONS as u64), "{default} < {nofile}");
    }

    /// Before: the count was in the one stderr line only; now it is in the handler's counters
    /// (STATUS, the engine's monitor, the replay's stats read them).
    #[test]
    fn a_full_ledger_is_counted_where_the_handshake_refusals_are() {
        let ctx = zmq::Context::new();
        let access = ServerAccess::default();
        let mut handler = ZapHandler::for_access(&ctx, "test-zap", &access).expect("handler");
        handler.ledger = HandshakeLedger::with_bound(1);
        let mut server = ctx.socket(zmq::PUB).expect("pub");
        server.set_linger(0).expect("linger");
        access.secure(&ctx, &mut server, Some(&mut handler)).expect("secure");
        let endpoint = crate::zmqx::bind_resolved(&server, "tcp://127.0.0.1:*").expect("bind");
        let clients: Vec<zmq::Socket> = (0..2)
            .map(|_| {
                let c = ctx.socket(zmq::SUB).expect("sub");
                c.set_linger(0).expect("linger");
                c.connect(&endpoint).expect("connect");
                c
            })
            .collect();
        let counters = handler.counters();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counters.ledger_forgotten.load(Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "the second handshake was never taken");
            let _ = crate::zmqx::wait_any(handler.sockets(), zmq::POLLIN, Duration::from_millis(100));
            handler.serve().expect("serve");
        }
        assert_eq!(counters.ledger_forgotten.load(Relaxed), 1, "one of two outcomes past a bound of one");
        assert!(counters.status_lines().ends_with("handshake_ledger_forgotten=1\n"), "{}", counters.status_lines());
        assert_eq!(counters.refused(), 0, "not a refusal");
        drop(clients);
    }

    #[test]
    fn open_policy_accepts_anyone() {
        assert_eq!(ZapPolicy::default().decide(&req("192.0.2.9", "NULL", None)), Ok(()));
    }

    #[test]
    fn a_pair_whose_public_key_is_not_its_secrets_is_refused_and_open_modes_are_named() {
        let (a, b) = (Keypair::generate().expect("CURVE"), Keypair::generate().expect("CURVE"));
        assert_eq!(crate::zmqx::curve_public(&a.secret.0), Some(a.public.0), "libzmq derives the public key");
        let dir = crate::test_dir("mixed");
        let mixed = dir.join("mixed.key");
        let text = format!("curve\n    public-key = \"{}\"\n    secret-key = \"{}\"\n", a.public, b.secret_z85());
        write_file(&mixed, text.as_bytes(), 0o600).unwrap();
        let err = Keypair::load(&mixed).unwrap_err().to_string();
        assert!(err.contains(&format!("its public-key is not the one its secret-key makes ({})", b.public)), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let k = Path::new("k.key");
        for (mode, who) in [
            (0o640, "0640: its group can"),
            (0o604, "0604: every other user can"),
            (0o666, "0666: its group and every other user can"),
        ] {
            let line = open_key_warning(k, mode, Secret::Key);
            assert!(line.contains(&format!("secret key file k.key has mode {who} reach")), "{line}");
            assert!(line.contains("`chmod 600 k.key`"), "{line}");
        }
    }

    #[test]
    fn only_small_regular_files_are_read_as_keys_or_tokens() {
        // Before: /dev/zero as a key was read until memory ran out; a FIFO blocked the open.
        let dir = crate::test_dir("odd-keys");
        let fifo = dir.join("fifo.key");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let big = dir.join("big.key");
        std::fs::write(&big, vec![b'a'; MAX_KEY_FILE_BYTES as usize + 1]).unwrap();
        for (path, says) in [
            (Path::new("/dev/zero"), "it is not a regular file (a FIFO, socket or device)"),
            (fifo.as_path(), "it is not a regular file (a FIFO, socket or device)"),
            (dir.as_path(), "it is a directory"),
            (big.as_path(), "it holds 65537 bytes, more than a key or token file (at most 65536)"),
        ] {
            for err in [
                Keypair::load(path).map(|_| ()).unwrap_err(),
                load_public(path).map(|_| ()).unwrap_err(),
                HttpAccess::read_token(path).map(|_| ()).unwrap_err(),
            ] {
                let said = crate::diag::error_line(&anyhow::Error::new(err));
                assert!(said.contains(&format!("{}: {says}", path.display())), "{said}");
                assert_eq!(said.matches(says).count(), 1, "the cause once: {said}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let line = open_key_warning(Path::new("t"), 0o644, Secret::Token);
        assert!(line.starts_with("warning: bearer token file t has mode 0644: its group and every"), "{line}");
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_say_why() {
        let dir = crate::test_dir("keys");
        let pair = Keypair::generate().expect("this build has CURVE");
        let (key, public) = pair.write(&dir, "server").unwrap();
        let back = Keypair::load(&key).unwrap();
        assert_eq!(back.public, pair.public);
        assert_eq!(back.secret, pair.secret);
        assert_eq!(load_public(&public).unwrap(), pair.public);
        let err = Keypair::load(&public).unwrap_err().to_string();
        assert!(err.contains("no secret-key"), "{err}");
        std::fs::write(dir.join("short.pub"), "abc").unwrap();
        let err = load_public(&dir.join("short.pub")).unwrap_err().to_string();
        assert!(err.contains("40 Z85 characters"), "{err}");
        // Forty characters that are not all Z85 (a certificate's comment line): not a key.
        let comment = "#   ****  Generated on 2026-12-04  *****";
        let forty = comment.to_string();
        assert_eq!(forty.len(), 40);
        std::fs::write(dir.join("comment.pub"), &forty).unwrap();
        let err = load_public(&dir.join("comment.pub")).unwrap_err().to_string();
        assert!(err.contains("not Z85 text: ' '"), "{err}");
        // A certificate whose public-key line is missing is said to be so.
        std::fs::write(dir.join("nokey.pub"), format!("{comment}\nmetadata\n")).unwrap();
        let err = load_public(&dir.join("nokey.pub")).unwrap_err().to_string();
        assert!(err.contains("no public-key line"), "{err}");
        std::fs::remove_file(dir.join("nokey.pub")).unwrap();
        std::fs::remove_file(dir.join("comment.pub")).unwrap();
        let keys = load_public_keys(std::slice::from_ref(&dir)).unwrap_err().to_string();
        assert!(keys.contains("short.pub"), "a bad file in a key directory is named: {keys}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
