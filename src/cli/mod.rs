//! The `mdsub` command line: every clap definition lives here, in one vocabulary, with the thin drivers that call the library.
//!
//! `main.rs` only parses and dispatches. Values are spelled one way in every
//! command ([`args`]: endpoints `bind:EP`/`connect:EP`, durations with units,
//! counts with `k`/`M`, idle strategies by name); library modules take plain
//! config structs and never see clap.
//!
//! | module | command(s) |
//! |---|---|
//! | [`args`] | the value parsers every command shares |
//! | [`feed`] | the synthetic feed and publisher flags of demo, replay and bench |
//! | [`engine`] | `mdsub demo`, `mdsub engine` |
//! | [`replay`] | `mdsub replay` |
//! | [`bench`](mod@bench) | `mdsub bench`, `mdsub lvc-bench`, `mdsub clone-bench` |
//! | [`capacity`] | `mdsub capacity` |
//! | [`proxy`] | the flags `mdsub lvc` and `mdsub tap` share |
//! | [`lvc`] | `mdsub lvc` |
//! | [`profile`] | `mdsub profile check`, `mdsub profile show` |
//! | `progress` | progress and status lines fitted to the terminal (the bars of replay, bench and demo; the engine's status line) |
//! | [`tap`] | `mdsub tap` |
//! | [`clone`] | `mdsub clone-server`, `mdsub clone-client` |
//! | [`security`] | `mdsub keygen` |

pub mod args;
pub mod bench;
pub mod capacity;
pub mod clone;
pub mod engine;
pub mod feed;
pub mod lvc;
pub mod profile;
pub(crate) mod progress;
pub mod proxy;
pub mod replay;
pub mod security;
pub mod tap;
pub mod top;

/// A command stopped by Ctrl-C or SIGTERM before it had a result to show: `main` says
/// `mdsub: interrupted` and exits with [`EXIT_INTERRUPTED`]. (A command that has a result,
/// such as the engine's report or the replay's numbers, prints it, marked interrupted, and
/// exits 0.)
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// A flag or value the command line refuses after clap parsed it (a check that needs other
/// flags, or the command's context): `main` says it the way clap says its own refusals, with
/// the command's usage, and exits 2 ([`EXIT_USAGE`]). Checks of one value belong in the
/// flag's `value_parser` ([`args`]); this is for the rest.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// An output file's claim as the command's error: two outputs naming one file is a usage error
/// (exit 2), a busy or unwritable file the run's (exit 1).
pub(crate) fn outfile_error(e: crate::outfile::OutFileError) -> anyhow::Error {
    match e {
        crate::outfile::OutFileError::Same { .. } => UsageError(e.to_string()).into(),
        e => e.into(),
    }
}

/// A value refused for what it holds, found out only by asking (a key longer than the clone
/// server accepts): the command line itself was well formed, so `main` says it in one line,
/// `mdsub: error: …`, without the usage, and exits 2 ([`EXIT_USAGE`]) like any refused value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RefusedValue(pub String);

/// Let every option whose value a parser checks take a value that starts with `-`, in
/// `cmd` and all its subcommands: `--workers -1`, `--hold -1s` or `--ttl -5s` then reach the
/// flag's parser and get its reason (`not a count; accepted: …`) instead of clap's
/// `unexpected argument '-1' found`. Set here, on the whole command line, so a new flag cannot
/// miss it. Left out: free text (`String`, a path), where `--save --json` must stay a missing
/// value rather than a file named `--json`, and options taking several values (`--from A B`),
/// which would swallow the next flag.
pub fn parsed_values_take_a_leading_hyphen(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| if takes_one_parsed_value(&a) { a.allow_hyphen_values(true) } else { a })
        .mut_subcommands(parsed_values_take_a_leading_hyphen)
}

