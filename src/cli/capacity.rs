//! `mdsub capacity`: find the highest rate this host sustains inside a
//! latency budget, per configuration; write the results folder and the
//! winning profile.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::args::{
    in_part, parse_connect_endpoint, parse_count, parse_count_nonzero_usize, parse_duration, parse_duration_nonzero,
    parse_hwm, parse_idle, parse_rate, parse_thread_count, Endpoint, Idle,
};
use super::engine::{parse_handoff, parse_routing};
use super::load_profile;
use crate::agent::StopFlag;
use crate::bench::capacity::search::{parse_quantile, SearchConfig, Sla, SlaPoint, Verdict, MIN_RATE};
use crate::bench::capacity::trial::PublisherSide;
use crate::bench::capacity::{
    self, ending_text, expand_grid, CapacityConfig, CapacityResult, Event, NoWinner, Setting, Vary, FAILED_AT,
};
use crate::diag::human_ns;
use crate::engine::handler::HandlerSpec;
use crate::feed::GeneratorConfig;

/// `mdsub capacity`.
#[derive(Args, Debug)]
#[command(mut_arg("payload_bytes", super::feed::payload_into_the_engine))]
pub struct CapacityArgs {
    /// A latency budget, `PERCENTILE=DURATION` (p50, p99, p99.9, p99.99, max);
    /// repeat for more. Measured from each message's intended send time, over
    /// the hold. Default: p99=2ms and p99.9=10ms.
    #[arg(long = "sla", value_parser = parse_sla_point, value_name = "pNN=DURATION")]
    pub sla: Vec<SlaPoint>,
    /// Messages a trial may lose and still pass (by end-of-stream counts and sequence gaps).
    #[arg(long, value_parser = parse_count, default_value = "0", value_name = "COUNT")]
    pub loss_budget_msgs: u64,
    /// A configuration to compare: a profile TOML, `builtin` or `auto`; repeat
    /// for more. Default: builtin.
    #[arg(long = "profile", value_name = "FILE|builtin|auto")]
    pub profiles: Vec<String>,
    /// Cross every profile with these values of a setting, `KEY=V1,V2,…`;
    /// repeat for a grid, each setting once (`--vary handler` beside `--handler`, or `--vary idle`
    /// beside `--idle`, is refused). Keys: workers, shards, batch_max, idle, handoff,
    /// routing, rcvhwm_msgs, handoff_hwm_msgs, handler (e.g. handler=latency,work:20000).
    /// Values are written as the flags write them: counts `100k`, `2M` (rcvhwm_msgs=100k).
    #[arg(long = "vary", value_parser = parse_vary, value_name = "KEY=V1,V2")]
    pub vary: Vec<Vary>,
    /// Handler every configuration's workers run (overrides the profiles'):
    /// latency, book, last, verify or work:NANOS.
    #[arg(long, value_name = "HANDLER")]
    pub handler: Option<HandlerSpec>,
    /// Idle strategy of every configuration's engine readers and workers (overrides the
    /// profiles'; `--vary idle` beside it is refused).
    #[arg(long, value_enum)]
    pub idle: Option<Idle>,
    // Its help is the engine's bound (max_msg_bytes), said by `payload_into_the_engine`.
    #[arg(long, value_parser = super::feed::parse_payload_bytes, default_value = "100", value_name = "BYTES")]
    pub payload_bytes: usize,
    /// Number of symbols (topics), Zipf-popular: 1 to 1048576, and their frames (one per
    /// symbol, built before sending) within 256 MiB.
    #[arg(long, value_parser = super::feed::parse_symbols, default_value = "100", value_name = "COUNT")]
    pub symbols: usize,
    /// Each trial first offers its rate this long, unmeasured: the schedule's first rate x
    /// warm-up messages, counted where the engine handled them (the hold has none of them).
    #[arg(long, value_parser = parse_duration, default_value = "500ms", value_name = "DURATION")]
    pub warmup: Duration,
    /// Then holds it this long: the measured part of a trial.
    #[arg(long, value_parser = parse_duration_nonzero, default_value = "2s", value_name = "DURATION")]
    pub hold: Duration,
    /// Runs per trial, each with a fresh engine; medians are judged, the spread is reported.
    #[arg(long, value_parser = parse_count_nonzero_usize, default_value = "3", value_name = "COUNT")]
    pub runs: usize,
    /// The first rate offered (msg/s), 100 to 1000M, default 10k; the search doubles from there
    /// until a trial fails (and halves while the first ones fail, down to 100 msg/s, the last
    /// rate it tries). `NAME=COUNT` gives the configuration NAME its own (repeat for more); a
    /// stopped run prints the command that carries it on with them.
    #[arg(long, value_parser = parse_start_rate, value_name = "[NAME=]COUNT")]
    pub start_rate: Vec<StartRate>,
    /// A rate known to fail, above the start (msg/s; `NAME=COUNT` for configuration NAME's):
    /// the search bisects below it and never offers it (one above --max-rate bounds nothing: it
    /// is no failure of this run). A stopped run's carry-on command gives it for each search
    /// that had failed a rate above where it carries on from.
    #[arg(long, value_parser = parse_start_rate, value_name = "[NAME=]COUNT")]
    pub failed_at: Vec<StartRate>,
    /// Never offer more than this (msg/s), 100 to 1000M.
    #[arg(long, value_parser = parse_search_rate, value_name = "COUNT")]
    pub max_rate: Option<u64>,
    /// Bisect until the failing and passing rates are this close, e.g. `5%`.
    #[arg(long, value_parser = parse_percent, default_value = "5%", value_name = "PERCENT")]
    pub tolerance: f64,
    /// Stop the whole search after this long, as `engine --max-duration` (results so far are
    /// written, marked capped). A search the cap stops before any rate failed has no knee, only
    /// `at least N msg/s`; a run the cap stops before every configuration's knee was found (one
    /// not searched, or not narrowed to --tolerance) has no winner (exit 5).
    #[arg(long = "max-duration", value_parser = parse_duration, default_value = "10m", value_name = "DURATION")]
    pub time_cap: Duration,
    /// The old spelling of --max-duration, refused with the new one's name.
    #[arg(long = "time-cap", hide = true, value_name = "DURATION", num_args = 0..=1, default_missing_value = "", value_parser = |_: &str| -> Result<String, String> {
        Err("--time-cap is now --max-duration (as the engine's cap on its run): give --max-duration".into())
    })]
    pub old_time_cap: Option<String>,
    /// The results folder (named DATE-HOST-COMMIT, or DATE-HOST-COMMIT-2, -3, … when
    /// another run already has that name) is made in this directory.
    #[arg(long, default_value = "capacity-results", value_name = "DIR")]
    pub out: PathBuf,
    /// The results folder of a stopped run (its carry-on command gives it): the searches it
    /// finished (same configuration name and profile) are taken from there, their trials' files
    /// copied, not searched again; refused when its trials were measured with other settings.
    #[arg(long, value_name = "DIR")]
    pub take_finished_from: Option<PathBuf>,
    /// An external publisher driving the engine: `connect:EP` or `EP`, the control
    /// endpoint of `mdsub replay --serve-trials bind:EP`, maybe on another host.
    /// Default: a publisher in this process, sharing this host with the engine.
    #[arg(long, value_parser = parse_connect_endpoint, value_name = "[connect:]EP")]
    pub publisher: Option<Endpoint>,
    /// The in-process publisher never sends faster than this (msg/s): a load
    /// generator that cannot keep up. Trials above it are "rate not achieved". 1 to 1000M.
    /// Not with --publisher: give that replay --rate.
    #[arg(long, value_parser = parse_rate_nonzero, value_name = "COUNT", conflicts_with = "publisher")]
    pub publisher_max_rate: Option<u64>,
    /// The in-process publisher's send high-water mark per subscriber, in messages. Not with
    /// --publisher: give that replay --sndhwm-msgs.
    #[arg(long, value_parser = parse_hwm, default_value = "100k", value_name = "COUNT", conflicts_with = "publisher")]
    pub sndhwm_msgs: i32,
    /// Print the summary as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `p99=2ms`.
