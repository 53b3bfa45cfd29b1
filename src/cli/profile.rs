//! `mdsub profile check FILE` and `mdsub profile show auto|builtin|FILE`:
//! check a tuning profile before a run, and see what a profile (or `auto` on
//! this host) resolves to: every thread's core and every endpoint as the
//! engine will connect it.

use std::fmt::Write as _;

use clap::{Args, Subcommand};

use super::args::{in_part, parse_thread_count};
use crate::host;
use crate::profile::{core_list, parse_core_range, Profile};

/// `mdsub profile`.
#[derive(Args, Debug)]
pub struct ProfileArgs {
    #[command(subcommand)]
    pub cmd: ProfileCmd,
}

#[derive(Subcommand, Debug)]
pub enum ProfileCmd {
    /// Check a profile file (one line naming the field and the fix if it is
    /// wrong) and print it resolved: defaults filled in, each thread's core,
    /// each endpoint as connected.
    Check {
        /// The profile (TOML).
        file: String,
        /// Check against another host's cores instead of this one's, e.g.
        /// `0-7` or `0,2,4-7` (interfaces are then not checked: they can only
        /// be looked up on the host that runs the engine).
        #[arg(long, value_parser = parse_core_list, value_name = "LIST")]
        cores: Option<CoreList>,
    },
    /// Print what a profile resolves to: `auto` (derived from this host's
    /// cores, saying why), `builtin`, or a file.
    Show {
        /// `auto`, `builtin` or a TOML file.
        profile: String,
        /// Shards for `auto` [default: 1].
        #[arg(long, value_parser = parse_thread_count, value_name = "COUNT")]
        shards: Option<usize>,
        /// Workers for `auto` [default: 1].
        #[arg(long, value_parser = parse_thread_count, value_name = "COUNT")]
        workers: Option<usize>,
    },
}

/// Core ids given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreList(pub Vec<usize>);

/// Parse a core list: `0-7`, `0,2,4-7`.
pub fn parse_core_list(s: &str) -> Result<CoreList, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        out.extend(in_part(s, part, parse_core_range)?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(CoreList(out))
}

/// Run `mdsub profile …`; returns what it printed.
pub fn run(args: &ProfileArgs) -> anyhow::Result<String> {
    let text = match &args.cmd {
        ProfileCmd::Check { file, cores } => {
            let p = Profile::load(file)?;
            let here = host::cores();
            let (host, interfaces) = match cores {
                Some(c) => (c.0.clone(), false),
                None => (here, true),
            };
            p.validate_for(&host, interfaces).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let mut s = format!("{file}: ok for cores {}", core_list(&host));
            if !interfaces {
                s += " (interfaces and [security] files not checked: they are looked up on the host that runs the engine)";
            }
            // Down now is no mistake of the profile (it may come up); the engine says it too.
            if interfaces {
                for (k, why) in p.interfaces_down() {
                    s += &format!(
                        "; but shard{k}: {why} (the engine starts, and its links come up once it carries traffic)"
                    );
                }
            }
            // The engine's own check: a shard with no endpoint runs only with --endpoint.
            if let Err(e) = p.check_endpoints() {
                s += &format!("; only with --endpoint: without it the engine refuses the profile ({e})");
            }
            s.push('\n');
            s + &resolved(&p, interfaces)
        }
        ProfileCmd::Show { profile, shards, workers } => {
            if profile == "auto" {
                show_auto(&host::cores(), shards.unwrap_or(1), workers.unwrap_or(1))
            } else if shards.is_some() || workers.is_some() {
                let given = if shards.is_some() { "--shards" } else { "--workers" };
                anyhow::bail!(super::UsageError(format!(
                    "{given} shapes `auto` only (`profile show auto {given} N`); `{profile}` has its own shards and \
                     workers"
                )));
            } else {
                let p = Profile::load(profile).map_err(|e| match e {
                    // A word that is no file: say what `show` takes.
                    crate::profile::ProfileError::Read { ref source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        anyhow::anyhow!("{e} (profile show takes auto, builtin or a TOML file)")
                    }
                    e => e.into(),
                })?;
                // Shown as it is, and said when this host could not run it.
                let here = match p.validate_for(&host::cores(), true) {
                    Ok(()) => String::new(),
                    Err(e) => format!(
                        "# not runnable on this host: {e} (`mdsub profile check {profile} --cores LIST` checks it \
                         for another host)\n"
                    ),
                };
                here + &resolved(&p, true)
            }
        }
    };
    crate::out!("{text}");
    Ok(text)
}