/// Refuses an option of a parent command (`clone-client --store`, taken before or after the
/// action: clap's `global`) given both before the subcommand and after it: clap keeps only the
/// uses after it, so `--store A set K V --store B` would have talked to B alone, and `--timeout
/// 2s get K --timeout 5s` waited 5s without a word. `argv` is the whole command line, as
/// `matches` was parsed from it; tokens after `--` are values, not flags.
pub fn global_options_kept(
    mut cmd: clap::Command,
    matches: &clap::ArgMatches,
    argv: &[std::ffi::OsString],
) -> Result<(), UsageError> {
    cmd.build();
    // The innermost subcommand: every global option reaches it, with every use clap kept.
    let (mut leaf, mut m, mut path) = (&cmd, matches, Vec::new());
    while let Some((name, sub)) = m.subcommand() {
        match leaf.find_subcommand(name) {
            Some(c) => (leaf, m) = (c, sub),
            None => break,
        }
        path.push(name);
    }
    let tokens: Vec<String> =
        argv.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).take_while(|a| a != "--").collect();
    for a in leaf.get_arguments().filter(|a| a.is_global_set() && a.get_action().takes_values()) {
        let Some(long) = a.get_long() else { continue };
        let flag = format!("--{long}");
        let given = tokens.iter().filter(|t| **t == flag || t.starts_with(&format!("{flag}="))).count();
        let kept = match m.value_source(a.get_id().as_str()) {
            Some(clap::parser::ValueSource::CommandLine) => {
                m.get_raw_occurrences(a.get_id().as_str()).map_or(0, Iterator::count)
            }
            _ => 0,
        };
        if given > kept {
            let action = path.last().copied().unwrap_or_default();
            return Err(UsageError(format!(
                "{flag} given both before `{action}` and after it: give every {flag} on one side of it"
            )));
        }
    }
    Ok(())
}

/// True for an option (not a positional) that takes one value per use, checked by a parser
/// into something other than free text.
pub fn takes_one_parsed_value(a: &clap::Arg) -> bool {
    use std::any::TypeId;
    let free_text = [TypeId::of::<String>(), TypeId::of::<std::path::PathBuf>(), TypeId::of::<std::ffi::OsString>()];
    let ty = a.get_value_parser().type_id();
    !a.is_positional()
        && a.get_action().takes_values()
        && a.get_num_args().is_none_or(|n| n.max_values() == 1)
        && !free_text.iter().any(|t| ty == *t)
}

/// The exit status of a refused flag or value (clap's).
pub const EXIT_USAGE: i32 = 2;

/// The exit status of `clone-client` when no clone server answered within `--timeout` (apart
/// from 1, which `get` gives for an absent key).
pub const EXIT_NO_SERVER: i32 = 4;

/// The exit status of `capacity` when no configuration passed (or the time cap came before
/// any knee): the results folder is written, with no `winner.toml`.
pub const EXIT_NO_WINNER: i32 = 5;

/// The exit status of an error reaching `main`: [`EXIT_NO_SERVER`] for [`clone::NoServer`],
/// [`EXIT_USAGE`] for [`RefusedValue`], else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<clone::NoServer>().is_some() {
        EXIT_NO_SERVER
    } else if e.downcast_ref::<RefusedValue>().is_some() {
        EXIT_USAGE
    } else {
        1
    }
}

/// The exit status of an interrupted command: 128 + SIGINT, as a shell reports a command
/// that Ctrl-C ended.
pub const EXIT_INTERRUPTED: i32 = 130;

/// True when `e` says the command was stopped before it had a result: [`Interrupted`], or a
/// library wait that Ctrl-C ended under any context, such as the subscriber handshake of
/// `bench` and `demo` ([`ReplayError::Interrupted`](crate::replay::ReplayError::Interrupted)).
pub fn is_interrupted(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Interrupted>().is_some() || crate::replay::ReplayError::is_interrupted(e)
}

/// Set once the command's run is under way ([`run_under_way`]).
static UNDER_WAY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called by a command that watches the stop flag when its run starts: every file it reads or
/// writes is open, every value checked, and from here on it looks at the flag (or has
/// something to show). Before this, the first Ctrl-C or SIGTERM ends the process at once,
/// `mdsub: interrupted`, exit [`EXIT_INTERRUPTED`] ([`on_signal`]): start-up has nothing to
/// show and may be blocked where no stop flag is looked at (a file, a name lookup).
pub fn run_under_way() {
    UNDER_WAY.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// True once [`run_under_way`] was called.
pub fn is_run_under_way() -> bool {
    UNDER_WAY.load(std::sync::atomic::Ordering::SeqCst)
}

/// What a Ctrl-C or SIGTERM does, given when the first one came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSignal {
    /// The first signal to a command that watches the stop flag, once its run is under way: a
    /// clean stop, showing what it has.
    Stop,
    /// The same request delivered again: GNU `timeout` signals the process and then its
    /// process group, microseconds apart.
    Same,
    /// A command that does not watch the flag, one whose run is not under way yet (start-up,
    /// [`run_under_way`]), or a later signal while the clean stop is under way: `mdsub:
    /// interrupted`, exit [`EXIT_INTERRUPTED`].
    EndNow,
}

