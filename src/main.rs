//! The `mdsub` command line: parses arguments and calls the library.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use mdsub::agent::StopFlag;
use mdsub::cli;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mdsub: a high-throughput market-data subscriber engine on ZeroMQ.
///
/// Start with `mdsub demo`: a generated feed replayed into the engine over TCP
/// loopback, then a report of throughput, loss and latency.
#[derive(Parser)]
#[command(
    name = "mdsub",
    version,
    about,
    long_about,
    after_long_help = "Exit status: 0 done, or stopped by a first Ctrl-C/SIGTERM with what it had printed, \
                       marked interrupted (--json too); 1 an error; 2 a flag or value refused; 3 a croaked \
                       snail; 4 no clone server answered; 5 capacity found no winner; 130 interrupted with \
                       nothing to show (still starting, a benchmark before its first whole measurement, a \
                       second signal). README, \"Exit codes\"."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Begin every line on stderr with its UTC wall-clock time, to the millisecond
    /// (`2026-12-05T17:40:01.123Z link …`), for a log kept in a file (journald and the like
    /// stamp lines themselves). Any command, before or after its name.
    // Listed after every command's own flags (it was listed among them, wherever clap's counting
    // put it: between demo's --silence and --skew).
    #[arg(long, global = true, display_order = 10_000)]
    log_time: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replay a generated feed into the engine in one process and report
    /// throughput, loss and latency (default: 100k msg/s for 3 s).
    ///
    /// On a terminal, and not with --json, a bar on stderr says how far the replay is, as
    /// `mdsub replay`'s does (by --count or --duration, whichever ends it first). A pipe or a
    /// file gets no bar.
    Demo(cli::engine::DemoArgs),
    /// Publish a generated feed, a capture file or Databento DBN data on one XPUB endpoint per
    /// shard, paced or flat out, after waiting for subscribers.
    ///
    /// Ctrl-C (or SIGTERM) stops it, while it waits for subscribers as while it sends: it
    /// prints what it sent so far, marked interrupted (--json: `"interrupted": true`), and exits 0.
    ///
    /// On a terminal, and not with --json, a bar on stderr says how far the replay is: by its
    /// --count, its --duration (10 s for the generated feed without --count) or its --from
    /// files' position, whichever is further on (it ends the replay first), with the messages
    /// sent, their rate and the time left (`42.5% of 10s, 9876543 msgs sent, 2.3 M msg/s, eta
    /// 6s`; a file's market time too). A line wider than the terminal drops whole fields: the
    /// market time first, then the rate, the messages sent, the time left. A pipe or a file
    /// gets no bar.
    Replay(cli::replay::ReplayArgs),
    /// Run the engine against running publishers until end of stream or Ctrl-C.
    ///
    /// Ctrl-C (or SIGTERM) stops it with its report, marked interrupted (--json:
    /// `"interrupted": true`), exit 0.
    ///
    /// On a terminal, and not with --json, a status line on stderr says every metrics
    /// interval the messages handled, their rate over it, the p99 from receive to handled and
    /// the snail's verdict (`engine: 120000 msgs, 20000 msg/s, p99 1.2ms, snail OK`). A line
    /// wider than the terminal drops whole fields: the messages handled first, then the rate,
    /// the p99, the verdict last. A pipe or a file (a log) gets no status line, only the
    /// engine's log lines, whole.
    Engine(Box<cli::engine::EngineArgs>),
    /// Replay benchmark: the engine against a plain single-thread SUB reader
    /// on the same feed, medians of runs and ratios.
    ///
    /// On a terminal, and not with --json, a line on stderr says each measurement's run and
    /// how far its replay is, as `mdsub replay`'s bar does: by --count (2M without --count,
    /// --duration or --from), --duration or the --from files' position, whichever is further
    /// on (`run 2/5 engine/batch (3/4): 42.5% of 2000000 msgs, …, 1.2 M msg/s, eta 2s`). A line
    /// wider than the terminal drops whole fields (the market time first). A pipe or a file
    /// gets no such line.
    Bench(cli::bench::BenchArgs),
    /// Capacity search: the highest rate this host sustains inside a latency
    /// budget (--sla), per configuration (--profile, --vary); writes a results
    /// folder with summaries, per-trial .hlog/.hgrm, capacity.svg and the
    /// winning profile.
    ///
    /// A winner only when every configuration's knee was found to --tolerance
    /// (or no rate passed) and its knee is at or above every other's lowest
    /// failure; else `winner: none (why)`, naming the configurations not
    /// searched or not narrowed, and no winner.toml.
    ///
    /// Exit status 5 when there is no winner (no configuration passed, the
    /// time cap came before every knee was found: a search it stops before any
    /// rate failed has only `at least N msg/s`, no knee; or another configuration
    /// may reach the best knee); 0 when Ctrl-C stopped it (the results so far
    /// are written, marked interrupted, with the rate to carry each stopped
    /// search on from); 1 when a trial could not run (a full disk: the finished
    /// trials' summary is written if it can be).
    ///
    /// A stopped run prints `carry on: COMMAND`: it searches only what is left
    /// (each stopped search from its rate, those not started), the finished
    /// searches taken from the stopped run's folder (--take-finished-from).
    Capacity(cli::capacity::CapacityArgs),
    /// Print what this build and host are: mdsub and libzmq versions, libzmq's
    /// capabilities (draft API, CURVE, IPC, TIPC, PGM, GSSAPI), cores.
    Info,
    /// Check a tuning profile, or show what one (or `auto` on this host) resolves to.
    Profile(cli::profile::ProfileArgs),
    /// Last Value Cache proxy: XSUB (publishers) ⇄ XPUB (subscribers), answering
    /// each new subscription with the cached last value of every matching topic.
    Lvc(cli::lvc::LvcArgs),
    /// Throughput through the LVC vs a plain proxy and direct PUB→SUB in the same runs (lossless),
    /// as ratios; --json prints the result as one JSON object.
    LvcBench(cli::bench::LvcBenchArgs),
    /// Espresso tap: XSUB ⇄ XPUB proxy that prints, filters, counts or records what passes.
    Tap(cli::tap::TapArgs),
    /// Serve a clone (CHP) key-value store, alone or as half of a Binary Star pair.
    CloneServer(cli::clone::ServerArgs),
    /// Set, get, delete, dump or watch keys in a clone store.
    CloneClient(cli::clone::ClientArgs),
    /// Measure the clone stack: update throughput, snapshot time, failover time; --json prints
    /// the result as one JSON object.
    CloneBench(cli::bench::CloneBenchArgs),
    /// Write a CURVE key pair (NAME.key, NAME.pub) for a server or a client.
    Keygen(cli::security::KeygenArgs),
    /// Terminal dashboard of every engine publishing status in a clone store
    /// (msgs/s, p50/p99/p99.9/max per shard, p99 sparkline); --once prints one frame.
    Top(cli::top::TopArgs),
}

