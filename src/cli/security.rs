//! `mdsub keygen` (write a CURVE key pair for a server or a client) and the
//! access flags every server and client command shares.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::engine::EngineConfig;
use crate::profile::SecurityProfile;
use crate::security::{
    load_public, load_public_keys, AddrBlock, ClientKeys, HttpAccess, Keypair, PublicKey, ServerAccess,
};

/// `mdsub keygen` arguments.
#[derive(Debug, Args)]
#[command(after_help = "Writes DIR/NAME.key (public and secret key, mode 0600: keep it on the host that \
uses it) and DIR/NAME.pub (public key only: give it to peers). Keys are the 40-character Z85 text \
libzmq's zmq_curve_keypair produces, in CZMQ's certificate layout. See docs/SECURITY.md.")]
pub struct KeygenArgs {
    /// Name of the pair: the files are NAME.key and NAME.pub.
    #[arg(value_parser = parse_key_name)]
    pub name: String,
    /// Directory to write them in (made if missing).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Replace existing files of that name (NAME.key or NAME.pub: either is refused without it;
    /// the new files get modes 0600 and 0644 whatever the old ones had).
    #[arg(long)]
    pub force: bool,
}

/// A key pair's name: a plain file name (the pair goes in --dir), not empty, no `/`, not
/// starting with `.` (`mdsub keygen ""` wrote the hidden files `.key` and `.pub`).
fn parse_key_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.starts_with('.') || s.contains('/') || s.contains('\0') {
        return Err("not a key name: a plain file name such as `server` (the pair goes in --dir)".into());
    }
    Ok(s.to_string())
}

/// Generate and write the pair; prints the two paths and the public key.
pub fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    if a.dir.exists() && !a.dir.is_dir() {
        anyhow::bail!(
            "--dir {}: not a directory (keygen writes NAME.key and NAME.pub into a directory)",
            a.dir.display()
        );
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot make the directory {}", a.dir.display()))?;
    let secret_path = a.dir.join(format!("{}.key", a.name));
    let public_path = a.dir.join(format!("{}.pub", a.name));
    if !a.force {
        // A NAME.pub alone may be a peer's key, put here to be trusted.
        for (path, what) in [(&secret_path, "a secret key"), (&public_path, "a public key (it may be a peer's)")] {
            if path.symlink_metadata().is_ok() {
                anyhow::bail!("{} exists: refusing to overwrite {what} (--force replaces it)", path.display());
            }
        }
    }
    let pair = Keypair::generate()?;
    let (secret, public) = pair.write(&a.dir, &a.name)?;
    crate::outln!("secret {}", secret.display());
    crate::outln!("public {}", public.display());
    crate::outln!("public-key {}", pair.public);
    Ok(())
}

/// A server's access flags (`clone-server`, `replay`): CURVE with an
/// allow-list of client keys, and/or a ZAP address allow-list.
#[derive(Debug, Args, Clone, Default)]
pub struct ServerAccessArgs {
    /// Demand CURVE: this server's secret key file (`mdsub keygen`'s NAME.key);
    /// clients need its NAME.pub (their `--server-key`).
    #[arg(long, value_name = "FILE")]
    pub curve_key: Option<PathBuf>,
    /// With --curve-key: only these clients' public keys (NAME.pub files, or directories of
    /// them; a directory with none is refused) are let in; repeatable. Without it, any client
    /// that knows the server key is let in.
    #[arg(long, value_name = "FILE|DIR", requires = "curve_key")]
    pub curve_allow: Vec<PathBuf>,
    /// Only peers from these addresses are let in (e.g. 127.0.0.1, 10.0.0.0/8); repeatable.
    /// Refused peers are counted and logged with their address and mechanism.
    #[arg(long, value_parser = parse_addr, value_name = "ADDR[/BITS]")]
    pub allow_addr: Vec<String>,
}

impl ServerAccessArgs {
    /// The access policy these flags describe (open when none is given).
    pub fn to_access(&self) -> anyhow::Result<ServerAccess> {
        server_access(self.curve_key.as_deref(), &self.curve_allow, &self.allow_addr, "")
    }
}