/// Signals closer together than this are one request to stop.
pub const SAME_SIGNAL_NS: u64 = 500_000_000;

/// The signal rule (a core: the handler in `main` keeps `first_ns` and reads the clock).
/// `under_way`: [`is_run_under_way`] when the signal came.
pub fn on_signal(first_ns: Option<u64>, now_ns: u64, watches_stop: bool, under_way: bool) -> OnSignal {
    match first_ns {
        None if watches_stop && under_way => OnSignal::Stop,
        Some(first) if watches_stop && now_ns.saturating_sub(first) < SAME_SIGNAL_NS => OnSignal::Same,
        _ => OnSignal::EndNow,
    }
}

use crate::engine::handler::HandlerSpec;
use crate::profile::{Profile, ProfileError};
use crate::replay::Pacing;

/// Where a command's progress bar or status line is drawn: on stderr, 4 times a second, which
/// indicatif hides when stderr is not a terminal (a pipe or a file gets none); nowhere with
/// `--json` (a run read by a program). One rule for the bars of `replay`, `bench`, `demo` and
/// `capacity` and the status line of `engine`.
pub(crate) fn progress_target(json: bool) -> indicatif::ProgressDrawTarget {
    if json {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr_with_hz(4)
    }
}

/// Steps of a bar by position ([`position_bar_on`]): tenths of a percent.
pub(crate) const POSITION_STEPS: u64 = 1000;

/// A run's bar, drawn on `target`: by position ([`POSITION_STEPS`] of its count, duration or
/// files), the message saying the percentage, the messages sent, their rate and the time left
/// ([`progress::RunBar`]), fitted to the terminal ([`progress::FitBar`]).
pub(crate) fn position_bar_on(target: indicatif::ProgressDrawTarget, what: &str) -> progress::FitBar {
    let bar = position_bar_drawn_on(target, what);
    crate::diag::draw_lines_above(&bar.pb);
    bar
}

/// [`position_bar_on`] without keeping diagnostic lines above it (a test's, which must not take
/// the place of the bar another test keeps them above).
pub(crate) fn position_bar_drawn_on(target: indicatif::ProgressDrawTarget, what: &str) -> progress::FitBar {
    // Styled before it is drawn anywhere.
    let pb = indicatif::ProgressBar::with_draw_target(Some(POSITION_STEPS), indicatif::ProgressDrawTarget::hidden());
    let bar = progress::FitBar::new(pb, what);
    bar.pb.set_draw_target(target);
    bar
}

/// `eta 1h02m`, `eta 2m05s`, `eta 5s`: `secs` seconds left, as a progress bar says them.
pub(crate) fn eta_text(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("eta {}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("eta {}m{:02}s", s / 60, s % 60),
        s => format!("eta {s}s"),
    }
}

/// A status line drawn on `target` (the engine's, [`progress_target`]): a spinner and a message
/// fitted to the terminal ([`progress::FitBar::say`]), diagnostic lines kept above it.
pub(crate) fn status_on(target: indicatif::ProgressDrawTarget) -> progress::FitBar {
    let bar = progress::FitBar::status(indicatif::ProgressBar::with_draw_target(
        None,
        indicatif::ProgressDrawTarget::hidden(),
    ));
    bar.pb.set_draw_target(target);
    crate::diag::draw_lines_above(&bar.pb);
    bar
}

pub(crate) fn describe_pacing(p: Pacing) -> String {
    match p {
        Pacing::FlatOut => "flat out".into(),
        Pacing::Rate { msgs_per_sec, burst: 1 } => format!("{msgs_per_sec} msg/s"),
        Pacing::Rate { msgs_per_sec, burst } => format!("{msgs_per_sec} msg/s in bursts of {burst}"),
        Pacing::Recorded { speed: 1.0 } => "recorded timing".into(),
        Pacing::Recorded { speed } => format!("{speed}x recorded timing"),
    }
}