pub fn parse_sla_point(s: &str) -> Result<SlaPoint, String> {
    let (q, d) = s.split_once('=').ok_or_else(|| "not PERCENTILE=DURATION, e.g. p99=2ms".to_string())?;
    let quantile = in_part(s, q, parse_quantile)?;
    // A budget of 0 was taken: no latency is 0, so every trial failed, down to 100 msg/s.
    let budget = in_part(s, d, |d| match parse_duration(d)? {
        b if b.is_zero() => Err("must be more than 0: no message takes no time, so no trial would pass".into()),
        b => Ok(b),
    })?;
    Ok(SlaPoint { quantile, budget_ns: budget.as_nanos().min(u64::MAX as u128) as u64 })
}

/// `workers=1,2`, `rcvhwm_msgs=10k,100k`: each value read by the parser of the flag that sets
/// the same thing (`--workers`, `--sndhwm-msgs`'s counts, `--idle`, `--handoff`, `--routing`,
/// `--handler`), a bad one refused naming the key and the value.
pub fn parse_vary(s: &str) -> Result<Vary, String> {
    let (k, v) = s.split_once('=').ok_or_else(|| "not KEY=V1,V2, e.g. workers=1,2".to_string())?;
    let key = k.trim();
    let read: fn(&str) -> Result<Setting, String> = match key {
        "workers" => |v| parse_thread_count(v).map(Setting::Workers),
        "shards" => |v| parse_thread_count(v).map(Setting::Shards),
        "batch_max" => |v| parse_count_nonzero_usize(v).map(Setting::BatchMax),
        "idle" => |v| parse_idle(v).map(|i| Setting::Idle(i.name())),
        "handoff" => |v| parse_handoff(v).map(Setting::HandOff),
        "routing" => |v| parse_routing(v).map(Setting::Routing),
        "rcvhwm_msgs" => |v| parse_hwm(v).map(Setting::RcvhwmMsgs),
        "handoff_hwm_msgs" => |v| parse_hwm(v).map(Setting::HandoffHwmMsgs),
        "handler" => |v| v.parse::<HandlerSpec>().map(Setting::Handler),
        _ => return Err(format!("`{key}` cannot be varied; use one of {}", capacity::VARY_KEYS.join(", "))),
    };
    let values = v
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| read(x).map(|setting| (x.to_string(), setting)).map_err(|e| format!("{key}={x}: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    if values.is_empty() {
        return Err("no values given".into());
    }
    Ok(Vary { key: key.to_string(), values })
}

/// A rate the search may offer (`--start-rate`, `--max-rate`): [`MIN_RATE`] msg/s up to `--rate`'s
/// bound. Below it the search offers nothing (0 msg/s was taken and the start raised to 100
/// without a word).
pub fn parse_search_rate(s: &str) -> Result<u64, String> {
    match parse_rate(s)? {
        r if r < MIN_RATE => Err(format!("at least {MIN_RATE} msg/s, the lowest rate the search offers")),
        r => Ok(r),
    }
}

/// One `--start-rate`: every configuration's first rate, or one configuration's.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRate {
    /// The configuration it is for (all before the last `=`: a name may hold one, as
    /// `builtin handler=work:20000`); None for every configuration without its own.
    pub name: Option<String>,
    pub rate: u64,
}