/// A CURVE client's flags (`clone-client`, `engine`): its pair and the server's public key.
#[derive(Debug, Args, Clone, Default)]
pub struct ClientKeyArgs {
    /// For servers that demand CURVE: this client's secret key file (`mdsub keygen`'s NAME.key).
    /// Both --curve-key and --server-key, or neither (one alone is refused, exit 2).
    #[arg(long, value_name = "FILE", requires = "server_key")]
    pub curve_key: Option<PathBuf>,
    /// For servers that demand CURVE: the servers' public key file (NAME.pub). Both
    /// --server-key and --curve-key, or neither (one alone is refused, exit 2).
    #[arg(long, value_name = "FILE", requires = "curve_key")]
    pub server_key: Option<PathBuf>,
}

impl ClientKeyArgs {
    /// The keys these flags name (None when neither is given).
    /// One without the other is refused as a flag (exit 2): `clone-client` takes them on either
    /// side of its action, where clap's `requires` would refuse a pair split across it.
    pub fn to_keys(&self) -> anyhow::Result<Option<ClientKeys>> {
        match (&self.curve_key, &self.server_key) {
            (Some(_), None) => {
                anyhow::bail!(super::UsageError("--curve-key needs --server-key (the servers' NAME.pub)".into()))
            }
            (None, Some(_)) => {
                anyhow::bail!(super::UsageError("--server-key needs --curve-key (this client's NAME.key)".into()))
            }
            _ => {}
        }
        client_keys(self.curve_key.as_deref(), self.server_key.as_deref())
    }
}

/// Load a client's pair and its server's public key; None when neither is given.
pub fn client_keys(key: Option<&Path>, server: Option<&Path>) -> anyhow::Result<Option<ClientKeys>> {
    match (key, server) {
        (Some(key), Some(server)) => Ok(Some(ClientKeys {
            client: Keypair::load(key).context("--curve-key")?,
            server_public: load_public(server).context("--server-key")?,
        })),
        (None, None) => Ok(None),
        _ => {
            anyhow::bail!("a CURVE client needs both its key file (curve_key) and the server's public key (server_key)")
        }
    }
}

/// Load a server policy: `key` (its secret key file) with the `allow`ed
/// client keys, and the `addrs` allowed; `prefix` names the flags in errors.
pub fn server_access(
    key: Option<&Path>,
    allow: &[PathBuf],
    addrs: &[String],
    prefix: &str,
) -> anyhow::Result<ServerAccess> {
    let curve = match key {
        None if !allow.is_empty() => anyhow::bail!("--{prefix}curve-allow needs --{prefix}curve-key"),
        None => None,
        Some(path) => Some((
            Keypair::load(path).with_context(|| format!("--{prefix}curve-key"))?,
            allow_list(allow, &format!("--{prefix}curve-allow"))?,
        )),
    };
    let allow_addrs = parse_addrs(addrs, &format!("--{prefix}allow-addr"))?;
    Ok(ServerAccess { curve, allow_addrs })
}

/// The client keys `paths` (the `flag`'s values) allow; an error names the flag
/// (`--curve-allow: DIR: no NAME.pub in it: …`).
pub fn allow_list(paths: &[PathBuf], flag: &str) -> anyhow::Result<HashSet<PublicKey>> {
    load_public_keys(paths).with_context(|| flag.to_string())
}

/// An address or CIDR block flag: checked as it is parsed, kept as written (a profile's
/// lists are strings too, merged with the flags').
pub fn parse_addr(s: &str) -> Result<String, String> {
    s.parse::<AddrBlock>()
        .map(|_| s.to_string())
        .map_err(|_| "not an address or CIDR block (e.g. 127.0.0.1, 10.0.0.0/8, ::1)".to_string())
}

