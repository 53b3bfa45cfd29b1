//! Diagnostics: lines on stderr that can never stop the process, refusals counted by reason
//! and said at a bounded rate, and the one place exit counters are printed.
//!
//! - [`line()`] (and the [`diag!`](crate::diag!) macro) writes one line to stderr and ignores
//!   a closed or broken stderr: `eprintln!` panics when the write fails (a reader of the pipe
//!   that went away), and a diagnostic must never be what kills the engine.
//! - [`Refusals`] is a socket-free, clock-free core: every refusal of input (a malformed
//!   frame, an update that does not decode, a snapshot entry that cannot be applied, a bad
//!   record in a file) is counted under its reason; the first of each reason is said at once
//!   with its detail, later ones are summarised (counts per reason) at most once per
//!   interval. It takes `now_ns`, so it is tested with [`crate::clock::ManualClock`].
//!   [`RefusalLog`] is the same with the lines going to [`line()`].
//! - [`out()`] (and the [`outln!`](crate::outln!) / [`out!`](crate::out!) macros) is the one
//!   path to stdout: `println!` panics when the reader of the pipe went away
//!   (`mdsub info | head -1`); here a closed stdout (EPIPE) ends the process quietly with
//!   status 0, as a pipe's writer should, and any other write error is said once on stderr
//!   (exit status 1).
//! - [`error_line`] is an error and its causes as one line, each cause once: what `main`
//!   prints after `mdsub: error:`, and what a command that keeps its error in a file writes.
//! - [`ExitCounters`] is the one convention for the counters a command prints when it stops:
//!   a `NAME: stopped: k=v …` line on stderr, like every other diagnostic, or with `--json`
//!   one JSON object on stdout.
//! - [`human_ns`] is a measured duration as a person reads it (`41.2µs`), for every line and
//!   report; [`human_duration`] a wait, timeout or setting the way a flag takes it (`30s`,
//!   `250ms`, else as `human_ns`); [`human_rate`] a message rate (`312 msg/s`, `15.3 k msg/s`, `1.930 M msg/s`).

use std::fmt::{self, Display, Write as _};
use std::io::Write;

/// A duration in ns as a short human string (`812ns`, `41.2µs`, `3.05ms`, `1.20s`).
pub fn human_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

/// A wait, a timeout or a setting as a person reads it and the duration parser takes it back
/// (`--timeout 30s`): whole in the largest unit it is whole in (`5s`, `30s`, `250ms`, `1h`,
/// `1500ms`; minutes from 10 on, `15m`, so `60s` is never a `1m` to be read as a millisecond),
/// from 10 minutes on in tenths of minutes, from 3 hours on in tenths of hours (`12.5m`,
/// `277777.8h`), else as [`human_ns`] says it (`7.30s`, `41.2µs`). The one formatter of the
/// durations in messages (before, one line said `9000 ms` and another `10 s` for the same kind
/// of value, neither of which a flag takes).
pub fn human_duration(ns: u64) -> String {
    const MINUTE: u64 = 60_000_000_000;
    const HOUR: u64 = 60 * MINUTE;
    let whole = |unit: u64, name: &str| (ns >= unit && ns.is_multiple_of(unit)).then(|| format!("{}{name}", ns / unit));
    match ns {
        0 => "0s".into(),
        n if n >= HOUR && n.is_multiple_of(HOUR) => format!("{}h", n / HOUR),
        n if n >= 3 * HOUR => format!("{:.1}h", n as f64 / HOUR as f64),
        n if n >= 10 * MINUTE => whole(MINUTE, "m").unwrap_or_else(|| format!("{:.1}m", n as f64 / MINUTE as f64)),
        n => whole(1_000_000_000, "s")
            .or_else(|| whole(1_000_000, "ms"))
            .or_else(|| whole(1_000, "µs"))
            .unwrap_or_else(|| human_ns(n)),
    }
}