/// `10k` or `NAME=10k` ([`StartRate`]).
pub fn parse_start_rate(s: &str) -> Result<StartRate, String> {
    match s.rsplit_once('=') {
        Some((name, rate)) => {
            Ok(StartRate { name: Some(name.to_string()), rate: in_part(s, rate, parse_search_rate)? })
        }
        None => Ok(StartRate { name: None, rate: parse_search_rate(s)? }),
    }
}

/// The first rate of every configuration without its own, and each configuration's own, from
/// `--start-rate`: the plain form at most once, each name once and one of `names`.
fn start_rates(given: &[StartRate], names: &[&str]) -> Result<(u64, Vec<(String, u64)>), String> {
    let (global, own) = rates_by_name("--start-rate", given, names)?;
    Ok((global.unwrap_or(SearchConfig::default().start_rate), own))
}

/// The rate `flag` (`--start-rate`, `--failed-at`) gives every configuration without its own,
/// if given, and each configuration's own: the plain form at most once, each name once and one
/// of `names`.
#[allow(clippy::type_complexity)]
fn rates_by_name(flag: &str, given: &[StartRate], names: &[&str]) -> Result<(Option<u64>, Vec<(String, u64)>), String> {
    let mut global = None;
    let mut own: Vec<(String, u64)> = Vec::new();
    for g in given {
        match &g.name {
            None => {
                if let Some(first) = global.replace(g.rate) {
                    return Err(format!(
                        "{flag} given twice ({first} and {}): give every configuration's once, \
                         and NAME=COUNT for one configuration's own",
                        g.rate
                    ));
                }
            }
            Some(n) if !names.contains(&n.as_str()) => {
                return Err(format!(
                    "{flag} {n}={}: no configuration is named `{n}`; the configurations: {}",
                    g.rate,
                    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                ))
            }
            Some(n) if own.iter().any(|o| &o.0 == n) => {
                return Err(format!("{flag} {n}=… given twice: give each configuration one rate"))
            }
            Some(n) => own.push((n.clone(), g.rate)),
        }
    }
    Ok((global, own))
}