/// Parse address blocks; `flag` names them in the error.
pub fn parse_addrs(addrs: &[String], flag: &str) -> anyhow::Result<Vec<AddrBlock>> {
    addrs.iter().map(|a| a.parse::<AddrBlock>().with_context(|| flag.to_string())).collect()
}

/// The engine's access flags (override the profile's `[security]`): CURVE
/// keys for the feed, who may subscribe to the monitor, who may scrape `/metrics`.
#[derive(Debug, Args, Clone, Default)]
pub struct EngineAccessArgs {
    /// Every shard's SUB presents these to publishers that demand CURVE
    /// (`mdsub replay --curve-key`).
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    /// The monitor PUB demands CURVE: its secret key file (NAME.key); subscribers need its NAME.pub.
    #[arg(long, value_name = "FILE")]
    pub monitor_curve_key: Option<PathBuf>,
    /// With --monitor-curve-key: only these subscribers' public keys (files or
    /// directories of NAME.pub; a directory with none is refused); repeatable.
    #[arg(long, value_name = "FILE|DIR", requires = "monitor_curve_key")]
    pub monitor_curve_allow: Vec<PathBuf>,
    /// Only subscribers from these addresses reach the monitor (ZAP); repeatable.
    #[arg(long, value_parser = parse_addr, value_name = "ADDR[/BITS]")]
    pub monitor_allow_addr: Vec<String>,
    /// Only scrapers from these addresses get /metrics (others: 403); repeatable.
    #[arg(long, value_parser = parse_addr, value_name = "ADDR[/BITS]")]
    pub metrics_allow_addr: Vec<String>,
    /// /metrics demands `Authorization: Bearer TOKEN`, TOKEN being this file's
    /// content (Prometheus: `authorization: {credentials_file: FILE}`; others: 401).
    #[arg(long, value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

impl EngineAccessArgs {
    /// The flag that set `[security]` field `field` (`security.curve_key`), if a flag did.
    pub fn flag_of(&self, field: &str) -> Option<&'static str> {
        let (flag, given) = match field.strip_prefix("security.")? {
            "curve_key" => ("--curve-key", self.keys.curve_key.is_some()),
            "server_key" => ("--server-key", self.keys.curve_key.is_some()),
            "monitor_curve_key" => ("--monitor-curve-key", self.monitor_curve_key.is_some()),
            // Given with --monitor-curve-key, the flags' allow-list replaces the profile's.
            "monitor_curve_allow" => ("--monitor-curve-allow", self.monitor_curve_key.is_some()),
            "monitor_allow_addr" => ("--monitor-allow-addr", !self.monitor_allow_addr.is_empty()),
            "metrics_allow_addr" => ("--metrics-allow-addr", !self.metrics_allow_addr.is_empty()),
            "metrics_token_file" => ("--metrics-token-file", self.metrics_token_file.is_some()),
            _ => return None,
        };
        given.then_some(flag)
    }

    /// Put the flags given over the profile's `[security]`.
    pub fn apply(&self, p: &mut SecurityProfile) {
        if self.keys.curve_key.is_some() {
            p.curve_key.clone_from(&self.keys.curve_key);
            p.server_key.clone_from(&self.keys.server_key);
        }
        if self.monitor_curve_key.is_some() {
            p.monitor_curve_key.clone_from(&self.monitor_curve_key);
            p.monitor_curve_allow.clone_from(&self.monitor_curve_allow);
        }
        let replace = |to: &mut Vec<String>, from: &Vec<String>| {
            if !from.is_empty() {
                to.clone_from(from);
            }
        };
        replace(&mut p.monitor_allow_addr, &self.monitor_allow_addr);
        replace(&mut p.metrics_allow_addr, &self.metrics_allow_addr);
        if self.metrics_token_file.is_some() {
            p.metrics_token_file.clone_from(&self.metrics_token_file);
        }
    }
}