/// [`human_duration`] of a setting kept in milliseconds (`2000` is `2s`).
pub fn human_ms(ms: u64) -> String {
    human_duration(ms.saturating_mul(1_000_000))
}

/// [`human_duration`] of a [`std::time::Duration`] (whole nanoseconds up to 584 years).
pub fn human_duration_of(d: std::time::Duration) -> String {
    human_duration(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A rate in messages a second as a person reads it, in the unit that fits: `312 msg/s` below
/// 1 k, `15.3 k msg/s` below 1 M, `1.930 M msg/s` from there (a few hundred msg/s printed as
/// `0.000 M msg/s` before); `? msg/s` for one that is not finite or is negative.
pub fn human_rate(msgs_per_s: f64) -> String {
    match msgs_per_s {
        r if !r.is_finite() || r < 0.0 => "? msg/s".into(),
        r if r < 999.5 => format!("{r:.0} msg/s"),
        r if r < 999_950.0 => format!("{:.1} k msg/s", r / 1e3),
        r => format!("{:.3} M msg/s", r / 1e6),
    }
}

/// One line for a person: the error and each cause once. Library errors that
/// show their source in their own message and also return it as `source()`
/// would otherwise print the same cause twice (`… No such file …: No such
/// file …`); a cause whose text the line already carries is skipped.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Write one line to stderr; a closed or broken stderr is ignored. While a progress or status
/// line is drawn on the terminal ([`draw_lines_above`]), the line is written above it: the bar is
/// cleared, the line written, the bar drawn again (a line from any thread, not only the bar's).
pub fn line(args: fmt::Arguments<'_>) {
    let write = || {
        let mut e = std::io::stderr().lock();
        write_stamp(&mut e);
        let _ = e.write_fmt(args);
        let _ = e.write_all(b"\n");
    };
    match shown_bar() {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// Write one last line to stderr and end the process with `code`, holding stderr until it ends:
/// a line another thread was about to write (a command the signal interrupted, going on once its
/// stderr drained) never comes after it.
pub fn last_line(args: fmt::Arguments<'_>, code: i32) -> ! {
    if let Some(bar) = shown_bar() {
        bar.finish_and_clear();
    }
    let mut e = std::io::stderr().lock();
    write_stamp(&mut e);
    let _ = e.write_fmt(args);
    let _ = e.write_all(b"\n");
    std::process::exit(code)
}

/// Whether every line on stderr begins with its time ([`stamp_lines`]).
static STAMP_LINES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Begin every line [`line()`] and [`last_line`] write with the UTC wall-clock time, to the
/// millisecond (`mdsub --log-time`): a log kept in a file places each line in time.
pub fn stamp_lines(on: bool) {
    STAMP_LINES.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn write_stamp(e: &mut impl Write) {
    if STAMP_LINES.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = write!(e, "{} ", crate::clock::utc_iso8601(crate::clock::realtime_ns()));
    }
}

/// The progress line on the terminal now, if any (held weakly: a dropped bar is gone).
static SHOWN_BAR: std::sync::Mutex<Option<indicatif::WeakProgressBar>> = std::sync::Mutex::new(None);

/// Keep diagnostic lines above `bar` while it is drawn: without this, a line written from
/// another thread (a link coming up, a refusal) lands inside the bar's line and the two garble
/// each other until the next redraw. A hidden bar (stderr is no terminal) is not kept. The
/// latest bar wins; one that is dropped or finished no longer counts. Inside `bar.suspend(..)`
/// or a bar's own callbacks, call nothing that says a diagnostic line (the bar's state lock is
/// held there, and `line` would take it again).
pub fn draw_lines_above(bar: &indicatif::ProgressBar) {
    if bar.is_hidden() {
        return;
    }
    if let Ok(mut shown) = SHOWN_BAR.lock() {
        *shown = Some(bar.downgrade());
    }
}

fn shown_bar() -> Option<indicatif::ProgressBar> {
    let bar = SHOWN_BAR.lock().ok()?.as_ref()?.upgrade()?;
    (!bar.is_finished()).then_some(bar)
}

/// `eprintln!` that never panics: formats like `format!` and writes through [`diag::line`](line()).
#[macro_export]
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::diag::line(format_args!($($arg)*))
    };
}

/// Write to stdout (flushed). A reader that went away (EPIPE) ends the process quietly with
/// status 0: what it wanted it has, and there is nobody left to tell. Any other failure
/// (a full disk under a redirect) is said on stderr and ends the process with status 1.
pub fn out(args: fmt::Arguments<'_>) {
    let write = || {
        let mut o = std::io::stdout().lock();
        o.write_fmt(args).and_then(|()| o.flush())
    };
    // Above a progress line on the terminal ([`draw_lines_above`]), as [`line()`] writes:
    // stdout is often the same terminal (`bench`'s run lines while its bar is drawn).
    let written = match shown_bar() {
        Some(bar) => bar.suspend(write),
        None => write(),
    };
    if let Err(e) = written {
        stdout_failed(&e);
    }
}

/// Copies of the process's stdout and stderr descriptors, in that order (each an error when it
/// cannot be copied): for an output file that must know whether it is one of them (`outfile`).
/// Nothing is written through them here.
pub fn standard_stream_fds() -> [std::io::Result<std::os::fd::OwnedFd>; 2] {
    use std::os::fd::AsFd as _;
    [std::io::stdout().as_fd().try_clone_to_owned(), std::io::stderr().as_fd().try_clone_to_owned()]
}

/// Where a command's human lines go: stdout, or stderr with `--json` (whose stdout is then the
/// command's JSON alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lines {
    pub json: bool,
}

impl Lines {
    /// Say one line.
    pub fn say(self, args: fmt::Arguments<'_>) {
        if self.json {
            line(args);
        } else {
            out(format_args!("{args}\n"));
        }
    }
}

/// `text` as a line may quote it: whole when short, else its first [`QUOTE_CHARS`] characters
/// and how long it was (a hostile peer's 100 KB value is not echoed whole). Control characters
/// are escaped (`\n`, `\u{1b}`): a value from a peer or a store cannot forge a second line or
/// drive the terminal (clear the screen, recolour what follows).
pub fn quoted(text: &str) -> std::borrow::Cow<'_, str> {
    quoted_up_to(text, QUOTE_CHARS)
}