/// `--publisher-max-rate`: a rate the publisher can send, 1 msg/s or more.
pub fn parse_rate_nonzero(s: &str) -> Result<u64, String> {
    match parse_rate(s)? {
        0 => Err("must be at least 1 msg/s".into()),
        r => Ok(r),
    }
}

/// `--out`: the directory the results folder is made in, or where it will be made; a file there
/// (or in its path) is said as what it is. Before: `creating FILE/DATE-HOST-COMMIT: File exists`.
fn check_out_dir(out: &std::path::Path) -> anyhow::Result<()> {
    let Some(found) = out.ancestors().find(|a| !a.as_os_str().is_empty() && std::fs::metadata(a).is_ok()) else {
        return Ok(());
    };
    if std::fs::metadata(found).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let what = if found == out { String::new() } else { format!("{} is ", found.display()) };
    anyhow::bail!("--out {}: {what}not a directory (the results folder is made in it)", out.display())
}

/// `5%` or `0.05`.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    };
    match v {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err("not a percentage between 0 and 100, e.g. 5%".into()),
    }
}

/// The exit status of a finished search: [`EXIT_NO_WINNER`](super::EXIT_NO_WINNER) when it has
/// no winner because none passed, the time cap came first or another configuration may take
/// more than the best knee, else 0. Ctrl-C keeps 0: the
/// results so far are written, marked interrupted, as for every command that shows what it has.
pub fn exit_status(r: &CapacityResult) -> i32 {
    match r.extra.no_winner {
        Some(NoWinner::NoPass | NoWinner::Capped | NoWinner::Undecided) => super::EXIT_NO_WINNER,
        Some(NoWinner::Interrupted | NoWinner::Failed) | None => 0,
    }
}