/// What `auto` derives on a host with cores `host`, and why.
pub fn show_auto(host: &[usize], shards: usize, workers: usize) -> String {
    let p = Profile::auto(host, shards, workers);
    let (shards, workers) = (shards.max(1), workers.max(1));
    let threads = 2 * shards + workers;
    let mut s = String::new();
    let _ = writeln!(s, "# host cores: {} ({} usable by this process)", core_list(host), host.len());
    let _ = writeln!(s, "# {shards} shard(s) x (I/O thread + reader) + {workers} worker(s) = {threads} engine threads");
    if host.len() > threads {
        let _ = writeln!(
            s,
            "# {} cores > {threads} threads: each thread gets a core of its own; core {} is left to the OS, \
             interrupts and the publisher",
            host.len(),
            host.first().copied().unwrap_or(0)
        );
    } else {
        let _ = writeln!(
            s,
            "# {} cores <= {threads} threads: nothing is pinned (pinned threads sharing too few cores only \
             stop the OS from spreading the load); the threads share cores",
            host.len()
        );
    }
    s + &resolved(&p, true)
}

/// The profile as TOML, then each thread's core and each endpoint as the
/// engine will connect it.
fn resolved(p: &Profile, interfaces: bool) -> String {
    let mut s = p.to_toml();
    let core = |c: Option<usize>| c.map(|c| format!("core {c}")).unwrap_or_else(|| "unpinned".into());
    let _ = writeln!(s, "\n# resolved: threads");
    let cfg = p.engine_config(None);
    for (k, sh) in cfg.shards.iter().enumerate() {
        let _ = writeln!(s, "#   {:<15} {}", format!("shard{k}-io"), core(sh.io_core));
        let _ = writeln!(s, "#   {:<15} {}", format!("shard{k}-reader"), core(sh.reader_core));
    }
    for (w, c) in cfg.worker_cores.iter().enumerate() {
        let _ = writeln!(s, "#   {:<15} {}", format!("worker{w}"), core(*c));
    }
    let _ = writeln!(s, "# resolved: endpoints as connected");
    for (k, sh) in cfg.shards.iter().enumerate() {
        let all: Vec<String> =
            sh.binds.iter().map(|b| format!("bind:{b}")).chain(sh.endpoints.iter().cloned()).collect();
        let eps = if all.is_empty() { "(none: give --endpoint)".to_string() } else { all.join(", ") };
        let note = match (&p.shards[k].interface, interfaces) {
            (Some(i), false) => format!("   (from `{i}`, resolved on the engine's host)"),
            // The interface is not on this host: nothing to bind the source to here.
            (Some(i), true) if !sh.endpoints.is_empty() && !sh.endpoints.iter().any(|e| e.contains(';')) => {
                format!("   (interface `{i}` is not on this host: shown without its source address)")
            }
            _ => String::new(),
        };
        let _ = writeln!(s, "#   shard{k}  {eps}{note}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(parse_core_list("0-3,6,2").expect("ok").0, vec![0, 1, 2, 3, 6]);
        assert!(parse_core_list("3-1").is_err());
        assert!(parse_core_list("x").is_err_and(|m| m.starts_with("not a core")));
        assert!(parse_core_list("0,x").is_err_and(|m| m.starts_with("`x`: not a core")));
    }

    #[test]
    fn auto_says_why() {
        let small = show_auto(&[0, 1], 1, 1);
        assert!(small.contains("nothing is pinned"), "{small}");
        let big = show_auto(&(0..8).collect::<Vec<_>>(), 2, 2);
        assert!(big.contains("each thread gets a core of its own; core 0 is left"), "{big}");
        assert!(big.contains("shard1-reader   core 4"), "{big}");
    }
}