/// [`quoted`], showing up to `chars` characters: for a longer text the screen must show whole
/// (an engine's own account of how it ended, say), still escaped and bounded.
pub fn quoted_up_to(text: &str, chars: usize) -> std::borrow::Cow<'_, str> {
    let (shown, cut) = match text.char_indices().nth(chars) {
        None => (text, false),
        Some((at, _)) => (&text[..at], true),
    };
    let shown: std::borrow::Cow<'_, str> = match shown.contains(char::is_control) {
        false => shown.into(),
        true => shown
            .chars()
            .map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() })
            .collect::<String>()
            .into(),
    };
    match cut {
        false => shown,
        true => format!("{shown}… ({} bytes)", text.len()).into(),
    }
}

/// How much of a value [`quoted`] shows.
pub const QUOTE_CHARS: usize = 80;

/// What to do when stdout cannot be written: see [`out()`]. Also for errors that reach
/// `main` from code that writes stdout itself (a `writeln!` on a locked stdout).
pub fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    line(format_args!("mdsub: error: writing to stdout: {e}"));
    std::process::exit(1);
}

/// `println!` that never panics: writes through [`diag::out`](out()) (a closed stdout ends
/// the process quietly).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::diag::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::diag::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that never panics: writes through [`diag::out`](out()).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::diag::out(format_args!($($arg)*))
    };
}

/// How often refusals after the first of their reason are summarised.
pub const SUMMARY_INTERVAL_NS: u64 = 10_000_000_000;