/// The words of the command line, for the command a stopped run prints to carry on (and the
/// folder's name in summary.json): a word that is not UTF-8 is refused, as that command and the
/// summary could name it only as another word. Before, it was rendered lossily (`\u{FFFD}`), and
/// the printed command named another file.
fn command_words(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Vec<String>, String> {
    args.map(|w| {
        w.into_string().map_err(|w| {
            format!(
                "{w:?} is not UTF-8: capacity's summary and the command that carries a stopped run on name \
                 every argument as text; give a name in UTF-8"
            )
        })
    })
    .collect()
}

/// What `--take-finished-from DIR` took, said before the first trial.
fn taken_text(dir: &std::path::Path, taken: &[capacity::ConfigResult]) -> String {
    match taken {
        [] => format!("taken from {}: nothing (no search with these names and profiles finished there)", dir.display()),
        t => format!(
            "taken from {} (finished there, not searched again): {}",
            dir.display(),
            t.iter().map(|c| format!("`{}` (knee {})", c.name, capacity::knee_text(c))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Run `mdsub capacity`.
pub fn capacity(args: &CapacityArgs, stop: &StopFlag) -> anyhow::Result<CapacityResult> {
    let command = command_words(std::env::args_os()).map_err(super::UsageError)?;
    capacity::check_time_cap(args.time_cap, args.warmup, args.hold, args.runs).map_err(super::UsageError)?;
    check_out_dir(&args.out)?;
    let names = if args.profiles.is_empty() { vec!["builtin".to_string()] } else { args.profiles.clone() };
    let mut bases = Vec::with_capacity(names.len());
    for n in &names {
        let mut p = load_profile(n)?;
        super::security::apply_what_a_local_run_can("capacity", n, &p.security, None)?;
        super::override_idle_handler(&mut p, args.idle, args.handler);
        bases.push((p, crate::profile::Origin::of(n)));
    }
    // Both were taken, and the grid's handlers silently replaced the one --handler gave.
    if let (Some(h), Some(v)) = (args.handler, args.vary.iter().find(|v| v.key == "handler")) {
        let values = v.values.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(",");
        return Err(super::UsageError(format!(
            "--handler {h} and --vary handler={values}: one gives every configuration's handler, the other varies \
             it; give one (--vary handler={h},{values} to compare them)"
        ))
        .into());
    }
    // As for --handler: the grid's values would silently replace the one --idle gave.
    if let (Some(i), Some(v)) = (args.idle, args.vary.iter().find(|v| v.key == "idle")) {
        let values = v.values.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(",");
        let i = i.name();
        return Err(super::UsageError(format!(
            "--idle {i} and --vary idle={values}: one gives every configuration's idle strategy, the other varies \
             it; give one (--vary idle={i},{values} to compare them)"
        ))
        .into());
    }
    let host = crate::host::cores();
    // What the grid refuses is a --vary value (the base profiles were checked as they loaded).
    let configurations = expand_grid(&bases, &args.vary, &host).map_err(super::UsageError)?;
    let names: Vec<&str> = configurations.iter().map(|c| c.name.as_str()).collect();
    let (start_rate, own_start_rates) = start_rates(&args.start_rate, &names).map_err(super::UsageError)?;
    // A start above the maximum was taken, said as `from START msg/s` (summary.json's
    // `start_rate` too), while the search offered the maximum first.
    let starts = std::iter::once((None, start_rate)).chain(own_start_rates.iter().map(|(n, r)| (Some(n), *r)));
    for (name, rate) in starts {
        if let Some(max) = args.max_rate.filter(|&m| m < rate) {
            let flag = name.map_or(rate.to_string(), |n| format!("{n}={rate}"));
            return Err(super::UsageError(format!(
                "--start-rate {flag} is above --max-rate {max}: the search never offers more than the maximum; \
                 give a start at or below it"
            ))
            .into());
        }
    }
    let (failed_at, own_failed_ats) = rates_by_name(FAILED_AT, &args.failed_at, &names).map_err(super::UsageError)?;
    // A rate known to fail at or below the start would be passed or dropped at the first trial.
    for name in &names {
        let start = own_start_rates.iter().find(|s| &s.0 == name).map_or(start_rate, |s| s.1);
        let own = own_failed_ats.iter().find(|f| &f.0 == name);
        if let Some(f) = own.map(|f| f.1).or(failed_at).filter(|&f| f <= start) {
            let given = own.map_or(f.to_string(), |_| format!("{name}={f}"));
            return Err(super::UsageError(format!(
                "{FAILED_AT} {given} is not above `{name}`'s start rate ({start} msg/s): a rate known to fail is one \
                 above where the search starts"
            ))
            .into());
        }
    }
    let mut points = args.sla.clone();
    // One percentile given two budgets was taken, both judged (`pass rule: p99 <= 1.00ms, p99 <=
    // 2.00ms`): the larger one never decided anything.
    for (i, p) in points.iter().enumerate() {
        if let Some(q) = points[..i].iter().find(|q| q.quantile == p.quantile) {
            anyhow::bail!(super::UsageError(format!(
                "--sla {} given twice ({} and {}): give each percentile one budget",
                p.name(),
                crate::diag::human_ns(q.budget_ns),
                crate::diag::human_ns(p.budget_ns)
            )));
        }
    }
    if points.is_empty() {
        points = vec![
            SlaPoint { quantile: 0.99, budget_ns: 2_000_000 },
            SlaPoint { quantile: 0.999, budget_ns: 10_000_000 },
        ];
    }
    let publisher = match &args.publisher {
        Some(ep) => PublisherSide::Remote { control: ep.endpoint.clone() },
        None => PublisherSide::Local { max_rate: args.publisher_max_rate, sndhwm_msgs: args.sndhwm_msgs },
    };
    let mut cfg = CapacityConfig {
        configurations,
        sla: Sla { points, loss_budget_msgs: args.loss_budget_msgs, ..Default::default() },
        search: SearchConfig {
            start_rate,
            tolerance: args.tolerance,
            max_rate: args.max_rate,
            failed_at,
            ..Default::default()
        },
        warmup: args.warmup,
        hold: args.hold,
        runs: args.runs.max(1),
        feed: GeneratorConfig { symbols: args.symbols.max(1), payload_bytes: args.payload_bytes, ..Default::default() },
        time_cap: args.time_cap,
        out_dir: args.out.clone(),
        publisher,
        start_rates: own_start_rates,
        failed_ats: own_failed_ats,
        command,
        taken: Vec::new(),
    };
    if let Some(dir) = &args.take_finished_from {
        cfg.taken = capacity::finished_in(dir, &cfg)?;
    }
    cfg.feed.check().map_err(|e| super::UsageError(format!("--symbols, --payload-bytes: {e}")))?;
    for c in &cfg.configurations {
        super::feed::check_frames_fit(&cfg.feed, c.profile.max_msg_bytes)
            .map_err(|e| e.context(format!("configuration `{}`", c.name)))?;
    }
    let machine = crate::bench::stamp::Machine::here();
    if !args.json {
        crate::outln!("mdsub capacity  {machine}");
        crate::outln!("pass rule: {}", capacity::describe_sla(&cfg.sla));
        crate::outln!(
            "configurations: {}",
            cfg.configurations.iter().map(|c| format!("`{}`", c.name)).collect::<Vec<_>>().join(", ")
        );
        match &cfg.publisher {
            PublisherSide::Local { .. } => crate::outln!(
                "publisher: in this process, SHARING THIS HOST ({} cores) with the engine; the knees below are \
                 this box's with its own load generator on it (use --publisher connect:EP to drive it from another host)",
                machine.cores
            ),
            PublisherSide::Remote { control } => crate::outln!("publisher: another process, driven at {control}"),
        }
        crate::outln!(
            "trials: {:?} warm-up + {:?} hold, {} run(s) each, from {} msg/s{}, tolerance {:.0}%, time cap {:?}",
            cfg.warmup,
            cfg.hold,
            cfg.runs,
            cfg.search.start_rate,
            cfg.start_rates.iter().map(|(n, r)| format!(" (`{n}` from {r})")).collect::<String>(),
            cfg.search.tolerance * 100.0,
            cfg.time_cap
        );
        if let Some(dir) = &args.take_finished_from {
            crate::outln!("{}", taken_text(dir, &cfg.taken));
        }
        // The lowest first rate measures the fewest messages.
        let lowest = cfg.configurations.iter().map(|c| cfg.search_of(&c.name).start_rate).min();
        let lowest = lowest.unwrap_or(cfg.search.start_rate);
        if let Some(note) = capacity::thin_percentile_note(&cfg.sla, lowest as f64, cfg.hold) {
            crate::outln!("note: {note}");
        }
    }
    let pb = indicatif::ProgressBar::new(1);
    pb.set_draw_target(if args.json {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr_with_hz(4)
    });
    if let Ok(style) = indicatif::ProgressStyle::with_template("capacity [{bar:30}] {pos}/{len} trials  {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    crate::diag::draw_lines_above(&pb);
    let json = args.json;
    super::run_under_way();
    let result = capacity::run(&cfg, stop, &mut |ev| match ev {
        Event::TrialStarted { config, rate, purpose, done, estimate_left, eta_s } => {
            pb.set_length((done + estimate_left) as u64);
            pb.set_position(done as u64);
            let left = crate::diag::human_duration((eta_s.max(0.0).round() as u64).saturating_mul(1_000_000_000));
            pb.set_message(format!("`{config}` {rate} msg/s ({}), about {left} left", purpose.name()));
        }
        Event::TrialDone { config, summary } => {
            pb.inc(1);
            let at = |q: f64| summary.at(q).map(human_ns).unwrap_or_else(|| "-".into());
            let verdict = match &summary.verdict {
                Verdict::Fail { reasons } => format!("FAIL ({})", reasons.join(", ")),
                Verdict::RateNotAchieved { achieved } => {
                    format!("RATE NOT ACHIEVED (publisher sent {achieved:.0} msg/s; not the engine's limit)")
                }
                v => v.word().to_string(),
            };
            let line = format!(
                "  {config:<28} {:>9} msg/s  achieved {:>9.0}  lost {:>5}  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}  {verdict}",
                summary.offered,
                summary.achieved,
                summary.lost.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
                at(0.5),
                at(0.99),
                at(0.999),
                at(1.0),
            );
            // With --json, stdout is the one JSON object: the trials go to stderr, so a long
            // search still shows progress. A hidden bar (not a terminal) prints nothing: print
            // plainly then.
            if json {
                crate::diag!("{line}");
            } else if pb.is_hidden() {
                crate::outln!("{line}");
            } else {
                pb.println(line);
            }
        }
        Event::ConfigDone { .. } => {}
    });
    pb.finish_and_clear();
    let result = result?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(result);
    }
    crate::outln!("knees:");
    for c in &result.extra.configurations {
        let at = |n: &str| {
            c.at_knee
                .as_ref()
                .and_then(|k| k.percentiles.iter().find(|p| p.0 == n))
                .map(|p| format!("{} [{}–{}]", human_ns(p.1), human_ns(p.2), human_ns(p.3)))
                .unwrap_or_else(|| "-".into())
        };
        crate::outln!(
            "  {:<28} {:>9}  p50 {}  p99 {}  p99.9 {}  max {}  ({} trials; {})",
            c.name,
            capacity::knee_text(c),
            at("p50"),
            at("p99"),
            at("p99.9"),
            at("max"),
            c.outcome.trials,
            ending_text(c.outcome.ending)
        );
        if !c.outcome.contradictions.is_empty() {
            crate::outln!("    NON-MONOTONIC: {}", capacity::contradictions_text(&c.outcome.contradictions));
        }
        if let Some(note) = &c.thin_percentile {
            crate::outln!("    note: {note}");
        }
        if let Some(rate) = c.carry_on_from {
            crate::outln!("    stopped before its knee was found: carry on from {rate} msg/s");
        }
        if let Some(dir) = &c.taken_from {
            crate::outln!("    taken from {}, where its search finished (not searched again)", dir.display());
        }
        if let Some(r) = c.outcome.rate_not_achieved_at {
            crate::outln!(
                "    rate not achieved at {r} msg/s: the publisher could not offer it (not the engine's limit)"
            );
        }
    }
    crate::outln!("publisher: {}", result.extra.publisher);
    crate::outln!("winner: {}", capacity::winner_text(&result));
    if let Some(command) = &result.extra.carry_on {
        crate::outln!("carry on: {command}");
    }
    crate::outln!("results: {} ({})", result.extra.folder.display(), capacity::folder_contents(&result));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values() {
        assert_eq!(parse_sla_point("p99.9=10ms"), Ok(SlaPoint { quantile: 0.999, budget_ns: 10_000_000 }));
        assert!(parse_sla_point("p99").is_err() && parse_sla_point("q99=1ms").is_err());
        assert!(parse_sla_point("p99=0ms").is_err_and(|e| e.starts_with("`0ms`: must be more than 0")));
        assert!(parse_sla_point("max=1us").is_ok());
        let workers = Vary {
            key: "workers".into(),
            values: vec![("1".into(), Setting::Workers(1)), ("2".into(), Setting::Workers(2))],
        };
        assert_eq!(parse_vary("workers=1, 2"), Ok(workers));
        assert!(parse_vary("workers=").is_err());
    }

    #[test]
    fn a_vary_value_is_read_as_its_flag_reads_it() {
        // `--vary rcvhwm_msgs=100k` failed (`invalid type: string "100k", expected i32`) while
        // `--sndhwm-msgs 100k` worked: the values went through the profile's TOML.
        let hwm = parse_vary("rcvhwm_msgs=100k,2M").expect("counts");
        assert_eq!(
            hwm.values,
            [("100k".to_string(), Setting::RcvhwmMsgs(100_000)), ("2M".to_string(), Setting::RcvhwmMsgs(2_000_000))]
        );
        let read = |s: &str| parse_vary(s).map(|v| v.values.into_iter().map(|(_, s)| s).collect::<Vec<_>>());
        assert_eq!(read("handoff_hwm_msgs=1k"), Ok(vec![Setting::HandoffHwmMsgs(1000)]));
        assert_eq!(read("batch_max=1k"), Ok(vec![Setting::BatchMax(1000)]));
        assert_eq!(read("shards=2"), Ok(vec![Setting::Shards(2)]));
        assert_eq!(read("idle=spin,block"), Ok(vec![Setting::Idle("spin"), Setting::Idle("block")]));
        assert_eq!(read("handoff=per-message"), Ok(vec![Setting::HandOff(crate::engine::reader::HandOff::PerMessage)]));
        assert_eq!(read("routing=round-robin"), Ok(vec![Setting::Routing(crate::engine::reader::Routing::RoundRobin)]));
        assert_eq!(read("handler=work:20000"), Ok(vec![Setting::Handler(HandlerSpec::Work { ns: 20000 })]));
        // One line naming the key and the value, then the flag's own words.
        let bad = |s: &str| parse_vary(s).expect_err(s);
        assert!(bad("rcvhwm_msgs=100k,lots").starts_with("rcvhwm_msgs=lots: not a count; accepted: "));
        assert!(bad("rcvhwm_msgs=3G").starts_with("rcvhwm_msgs=3G: "), "{}", bad("rcvhwm_msgs=3G"));
        assert_eq!(
            bad("rcvhwm_msgs=3000M"),
            format!("rcvhwm_msgs=3000M: too large: a HWM is at most {} messages", i32::MAX)
        );
        assert_eq!(bad("workers=0"), "workers=0: must be at least 1");
        assert!(bad("idle=nap").starts_with("idle=nap: "), "{}", bad("idle=nap"));
        assert!(bad("handoff=fast").starts_with("handoff=fast: not a hand-off"));
        assert!(bad("colour=red").contains("cannot be varied"));
        assert_eq!(parse_percent("5%"), Ok(0.05));
        assert_eq!(parse_percent("0.1"), Ok(0.1));
        assert!(parse_percent("150%").is_err());
    }

    #[test]
    fn the_search_rates_start_at_the_lowest_rate_offered() {
        // Before: `--start-rate 0` ran, said `from 0 msg/s` and a 10000 s hold, and offered 100.
        for zero in ["0", "99"] {
            assert_eq!(
                parse_search_rate(zero),
                Err("at least 100 msg/s, the lowest rate the search offers".to_string()),
                "{zero}"
            );
        }
        assert_eq!(parse_search_rate("100"), Ok(100));
        assert_eq!(parse_search_rate("10k"), Ok(10_000));
        assert!(parse_search_rate("2000M").is_err_and(|e| e.starts_with("at most 1000M msg/s")));
        assert_eq!(parse_rate_nonzero("0"), Err("must be at least 1 msg/s".to_string()));
        assert_eq!(parse_rate_nonzero("1"), Ok(1));
    }

    #[test]
    fn a_start_rate_is_every_configuration_s_or_one_s() {
        // Before: one rate for every configuration, so a run stopped in one could not carry on.
        let named = |n: &str, rate| StartRate { name: Some(n.to_string()), rate };
        assert_eq!(parse_start_rate("5k"), Ok(StartRate { name: None, rate: 5000 }));
        // The name is all before the last `=`: a grid's names hold one.
        assert_eq!(parse_start_rate("builtin handler=work:20000=2500"), Ok(named("builtin handler=work:20000", 2500)));
        assert_eq!(parse_start_rate("a=99"), Err("`99`: at least 100 msg/s, the lowest rate the search offers".into()));
        let names = ["a", "b x=1"];
        let given = [named("b x=1", 700), StartRate { name: None, rate: 2000 }];
        assert_eq!(start_rates(&given, &names), Ok((2000, vec![("b x=1".to_string(), 700)])));
        assert_eq!(start_rates(&[], &names), Ok((10_000, vec![])));
        let twice = [StartRate { name: None, rate: 2000 }, StartRate { name: None, rate: 3000 }];
        assert!(start_rates(&twice, &names).is_err_and(|e| e.starts_with("--start-rate given twice (2000 and 3000)")));
        assert_eq!(
            start_rates(&[named("c", 700)], &names),
            Err("--start-rate c=700: no configuration is named `c`; the configurations: `a`, `b x=1`".into())
        );
        assert!(start_rates(&[named("a", 700), named("a", 800)], &names).is_err_and(|e| e.contains("given twice")));
    }

    #[test]
    fn an_out_that_is_a_file_is_said_as_one() {
        let dir = crate::test_dir("capacity-out");
        let file = dir.join("file");
        std::fs::write(&file, b"x").expect("a file");
        let e = check_out_dir(&file).expect_err("a file").to_string();
        assert_eq!(e, format!("--out {}: not a directory (the results folder is made in it)", file.display()));
        let under = file.join("sub");
        let e = check_out_dir(&under).expect_err("under a file").to_string();
        assert!(e.starts_with(&format!("--out {}: {} is not a directory", under.display(), file.display())), "{e}");
        assert!(check_out_dir(&dir).is_ok() && check_out_dir(&dir.join("new/deeper")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