/// `--idle` and `--handler` (demo, engine, bench) over the profile's own.
pub(crate) fn override_idle_handler(profile: &mut Profile, idle: Option<args::Idle>, handler: Option<HandlerSpec>) {
    if let Some(idle) = idle {
        profile.idle = idle.name().into();
    }
    if let Some(h) = handler {
        profile.handler = h;
    }
}

/// A clone store's servers from `--store` (engine, top, clone-client): one, or two for a Binary
/// Star pair, each `[connect:]tcp://HOST:P` with room for P+1 and P+2. Anything else is refused as a
/// flag value (exit 2) before anything starts.
pub(crate) fn store_servers(store: &[args::Endpoint]) -> anyhow::Result<Vec<String>> {
    let flag = "--store";
    if store.len() > 2 {
        anyhow::bail!(UsageError(format!(
            "{flag} given {} times: a clone store is one server, or two (a Binary Star pair)",
            store.len()
        )));
    }
    // Connect-only and tcp, as the flag's parser took it (args::parse_clone_server).
    let servers: Vec<String> = store.iter().map(|e| e.endpoint.clone()).collect();
    for s in &servers {
        if crate::clone::endpoints(s).is_err() {
            anyhow::bail!(UsageError(format!(
                "{flag} `{s}`: a clone server is tcp://HOST:P (it uses ports P, P+1 and P+2)"
            )));
        }
    }
    // One server given twice was taken for a Binary Star pair: the client "failed over" to the
    // server it had just left, and `top` showed its engines from one store as if from two.
    if let [a, b] = servers.as_slice() {
        if a == b {
            anyhow::bail!(UsageError(format!(
                "{flag} {a} given twice: a pair is two servers (tcp://HOST1:P1 and tcp://HOST2:P2); give it once \
                 for a lone server"
            )));
        }
    }
    Ok(servers)
}

pub(crate) fn load_profile(spec: &str) -> anyhow::Result<Profile> {
    let p = Profile::load(spec)?;
    check_profile(&p, spec)?;
    Ok(p)
}

/// Validate `p` for this host; a mistake names the profile it came from (`--profile
/// FILE: profile field …`), as `mdsub profile check` does.
pub(crate) fn check_profile(p: &Profile, spec: &str) -> anyhow::Result<()> {
    check_profile_with(p, spec, |_, _| None)
}

/// [`check_profile`] for a profile flags changed: a field the check refused is the error
/// `by_flag(field, message)` gives when a flag set it (a [`UsageError`], exit 2, for a value
/// refused; a file that cannot be used, exit 1); `None` (the profile set it) names the profile.
pub(crate) fn check_profile_with(
    p: &Profile,
    spec: &str,
    by_flag: impl FnOnce(&str, &str) -> Option<anyhow::Error>,
) -> anyhow::Result<()> {
    let of_profile = |e: ProfileError| anyhow::Error::new(e).context(format!("--profile {spec}"));
    match p.validate(&crate::host::cores()) {
        Err(ProfileError::Invalid { field, message }) => Err(match by_flag(&field, &message) {
            Some(e) => e,
            None => of_profile(ProfileError::Invalid { field, message }),
        }),
        Err(e) => Err(of_profile(e)),
        Ok(()) => Ok(()),
    }
}

/// A terminal for tests of what is drawn on it.
#[cfg(test)]
pub(crate) mod test_screen {
    use std::sync::{Arc, Mutex};

    /// A terminal that records what is drawn and where lines are cleared.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct Screen(Arc<Mutex<String>>);