#[derive(Debug, Clone)]
struct Reason {
    name: &'static str,
    total: u64,
    /// Counted since the last line that covered this reason.
    unsaid: u64,
}

/// Refusals of one input site counted by reason, with the rule for what to say when
/// (the first of each reason at once, then one summary per interval). No I/O: the methods
/// return the line to say, if any.
#[derive(Debug, Clone)]
pub struct Refusals {
    site: String,
    /// What every line starts with: `SITE: refused`, or as set by [`Refusals::said_as`].
    head: String,
    interval_ns: u64,
    last_summary_ns: Option<u64>,
    reasons: Vec<Reason>,
}

impl Refusals {
    /// Refusals of `site` (the prefix of every line, e.g. `shard0-reader`), summarised at
    /// most once per `interval_ns`.
    pub fn new(site: impl Into<String>, interval_ns: u64) -> Self {
        let site = site.into();
        Refusals { head: format!("{site}: refused"), site, interval_ns, last_summary_ns: None, reasons: Vec::new() }
    }

    /// Start every line with `head` instead of `SITE: refused` (the same rule for repeated
    /// lines that are not refusals: `shard0: link EP lost (reason): …`).
    pub fn said_as(mut self, head: impl Into<String>) -> Self {
        self.head = head.into();
        self
    }

    /// True when something was counted that no line has said yet.
    pub fn unsaid(&self) -> bool {
        self.reasons.iter().any(|r| r.unsaid > 0)
    }

    /// The site's name.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// Count one refusal for `reason` at `now_ns`. Returns the line to say: the first of a
    /// reason (with `detail`), or a summary when one is due; `None` otherwise (no allocation).
    pub fn refuse(&mut self, reason: &'static str, detail: &dyn Display, now_ns: u64) -> Option<String> {
        self.refuse_many(reason, 1, detail, now_ns)
    }

    /// [`Refusals::refuse`] for `n` at once (counted where they were seen together: `n` new
    /// since the last look): the first of a reason is said with `detail` (that of the last of
    /// them), the others of the `n` counted for the next summary. `n` 0 counts nothing.
    pub fn refuse_many(&mut self, reason: &'static str, n: u64, detail: &dyn Display, now_ns: u64) -> Option<String> {
        if n == 0 {
            return self.due(now_ns);
        }
        match self.reasons.iter_mut().find(|r| r.name == reason) {
            Some(r) => {
                r.total = r.total.saturating_add(n);
                r.unsaid = r.unsaid.saturating_add(n);
                self.due(now_ns)
            }
            None => {
                self.reasons.push(Reason { name: reason, total: n, unsaid: n - 1 });
                self.last_summary_ns.get_or_insert(now_ns);
                Some(format!(
                    "{} ({reason}): {detail} (the first; more are counted and summarised every {})",
                    self.head,
                    human_duration(self.interval_ns)
                ))
            }
        }
    }

    /// The summary line when refusals went unsaid and an interval has passed since the last one.
    pub fn due(&mut self, now_ns: u64) -> Option<String> {
        let last = self.last_summary_ns?;
        if now_ns.saturating_sub(last) < self.interval_ns || self.reasons.iter().all(|r| r.unsaid == 0) {
            return None;
        }
        let since = now_ns.saturating_sub(last);
        self.last_summary_ns = Some(now_ns);
        Some(self.summary(&format!("in the last {}", human_duration(since))))
    }

    /// The summary of what went unsaid, however recent (for the end of a run); `None` if nothing did.
    pub fn flush(&mut self) -> Option<String> {
        if self.reasons.iter().all(|r| r.unsaid == 0) {
            return None;
        }
        Some(self.summary("since the last line"))
    }

    /// The last line of a run: [`Refusals::flush`] (whose totals give every count), or, when
    /// every one was said already, the totals alone (`HEAD in all: reason=N …`); `None` if
    /// nothing was counted. For a site whose total a person was promised at the stop.
    pub fn end(&mut self) -> Option<String> {
        if let Some(l) = self.flush() {
            return Some(l);
        }
        if self.reasons.is_empty() {
            return None;
        }
        let mut s = format!("{} in all:", self.head);
        for r in &self.reasons {
            let _ = write!(s, " {}={}", r.name, r.total);
        }
        Some(s)
    }