/// The command line as clap parses it: every parsed value may start with `-`, so a negative
/// one gets its flag's reason ([`cli::parsed_values_take_a_leading_hyphen`]).
fn command() -> clap::Command {
    cli::parsed_values_take_a_leading_hyphen(Cli::command())
}

impl Cmd {
    /// True when the command watches the stop flag (stops cleanly on Ctrl-C or SIGTERM,
    /// showing what it has, once it said its run is under way: [`cli::run_under_way`]); the
    /// others end at once on the signal.
    fn watches_stop(&self) -> bool {
        !matches!(self, Cmd::Info | Cmd::Profile(_) | Cmd::Keygen(_))
    }

    /// True for the commands on the market-data path (where libzmq's heap settings matter).
    fn moves_market_data(&self) -> bool {
        matches!(
            self,
            Cmd::Demo(_)
                | Cmd::Replay(_)
                | Cmd::Engine(_)
                | Cmd::Bench(_)
                | Cmd::Capacity(_)
                | Cmd::Lvc(_)
                | Cmd::Tap(_)
        )
    }
}

/// clap's own exit for what it says (a refused flag on stderr, exit 2; `--help` or `--version`
/// on stdout, exit 0), but a `--help` that could not be written is no success: one line and
/// exit 1 (`mdsub demo --help > /dev/full`; clap's `exit` drops the write error). A reader
/// gone away (`mdsub --help | head -1`) ends it quietly, as for every command's output.
fn clap_exit(e: &clap::Error) -> ! {
    use std::io::Write as _;
    let printed = e.print().and_then(|()| if e.use_stderr() { Ok(()) } else { std::io::stdout().flush() });
    match printed {
        Err(w) if !e.use_stderr() => mdsub::diag::stdout_failed(&w),
        _ => std::process::exit(e.exit_code()),
    }
}