/// `demo`, `bench` and `capacity` feed their engine from a publisher of their own and serve no
/// `/metrics`, so a profile's `[security]` cannot apply there as `mdsub engine` applies it. The
/// monitor's access does apply to `demo --monitor` (given the engine's `cfg`); every other field
/// set is said once, with why, not dropped silently.
pub fn apply_what_a_local_run_can(
    cmd: &str,
    spec: &str,
    p: &SecurityProfile,
    cfg: Option<&mut EngineConfig>,
) -> anyhow::Result<()> {
    let feed = format!("the feed comes from {cmd}'s own publisher");
    let metrics = format!("{cmd} serves no /metrics");
    let monitor = format!("{cmd} has no --monitor");
    let applies_monitor = cfg.is_some();
    if let Some(cfg) = cfg {
        cfg.monitor_access =
            server_access(p.monitor_curve_key.as_deref(), &p.monitor_curve_allow, &p.monitor_allow_addr, "monitor-")?;
    }
    let groups = [
        (vec![("curve_key", p.curve_key.is_some()), ("server_key", p.server_key.is_some())], &feed),
        (
            vec![
                ("metrics_allow_addr", !p.metrics_allow_addr.is_empty()),
                ("metrics_token_file", p.metrics_token_file.is_some()),
            ],
            &metrics,
        ),
        (
            if applies_monitor {
                Vec::new()
            } else {
                vec![
                    ("monitor_curve_key", p.monitor_curve_key.is_some()),
                    ("monitor_curve_allow", !p.monitor_curve_allow.is_empty()),
                    ("monitor_allow_addr", !p.monitor_allow_addr.is_empty()),
                ]
            },
            &monitor,
        ),
    ];
    let said: Vec<String> = groups
        .iter()
        .filter_map(|(fields, why)| {
            let set: Vec<String> = fields.iter().filter(|f| f.1).map(|f| format!("security.{}", f.0)).collect();
            (!set.is_empty()).then(|| format!("{} ({why})", set.join(", ")))
        })
        .collect();
    if !said.is_empty() {
        crate::diag!("{cmd}: --profile {spec}: not applied: {}; mdsub engine applies them", said.join("; "));
    }
    Ok(())
}

/// Read the keys and token `p` names into `cfg` (after its outputs are set). `named` says
/// where a `[security]` field (`security.metrics_token_file`) was set: its flag, or the
/// profile's field (an error blamed `--metrics-token-file` on a profile that set it).
pub fn apply_security(
    p: &SecurityProfile,
    cfg: &mut EngineConfig,
    named: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    cfg.feed_keys = client_keys(p.curve_key.as_deref(), p.server_key.as_deref())?;
    cfg.monitor_access =
        server_access(p.monitor_curve_key.as_deref(), &p.monitor_curve_allow, &p.monitor_allow_addr, "monitor-")?;
    let token = p.metrics_token_file.as_deref().map(HttpAccess::read_token).transpose()?;
    let allow_addrs = parse_addrs(&p.metrics_allow_addr, "--metrics-allow-addr")?;
    cfg.outputs.metrics_access = HttpAccess { allow_addrs, token };
    // The fields set, as their setter names them.
    let set = |fields: &[(&str, bool)]| -> String {
        let names: Vec<String> = fields.iter().filter(|f| f.1).map(|f| named(&format!("security.{}", f.0))).collect();
        names.join(" and ")
    };
    if cfg.monitor.is_none() && !cfg.monitor_access.is_open() {
        let by = set(&[
            ("monitor_curve_key", p.monitor_curve_key.is_some()),
            ("monitor_allow_addr", !p.monitor_allow_addr.is_empty()),
        ]);
        anyhow::bail!("{by}: protects the monitor PUB, and there is none: give --monitor EP (or [snail] monitor) too");
    }
    if cfg.outputs.listen.is_none() && !cfg.outputs.metrics_access.is_open() {
        let by = set(&[
            ("metrics_allow_addr", !p.metrics_allow_addr.is_empty()),
            ("metrics_token_file", p.metrics_token_file.is_some()),
        ]);
        anyhow::bail!("{by}: protects /metrics, and it is not served: give --metrics-listen too");
    }
    Ok(())
}