    fn summary(&mut self, when: &str) -> String {
        let mut s = format!("{} {when}:", self.head);
        for r in &mut self.reasons {
            if r.unsaid > 0 {
                let _ = write!(s, " {}={}", r.name, r.unsaid);
            }
            r.unsaid = 0;
        }
        s.push_str(" (totals:");
        for r in &self.reasons {
            let _ = write!(s, " {}={}", r.name, r.total);
        }
        s.push(')');
        s
    }

    /// Refusals counted for `reason` so far.
    pub fn count(&self, reason: &str) -> u64 {
        self.reasons.iter().find(|r| r.name == reason).map_or(0, |r| r.total)
    }

    /// Refusals counted so far, all reasons.
    pub fn total(&self) -> u64 {
        self.reasons.iter().map(|r| r.total).sum()
    }

    /// `(reason, count)` in the order the reasons first occurred.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.reasons.iter().map(|r| (r.name, r.total))
    }
}

/// [`Refusals`] whose lines go to stderr through [`line()`].
#[derive(Debug, Clone)]
pub struct RefusalLog {
    core: Refusals,
}

impl RefusalLog {
    /// A log for `site`, summarising every [`SUMMARY_INTERVAL_NS`].
    pub fn new(site: impl Into<String>) -> Self {
        RefusalLog { core: Refusals::new(site, SUMMARY_INTERVAL_NS) }
    }

    /// Start every line with `head` instead of `SITE: refused` ([`Refusals::said_as`]).
    pub fn said_as(mut self, head: impl Into<String>) -> Self {
        self.core.head = head.into();
        self
    }

    /// Count one refusal and say what is due.
    pub fn refuse(&mut self, reason: &'static str, detail: &dyn Display, now_ns: u64) {
        if let Some(l) = self.core.refuse(reason, detail, now_ns) {
            line(format_args!("{l}"));
        }
    }

    /// Say the summary if one is due (call when idle, so a burst is summarised without more input).
    pub fn tick(&mut self, now_ns: u64) {
        if let Some(l) = self.core.due(now_ns) {
            line(format_args!("{l}"));
        }
    }

    /// Say what went unsaid (at the end of a run).
    pub fn flush(&mut self) {
        if let Some(l) = self.core.flush() {
            line(format_args!("{l}"));
        }
    }

    /// The counts.
    pub fn counts(&self) -> &Refusals {
        &self.core
    }
}

impl Drop for RefusalLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Where a command's exit counters go (`--json` or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitCounters {
    /// `NAME: stopped: k=v …` on stderr.
    #[default]
    Text,
    /// One JSON object on stdout: `{"stopped": NAME, k: v, …}` (numbers where the value is one).
    Json,
}

impl ExitCounters {
    /// `--json` given or not.
    pub fn json(json: bool) -> Self {
        if json {
            ExitCounters::Json
        } else {
            ExitCounters::Text
        }
    }

    /// Print `counters` (a `k=v k=v …` report) the chosen way. A closed stderr is ignored;
    /// a closed stdout ends the process quietly ([`out()`]).
    pub fn print(self, name: &str, counters: &dyn Display) {
        match self {
            ExitCounters::Text => line(format_args!("{name}: stopped: {counters}")),
            ExitCounters::Json => out(format_args!("{}\n", counters_json(name, &counters.to_string()))),
        }
    }
}