/// `replay` and `bench`: the generated feed's flags typed with `--from` are refused
/// ([`cli::replay::refuse_generator_flags`]).
fn generator_flags(matches: &clap::ArgMatches) -> anyhow::Result<()> {
    matches.subcommand().map_or(Ok(()), |(_, m)| cli::replay::refuse_generator_flags(m))
}

fn main() {
    // Before any libzmq thread allocates: glibc keeps what libzmq's I/O threads free
    // (src/zmqx/heap.rs; benches/README.md, "libzmq's heap").
    // A parameter the operator set in the environment is left as set.
    let heap = mdsub::zmqx::heap::keep_freed_memory();
    let matches = command().try_get_matches().unwrap_or_else(|e| clap_exit(&e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    mdsub::diag::stamp_lines(cli.log_time);
    // The subcommands given, outermost first (`["profile", "show"]`).
    let path: Vec<String> = std::iter::successors(matches.subcommand(), |(_, m)| m.subcommand())
        .map(|(name, _)| name.to_string())
        .collect();
    let stop = StopFlag::new();
    let on_signal = stop.clone();
    let watches_stop = cli.cmd.watches_stop();
    // Said for the commands that move market data (where libzmq's heap matters), not for every
    // `clone-client get` of a script.
    match heap {
        Ok(left) if !left.is_empty() && cli.cmd.moves_market_data() => {
            mdsub::diag!("note: glibc malloc's {} left as the environment set it (src/zmqx/heap.rs)", left.join(", "))
        }
        Ok(_) => {}
        Err(e) => mdsub::diag!("warning: {e}: libzmq's I/O threads may page-fault on freed memory"),
    }
    // When the first signal came (monotonic ns, 0 = none), apart from the stop flag: the
    // command sets that flag itself too (a --max-duration, a snail's croak, an agent's
    // failure), and that is no first Ctrl-C.
    static FIRST_SIGNAL_NS: AtomicU64 = AtomicU64::new(0);
    let handler = move || {
        let now = mdsub::clock::monotonic_ns().max(1);
        let first = FIRST_SIGNAL_NS.compare_exchange(0, now, SeqCst, SeqCst).err();
        match cli::on_signal(first, now, watches_stop, cli::is_run_under_way()) {
            cli::OnSignal::Stop => on_signal.stop(),
            cli::OnSignal::Same => {}
            cli::OnSignal::EndNow => mdsub::diag::last_line(format_args!("mdsub: interrupted"), cli::EXIT_INTERRUPTED),
        }
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        mdsub::diag!("warning: cannot catch Ctrl-C: {e}");
    }
    // Before anything runs: an option clap would have dropped (given on both sides of an action).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let kept = cli::global_options_kept(command(), &matches, &argv);
    let result: anyhow::Result<()> = match &cli.cmd {
        _ if kept.is_err() => kept.map_err(anyhow::Error::from),
        Cmd::Demo(a) => cli::engine::demo(a, &stop).map(|_| ()),
        Cmd::Replay(a) => generator_flags(&matches).and_then(|()| cli::replay::replay(a, &stop)),
        Cmd::Engine(a) => cli::engine::engine(a, &stop).map(|_| ()),
        Cmd::Bench(a) => generator_flags(&matches).and_then(|()| cli::bench::bench(a, &stop).map(|_| ())),
        Cmd::Capacity(a) => match cli::capacity::capacity(a, &stop).context("capacity") {
            // No winner: the results are written and said; the status tells a script.
            Ok(r) => match cli::capacity::exit_status(&r) {
                0 => Ok(()),
                code => std::process::exit(code),
            },
            Err(e) => Err(e),
        },
        Cmd::Lvc(a) => a
            .proxy
            .check_loop("lvc")
            .map_err(anyhow::Error::from)
            .and_then(|()| cli::lvc::run(a, &stop).map(|_| ()).context("lvc")),
        Cmd::LvcBench(a) => cli::bench::lvc_bench(a, &stop).map(|_| ()).context("lvc-bench"),
        Cmd::Tap(a) => a
            .proxy
            .check_loop("tap")
            .map_err(anyhow::Error::from)
            .and_then(|()| cli::tap::run(a, &stop).context("tap").and_then(|r| cli::tap::recorded_whole(a, &r))),
        Cmd::CloneServer(a) => cli::clone::run_server(a, &stop),
        Cmd::CloneBench(a) => cli::bench::clone_bench(a, &stop).map(|_| ()),
        Cmd::CloneClient(a) => match cli::clone::run_client(a, &stop) {
            // A key that is not there (`get`) exits 1 without an error line.
            Ok(0) => Ok(()),
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        Cmd::Keygen(a) => cli::security::keygen(a),
        Cmd::Top(a) => cli::top::top(a, &stop).context("top"),
        Cmd::Profile(a) => cli::profile::run(a).map(|_| ()),
        Cmd::Info => {
            let m = mdsub::bench::stamp::Machine::here();
            mdsub::outln!("mdsub {} (commit {})", env!("CARGO_PKG_VERSION"), m.mdsub_commit);
            mdsub::outln!("libzmq {}", m.libzmq);
            for (name, has) in mdsub::bench::stamp::libzmq_capabilities() {
                mdsub::outln!("  {name:<7}{}", if has { "yes" } else { "no" });
            }
            mdsub::outln!("cores {} ({})", m.cores, m.cpu);
            Ok(())
        }
    };
    if let Err(e) = result {
        // The Suicidal Snail: one scream line, a documented exit code.
        if let Some(mdsub::engine::EngineError::Croaked(c)) = e.downcast_ref::<mdsub::engine::EngineError>() {
            mdsub::diag!("mdsub: croak: {}", c.scream);
            std::process::exit(mdsub::snail::EXIT_CODE_CROAK);
        }
        // A flag or value refused after parsing: said like clap's own refusals (with the
        // command's usage), exit 2.
        if e.downcast_ref::<cli::UsageError>().is_some() {
            let mut cmd = command();
            cmd.build();
            let kind = clap::error::ErrorKind::ValueValidation;
            // The whole chain, so a context (capacity's configuration) is kept.
            let line = mdsub::diag::error_line(&e);
            // The usage of the subcommand it was refused in (`profile show`'s, not `profile`'s).
            let mut at = cmd;
            for name in &path {
                match at.find_subcommand(name).cloned() {
                    Some(s) => at = s,
                    None => break,
                }
            }
            let err = at.error(kind, line);
            let _ = err.print();
            std::process::exit(cli::EXIT_USAGE);
        }
        if cli::is_interrupted(&e) {
            mdsub::diag!("mdsub: interrupted");
            std::process::exit(cli::EXIT_INTERRUPTED);
        }
        mdsub::diag!("mdsub: error: {}", mdsub::diag::error_line(&e));
        std::process::exit(cli::exit_code(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand path (`["engine"]`, `["clone-client", "set"]`) with its command.
    fn every_command() -> Vec<(Vec<String>, clap::Command)> {
        fn commands(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
            for sub in cmd.get_subcommands() {
                let mut p = path.clone();
                p.push(sub.get_name().to_string());
                out.push((p.clone(), sub.clone()));
                commands(sub, p, out);
            }
        }
        let mut all = Vec::new();
        commands(&command(), Vec::new(), &mut all);
        all
    }

    /// `mdsub PATH… --FLAG VALUE`.
    fn argv(path: &[String], flag: &str, value: &str) -> Vec<String> {
        let mut argv: Vec<String> = vec!["mdsub".into()];
        argv.extend(path.iter().cloned());
        argv.extend([format!("--{flag}"), value.to_string()]);
        argv
    }

    #[test]
    fn every_parsed_option_hands_a_negative_value_to_its_parser() {
        // Before, most numeric flags met clap's "unexpected argument '-1' found" (`engine
        // --workers -1`, `capacity --hold -1s`, `clone-client set /x v --ttl -5s`, which even
        // suggested `-- -5`): only the flags that set allow_negative_numbers got a reason.
        let mut checked = Vec::new();
        for (path, sub) in &every_command() {
            for arg in sub.get_arguments().filter(|a| cli::takes_one_parsed_value(a)) {
                let Some(long) = arg.get_long() else { continue };
                for value in ["-1", "-1s", "-5k"] {
                    let argv = argv(path, long, value);
                    if let Err(e) = command().try_get_matches_from(&argv) {
                        let text = e.to_string();
                        assert_ne!(e.kind(), clap::error::ErrorKind::UnknownArgument, "{argv:?}: {text}");
                        assert!(text.contains(&format!("invalid value '{value}' for '--{long}")), "{argv:?}: {text}");
                    }
                }
                checked.push(format!("{} --{long}", path.join(" ")));
            }
        }
        for must in [
            "engine --workers",
            "engine --metrics-listen",
            "demo --payload-bytes",
            "lvc-bench --count",
            "clone-bench --runs",
            "replay --sndhwm-msgs",
            "capacity --hold",
            "top --timeout",
            "clone-client set --ttl",
        ] {
            assert!(checked.iter().any(|c| c == must), "{must} not walked: {checked:?}");
        }
    }

    /// The refusal of `value` for `--long`, if `value` was refused for that flag (None when
    /// taken, or when the command line failed for another reason: a required flag missing).
    fn refusal(path: &[String], long: &str, value: &str) -> Option<String> {
        let e = command().try_get_matches_from(argv(path, long, value)).err()?;
        let text = e.to_string();
        text.contains(&format!("invalid value '{value}' for '--{long}")).then_some(text)
    }

    /// `value` is a form `--long` takes: taken, or refused for its size alone (`--workers 1k`:
    /// too many), not as something other than a count, a size or a duration.
    fn form_taken(path: &[String], long: &str, value: &str) {
        if let Some(e) = refusal(path, long, value) {
            let form = ["not a ", "no unit", "unknown unit", "invalid digit"].iter().any(|w| e.contains(w));
            assert!(!form, "{} --{long} {value}: {e}", path.join(" "));
        }
    }

    #[test]
    fn every_duration_count_and_size_flag_takes_the_vocabulary_s_forms() {
        // Issue 7: durations always carry units, through one parser; counts take `2k`/`2M`;
        // sizes `1Ki`. Before, `engine --forget-silent-after 0` was taken, a duration without
        // its unit.
        let mut checked = Vec::new();
        for (path, sub) in &every_command() {
            // A hidden flag is an old spelling, refused whatever its value.
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let (Some(long), Some(names)) = (arg.get_long(), arg.get_value_names()) else { continue };
                let name = names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" ");
                let at = format!("{} --{long}", path.join(" "));
                match name.as_str() {
                    "DURATION" => {
                        for bare in ["0", "5"] {
                            let e = refusal(path, long, bare).unwrap_or_else(|| panic!("{at} {bare}: taken"));
                            assert!(e.contains("no unit; accepted: "), "{at} {bare}: {e}");
                        }
                        form_taken(path, long, "5s");
                    }
                    "COUNT" | "[NAME=]COUNT" => form_taken(path, long, "1k"),
                    "BYTES" => {
                        form_taken(path, long, "1Ki");
                        form_taken(path, long, "2k");
                    }
                    _ => continue,
                }
                checked.push(at);
            }
        }
        for must in [
            "engine --forget-silent-after",
            "clone-client --silence",
            "clone-client set --ttl",
            "replay --eos-wait",
            "capacity --runs",
            "replay --pause-at",
            "clone-client watch --count",
            "engine --hlog-keep",
            "lvc --max-bytes",
        ] {
            assert!(checked.iter().any(|c| c == must), "{must} not walked: {checked:?}");
        }
    }

    #[test]
    fn a_clone_store_is_reached_by_one_flag_name() {
        // Issue 7: one name for one thing. Before, `engine` and `top` took the clone store's
        // servers as `--store`, `clone-client` as `--server`.
        let mut reach = Vec::new();
        for (path, sub) in &every_command() {
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let Some(long) = arg.get_long() else { continue };
                let names = arg.get_value_names().unwrap_or_default();
                if names.iter().any(|n| n.as_str() == "[connect:]tcp://HOST:P") {
                    reach.push(format!("{} --{long}", path.join(" ")));
                }
            }
        }
        let not_store: Vec<&String> = reach.iter().filter(|r| !r.ends_with(" --store")).collect();
        assert!(not_store.is_empty(), "{not_store:?}");
        for must in ["engine --store", "top --store", "clone-client --store"] {
            assert!(reach.iter().any(|r| r == must), "{must}: {reach:?}");
        }
    }

    #[test]
    fn an_old_spelling_is_refused_naming_the_new_one() {
        // clap alone would have said `unexpected argument '--server'` with a tip for
        // --server-key, another thing.
        for (old, new) in [
            (&["clone-client", "--server", "tcp://127.0.0.1:1", "get", "k"][..], "--server is now --store"),
            (&["capacity", "--time-cap", "5m"][..], "--time-cap is now --max-duration"),
            // Without a value (rev37a: clap said `a value is required for '--server <OLD_SERVER>'`).
            (&["clone-client", "get", "k", "--server"][..], "--server is now --store"),
            (&["capacity", "--time-cap"][..], "--time-cap is now --max-duration"),
        ] {
            let argv = std::iter::once("mdsub").chain(old.iter().copied());
            let e = command().try_get_matches_from(argv).expect_err("refused");
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{old:?}: {e}");
            assert!(e.to_string().contains(new), "{old:?}: {e}");
        }
    }

    #[test]
    fn every_timeout_refuses_zero() {
        // One rule for every `--timeout` (before: `top --timeout 0s` and `lvc-bench --timeout 0s`
        // were taken, `clone-client --timeout 0s` refused): waiting no time at all is never a wait.
        let mut seen = Vec::new();
        for (path, sub) in &every_command() {
            if !sub.get_arguments().any(|a| a.get_long() == Some("timeout")) {
                continue;
            }
            let argv = argv(path, "timeout", "0s");
            let e = command().try_get_matches_from(&argv).expect_err("--timeout 0s refused");
            assert!(e.to_string().contains("'0s' for '--timeout <DURATION>': must be more than 0"), "{argv:?}: {e}");
            seen.push(path.join(" "));
        }
        for must in ["top", "clone-client", "lvc-bench"] {
            assert!(seen.iter().any(|c| c == must), "{must}: {seen:?}");
        }
    }

    #[test]
    fn free_text_and_several_values_keep_a_missing_value_missing() {
        // `--save --json` is a missing file name, not a file named `--json`; `--from A --rate 5`
        // keeps `--rate` a flag.
        let e = command().try_get_matches_from(["mdsub", "bench", "--save", "--json"]).err().map(|e| e.kind());
        assert_eq!(e, Some(clap::error::ErrorKind::InvalidValue));
        let m = command().try_get_matches_from(["mdsub", "replay", "--from", "a.mdcap", "--rate", "5"]);
        assert!(m.is_ok(), "{m:?}");
    }
}