    impl Screen {
        fn push(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().map(|mut t| t.push_str(s)).map_err(|_| std::io::Error::other("poisoned"))
        }
        /// Everything drawn so far (`<clear>` where a line was cleared).
        pub(crate) fn text(&self) -> String {
            self.0.lock().map(|t| t.clone()).unwrap_or_default()
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.push(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.push(s)
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.push("<clear>")
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_screen::Screen;
    use super::*;

    #[test]
    fn a_diagnostic_line_from_any_thread_is_written_above_the_progress_line() {
        // Before: a line from a reader thread was written at the cursor, inside the status
        // line, and the two garbled each other until the next redraw.
        let screen = Screen::default();
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let mut status = status_on(target).with_columns(120);
        status.say(&[progress::Field::new(progress::Keep::Done, "status-before".into())], std::time::Instant::now());
        let pb = status.pb.clone();
        assert!(screen.text().trim_end().ends_with("status-before"), "drawn: {:?}", screen.text());
        let cleared_before = screen.text().matches("<clear>").count();
        // (Another test's bar drawn since would be the one kept: the latest wins.)
        crate::diag::draw_lines_above(&pb);
        std::thread::scope(|s| {
            s.spawn(|| crate::diag::line(format_args!("test: a line from another thread")));
        });
        let text = screen.text();
        let cleared = text.matches("<clear>").count();
        assert!(cleared > cleared_before, "the bar is cleared for the line: {text:?}");
        let redrawn = text.rsplit("<clear>").next().unwrap_or_default();
        assert!(redrawn.trim_end().ends_with("status-before"), "and drawn again after it: {text:?}");
        pb.finish_and_clear();
        let drawn = screen.text().len();
        crate::diag::line(format_args!("test: a line after the bar"));
        assert_eq!(screen.text().len(), drawn, "a finished bar is not drawn again");
    }

    #[test]
    fn progress_is_drawn_on_a_terminal_and_never_with_json() {
        use std::io::IsTerminal as _;
        assert!(progress_target(true).is_hidden(), "--json: no bar");
        assert_eq!(progress_target(false).is_hidden(), !std::io::stderr().is_terminal(), "a bar on a terminal");
        assert!(position_bar_on(progress_target(true), "replay").pb.is_hidden());
    }

    #[test]
    fn a_bar_by_position_shows_its_message() {
        let screen = Screen::default();
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let mut bar = position_bar_drawn_on(target, "replay").with_columns(120);
        let fields = [
            progress::Field::new(progress::Keep::Done, "42.5% by bytes read".into()),
            progress::Field::new(progress::Keep::Sent, "10 msgs sent".into()),
        ];
        bar.show(425, &fields, std::time::Instant::now());
        bar.pb.tick();
        assert!(screen.text().contains("42.5% by bytes read, 10 msgs sent"), "{:?}", screen.text());
        assert!(screen.text().starts_with("replay "), "{:?}", screen.text());
        bar.pb.finish_and_clear();
    }

    #[test]
    fn the_time_left_is_said_in_hours_minutes_or_seconds() {
        assert_eq!(eta_text(3_725), "eta 1h02m");
        assert_eq!(eta_text(125), "eta 2m05s");
        assert_eq!(eta_text(59), "eta 59s");
    }

    #[test]
    fn a_second_signal_is_the_same_request_only_within_half_a_second() {
        assert_eq!(on_signal(None, 1_000, true, true), OnSignal::Stop);
        // timeout(1): SIGTERM to the process, then to its group.
        assert_eq!(on_signal(Some(1_000), 1_000 + 5_000, true, true), OnSignal::Same);
        assert_eq!(on_signal(Some(1_000), 1_000 + SAME_SIGNAL_NS - 1, true, true), OnSignal::Same);
        // A person pressing Ctrl-C again because the stop takes too long.
        assert_eq!(on_signal(Some(1_000), 1_000 + SAME_SIGNAL_NS, true, true), OnSignal::EndNow);
        // A command that does not watch the stop flag ends at once, every time.
        assert_eq!(on_signal(None, 1_000, false, true), OnSignal::EndNow);
        assert_eq!(on_signal(Some(1_000), 1_001, false, true), OnSignal::EndNow);
    }

    #[test]
    fn the_first_signal_ends_a_command_whose_run_is_not_under_way() {
        // Before, it only set the stop flag, which nothing looked at while start-up was
        // blocked opening a FIFO given as a profile: `timeout` and Ctrl-C did not end it.
        assert_eq!(on_signal(None, 1_000, true, false), OnSignal::EndNow);
        assert_eq!(on_signal(None, 1_000, false, false), OnSignal::EndNow);
    }

    #[test]
    fn an_interrupted_library_wait_is_an_interruption_under_any_context() {
        use anyhow::Context as _;
        let wait: Result<(), _> = Err(crate::replay::ReplayError::Interrupted);
        let e = wait.context("waiting for the subscriber").context("run 1").unwrap_err();
        assert!(is_interrupted(&e), "{e:#}");
        assert!(is_interrupted(&anyhow::Error::new(Interrupted).context("mdsub capacity")));
        let other: Result<(), _> = Err(crate::replay::ReplayError::Config("bad".into()));
        assert!(!is_interrupted(&other.context("waiting for the subscriber").unwrap_err()));
    }
}