/// A `k=v k=v …` report as a JSON object led by `"stopped": name`; integer values become
/// numbers, anything else a string; words without `=` are kept under `"notes"`.
pub fn counters_json(name: &str, text: &str) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("stopped".into(), name.into());
    let mut notes = Vec::new();
    for word in text.split_whitespace() {
        match word.split_once('=') {
            Some((k, v)) => {
                let v = match v.parse::<u64>() {
                    Ok(n) => serde_json::Value::from(n),
                    Err(_) => serde_json::Value::from(v),
                };
                m.insert(k.to_string(), v);
            }
            None => notes.push(serde_json::Value::from(word)),
        }
    }
    if !notes.is_empty() {
        m.insert("notes".into(), notes.into());
    }
    serde_json::Value::Object(m)
}

/// A count a JSON report leaves out while it is 0 (`#[serde(skip_serializing_if = ...)]`): one
/// that says a rare trouble.
pub fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    #[test]
    fn human_units() {
        assert_eq!(human_ns(812), "812ns");
        assert_eq!(human_ns(41_200), "41.2µs");
        assert_eq!(human_ns(3_050_000), "3.05ms");
        assert_eq!(human_ns(1_200_000_000), "1.20s");
        assert_eq!(human_ns(2_252_800), "2.25ms");
        // Waits and settings: whole where whole, in the largest unit, as a flag takes them.
        let s = 1_000_000_000;
        let waits =
            [0, 9 * s, 10 * s, 30 * s, 60 * s, 120 * s, 900 * s, 3_600 * s, 250_000_000, 1_500_000_000, 1_500_000, 800];
        assert_eq!(
            waits.map(human_duration),
            ["0s", "9s", "10s", "30s", "60s", "120s", "15m", "1h", "250ms", "1500ms", "1500µs", "800ns"]
        );
        assert_eq!(human_duration(7_301_234_567), "7.30s", "a measured one as human_ns says it");
        // Long waits in tenths of minutes, then of hours (a replay's jump in the recorded clock).
        assert_eq!(human_duration(750_500_000_000), "12.5m");
        assert_eq!(human_duration(5_400 * s), "90m");
        assert_eq!(human_duration(10_801 * s), "3.0h");
        assert_eq!(human_duration(1_000_000_000_000_000_000), "277777.8h");
        assert_eq!(human_duration_of(std::time::Duration::from_millis(9_000)), "9s");
        // A rate in the unit that fits: a DBN replay at a few hundred msg/s is not `0.000 M`.
        let rates = [312.4, 999.4, 999.5, 2_000.0, 15_280.0, 999_949.0, 999_950.0, 4_098_360.6];
        assert_eq!(
            rates.map(human_rate),
            [
                "312 msg/s",
                "999 msg/s",
                "1.0 k msg/s",
                "2.0 k msg/s",
                "15.3 k msg/s",
                "999.9 k msg/s",
                "1.000 M msg/s",
                "4.098 M msg/s"
            ]
        );
        assert_eq!([f64::NAN, -1.0].map(human_rate), ["? msg/s", "? msg/s"]);
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn first_of_each_reason_at_once_then_one_summary_per_interval() {
        let clock = ManualClock::new(100 * S);
        let mut r = Refusals::new("site", 10 * S);
        let first = r.refuse("short", &"3 bytes", clock.now_ns()).expect("the first is said");
        assert!(first.starts_with("site: refused (short): 3 bytes"), "{first}");
        let other = r.refuse("bad_ttl", &"ttl `x`", clock.now_ns()).expect("the first of another reason too");
        assert!(other.contains("(bad_ttl): ttl `x`"), "{other}");
        // Within the interval: counted, not said.
        for _ in 0..5 {
            clock.advance_ns(S);
            assert_eq!(r.refuse("short", &"again", clock.now_ns()), None);
        }
        assert_eq!(r.due(clock.now_ns()), None, "the interval has not passed");
        clock.advance_ns(5 * S);
        let sum = r.due(clock.now_ns()).expect("a summary is due");
        assert_eq!(sum, "site: refused in the last 10s: short=5 (totals: short=6 bad_ttl=1)");
        assert_eq!(r.due(clock.now_ns()), None, "said once");
        clock.advance_ns(20 * S);
        assert_eq!(r.due(clock.now_ns()), None, "nothing unsaid, nothing to say");
        // The next refusal after a quiet interval is summarised at once.
        let l = r.refuse("bad_ttl", &"y", clock.now_ns()).expect("a summary is due");
        assert!(l.contains("bad_ttl=1 (totals: short=6 bad_ttl=2)"), "{l}");
        assert_eq!((r.count("short"), r.count("bad_ttl"), r.count("none"), r.total()), (6, 2, 0, 8));
        assert_eq!(r.counts().collect::<Vec<_>>(), vec![("short", 6), ("bad_ttl", 2)]);
    }

    #[test]
    fn flush_says_what_went_unsaid_however_recent() {
        let mut r = Refusals::new("s", 10 * S);
        assert_eq!(r.flush(), None);
        assert!(r.refuse("a", &"x", 0).is_some());
        assert_eq!(r.flush(), None, "the first was said");
        assert_eq!(r.refuse("a", &"x", 1), None);
        assert_eq!(r.flush().as_deref(), Some("s: refused since the last line: a=1 (totals: a=2)"));
        assert_eq!(r.flush(), None);
        let mut r = Refusals::new("s", 10 * S).said_as("s: link EP lost");
        assert_eq!(
            r.refuse("a", &"x", 0).as_deref(),
            Some("s: link EP lost (a): x (the first; more are counted and summarised every 10s)")
        );
        assert!(r.refuse("a", &"x", 1).is_none() && r.unsaid());
        assert_eq!(r.flush().as_deref(), Some("s: link EP lost since the last line: a=1 (totals: a=2)"));
        assert!(!r.unsaid());
    }

    #[test]
    fn end_says_the_totals_whether_or_not_anything_went_unsaid() {
        let mut r = Refusals::new("s", 10 * S).said_as("s: update not published");
        assert_eq!(r.end(), None, "nothing counted, nothing said");
        assert!(r.refuse("send_failed", &"x", 0).is_some());
        assert_eq!(r.end().as_deref(), Some("s: update not published in all: send_failed=1"), "the first was said");
        assert_eq!(r.refuse("send_failed", &"x", 1), None);
        assert_eq!(
            r.end().as_deref(),
            Some("s: update not published since the last line: send_failed=1 (totals: send_failed=2)")
        );
        assert_eq!(r.end().as_deref(), Some("s: update not published in all: send_failed=2"));
    }

    #[test]
    fn a_flood_costs_one_line_per_interval() {
        let clock = ManualClock::new(0);
        let mut r = Refusals::new("s", 10 * S);
        let mut lines = 0;
        for _ in 0..1_000_000 {
            clock.advance_ns(100_000); // 10 k refusals a second for 100 s
            lines += r.refuse("short", &"x", clock.now_ns()).is_some() as u32;
        }
        assert!((10..=11).contains(&lines), "{lines} lines for 100 s of refusals");
        assert_eq!(r.count("short"), 1_000_000);
    }

    #[test]
    fn exit_counters_as_json() {
        let v = counters_json("lvc", "messages_in=3 mode=lossless dropped=0 odd");
        assert_eq!(v["stopped"], "lvc");
        assert_eq!(v["messages_in"], 3);
        assert_eq!(v["mode"], "lossless");
        assert_eq!(v["dropped"], 0);
        assert_eq!(v["notes"][0], "odd");
    }

    #[test]
    fn long_values_are_quoted_in_part() {
        assert_eq!(quoted("info"), "info");
        // A newline would forge a second line; an escape sequence would drive the terminal.
        assert_eq!(quoted("warn\nmdsub: forged"), "warn\\nmdsub: forged");
        assert_eq!(quoted("\u{1b}[2Jx"), "\\u{1b}[2Jx");
        let long = "é".repeat(100);
        assert_eq!(quoted(&long), format!("{}… (200 bytes)", "é".repeat(QUOTE_CHARS)));
    }
}
