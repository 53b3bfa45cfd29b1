//! Progress and status lines that fit the terminal: a line is a list of [`Field`]s, and one
//! wider than the terminal loses whole fields, the least needed first ([`Keep`]), never part of
//! one ([`fit`], the one fitting function of every such line: replay's, bench's and demo's bars,
//! [`run_progress`]; the engine's status, [`FitBar::say`]). A terminal wraps a line wider than
//! itself, and each redraw (`\r`, back to the line's start) then leaves the wrapped part behind:
//! the lines pile up. They are drawn on stderr only when it is a terminal
//! ([`super::progress_target`]): a pipe or a file gets none, so nothing is cut there.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::replay::progress::{estimate, Extent};
use crate::replay::{FilePosition, Limits, Pacing};

/// The columns taken when stderr's terminal does not say and `COLUMNS` is not set.
pub(crate) const DEFAULT_COLUMNS: usize = 80;

/// The narrowest and widest bar drawn beside a message: the message gets two thirds of what
/// the prefix leaves, the bar the rest within these.
const MIN_BAR: usize = 10;
const MAX_BAR: usize = 30;

/// How often a bar reads the terminal's width again (a resized window): its redraw period
/// ([`super::progress_target`] draws 4 times a second).
const REREAD: Duration = Duration::from_millis(250);

/// The width of the terminal a progress line is drawn on: stderr's (`TIOCGWINSZ`, read by
/// `console`, the crate indicatif draws with, so the bar and its message agree), else the
/// `COLUMNS` variable, else [`DEFAULT_COLUMNS`].
pub(crate) fn terminal_columns() -> usize {
    let tty = console::Term::stderr().size_checked().map(|(_, cols)| cols);
    columns_from(tty, std::env::var("COLUMNS").ok().as_deref())
}

fn columns_from(tty: Option<u16>, env: Option<&str>) -> usize {
    let env = || env.and_then(|s| s.trim().parse::<usize>().ok());
    tty.map(usize::from).filter(|&c| c > 0).or_else(env).filter(|&c| c > 0).unwrap_or(DEFAULT_COLUMNS)
}

/// What a field of a progress or status line is, in the order they are dropped as the terminal
/// narrows: a remark the line can do without first, the market time, then the engine's messages handled so far (its rate says
/// more), the rate, the messages sent, the engine's p99, the time left, which measurement
/// (bench) or command (`engine:`), the snail's worst verdict since the last status line, and
/// last how far it is or the snail's verdict now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Keep {
    Note,
    MarketTime,
    Handled,
    Rate,
    Sent,
    Latency,
    Eta,
    Label,
    Since,
    Done,
    Verdict,
}

/// One field of a progress line: its text and `sep`, written before it when a field is
/// before it (`", "`; after a field ending in `:`, a space).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    pub keep: Keep,
    pub text: String,
    pub sep: &'static str,
}

impl Field {
    /// A field after a comma.
    pub(crate) fn new(keep: Keep, text: String) -> Self {
        Field { keep, text, sep: ", " }
    }

    /// A field after a space.
    pub(crate) fn spaced(keep: Keep, text: String) -> Self {
        Field { keep, text, sep: " " }
    }
}

/// `fields` in at most `columns` characters: the whole line when it fits, else without the
/// fields least kept (the last of equals first), whole fields only; empty when none fits.
pub(crate) fn fit(fields: &[Field], columns: usize) -> String {
    let mut kept = vec![true; fields.len()];
    loop {
        let line = join(fields, &kept);
        if line.chars().count() <= columns {
            return line;
        }
        let least = (0..fields.len()).filter(|&i| kept[i]).min_by_key(|&i| (fields[i].keep, std::cmp::Reverse(i)));
        match least {
            Some(i) => kept[i] = false,
            None => return String::new(),
        }
    }
}

fn join(fields: &[Field], kept: &[bool]) -> String {
    let mut line = String::with_capacity(128);
    for (f, _) in fields.iter().zip(kept).filter(|(_, k)| **k) {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { f.sep });
        }
        line.push_str(&f.text);
    }
    line
}

/// The bar's columns and the message's in a line `{prefix} {bar} {msg}` of `columns`.
pub(crate) fn bar_and_message(columns: usize, prefix: &str) -> (usize, usize) {
    let room = columns.saturating_sub(prefix.chars().count() + 2);
    let bar = (room / 3).clamp(MIN_BAR, MAX_BAR).min(room);
    (bar, room - bar)
}

/// The columns a bar fits its line to: the terminal's, read again every [`REREAD`], or fixed
/// (a test's screen).
#[derive(Debug, Clone, Copy)]
enum Columns {
    Terminal {
        columns: usize,
        read_at: Option<Instant>,
    },
    #[cfg(test)]
    Fixed(usize),
}

/// What a [`FitBar`] draws beside its line.
#[derive(Debug)]
enum Shape {
    /// `{prefix} {bar} {line}`: a bar by position, `width` columns in the style set (0: none
    /// set yet).
    Bar { prefix: String, width: usize },
    /// `{spinner} {line}`: a status line (the engine's), its spinner and a space before it.
    Status,
}

/// The columns a status line's spinner takes, with the space after it.
const SPINNER: usize = 2;

/// A bar by position (`{prefix} {bar} {line}`) or a status line (`{spinner} {line}`) whose
/// line is fitted to the terminal: a bar narrows with it ([`bar_and_message`]) and the line
/// loses fields ([`fit`]).
pub(crate) struct FitBar {
    pub(crate) pb: indicatif::ProgressBar,
    shape: Shape,
    columns: Columns,
    /// The line, read as it is drawn (the `{line}` of the style): set, then the position, so
    /// the two are drawn together. As indicatif's message it was drawn on its own when set,
    /// and the draws' rate limit then held the position's back a quarter second (bench showed
    /// a new measurement's line on the last one's full bar, or a new bar with the last line).
    line: Arc<Mutex<String>>,
}

impl FitBar {
    /// A bar on `pb`, fitted to stderr's terminal ([`terminal_columns`]).
    pub(crate) fn new(pb: indicatif::ProgressBar, prefix: &str) -> Self {
        pb.set_prefix(prefix.to_string());
        let mut bar = FitBar::on(pb, Shape::Bar { prefix: prefix.into(), width: 0 });
        // Styled before its first line: a bar drawn before it is this bar, not indicatif's.
        bar.room(DEFAULT_COLUMNS);
        bar
    }

    /// A status line on `pb`, fitted to stderr's terminal ([`terminal_columns`]).
    pub(crate) fn status(pb: indicatif::ProgressBar) -> Self {
        let bar = FitBar::on(pb, Shape::Status);
        bar.set_template("{spinner} {line}");
        bar
    }

    fn on(pb: indicatif::ProgressBar, shape: Shape) -> Self {
        let columns = Columns::Terminal { columns: DEFAULT_COLUMNS, read_at: None };
        FitBar { pb, shape, columns, line: Arc::default() }
    }

    /// Style the bar by `template`, whose `{line}` is [`FitBar::line`].
    fn set_template(&self, template: &str) {
        let line = self.line.clone();
        let drawn = move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&line.lock().map(|l| l.clone()).unwrap_or_default());
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            self.pb.set_style(style.with_key("line", drawn));
        }
    }

    /// The line's columns in a terminal of `columns`; a bar is styled to the width it leaves
    /// (when it is not already).
    fn room(&mut self, columns: usize) -> usize {
        match &mut self.shape {
            Shape::Bar { prefix, width } => {
                let (bar, line) = bar_and_message(columns, prefix);
                if bar != *width {
                    *width = bar;
                    self.set_template(&format!("{{prefix}} {{bar:{bar}}} {{line}}"));
                }
                line
            }
            Shape::Status => columns.saturating_sub(SPINNER),
        }
    }

    /// Fitted to `columns` whatever the terminal's (a test's screen).
    #[cfg(test)]
    pub(crate) fn with_columns(mut self, columns: usize) -> Self {
        self.columns = Columns::Fixed(columns);
        self
    }

    fn columns(&mut self, now: Instant) -> usize {
        match &mut self.columns {
            #[cfg(test)]
            Columns::Fixed(c) => *c,
            Columns::Terminal { columns, read_at } => {
                if read_at.is_none_or(|at| now.saturating_duration_since(at) >= REREAD) {
                    (*columns, *read_at) = (terminal_columns(), Some(now));
                }
                *columns
            }
        }
    }

    /// Set the line to `fields` fitted to the terminal at `now`: true when it changed.
    fn set_line(&mut self, fields: &[Field], now: Instant) -> bool {
        let columns = self.columns(now);
        let line = fit(fields, self.room(columns));
        match self.line.lock() {
            Ok(mut l) if *l != line => {
                *l = line;
                true
            }
            _ => false,
        }
    }

    /// Show `steps` ([`super::POSITION_STEPS`]) and `fields` at `now`, fitted to the terminal,
    /// drawn together (within the draws' rate).
    pub(crate) fn show(&mut self, steps: u64, fields: &[Field], now: Instant) {
        self.set_line(fields, now);
        self.pb.set_position(steps);
    }

    /// Say `fields` at `now`, fitted to the terminal: a status line, drawn when it changed
    /// (a bar's line: [`FitBar::show`]).
    pub(crate) fn say(&mut self, fields: &[Field], now: Instant) {
        if self.set_line(fields, now) {
            self.pb.tick();
        }
    }
}

/// A run's bar ([`run_progress`]) on a [`FitBar`]: `replay`'s, `demo`'s and each of `bench`'s
/// measurements, timed from the run's first message (the files' opening and the sending
/// thread's start are not its pace: counted in, they made the first estimates half as long
/// again).
pub(crate) struct RunBar {
    pub(crate) bar: FitBar,
    limits: Limits,
    /// The recorded pace's multiple (None: flat out or a fixed rate).
    speed: Option<f64>,
    began: Option<Instant>,
}

impl RunBar {
    /// On `bar` (a [`super::position_bar_on`]), for a run under `pacing` and `limits`.
    pub(crate) fn new(bar: FitBar, pacing: Pacing, limits: Limits) -> Self {
        let speed = match pacing {
            Pacing::Recorded { speed } => Some(speed),
            _ => None,
        };
        RunBar { bar, limits, speed, began: None }
    }

    /// A new run (bench's next measurement): its rate and time from its first message again.
    /// Its bar and line are drawn together by the next [`RunBar::show`] (an indicatif `reset`
    /// drew the last run's line on an empty bar).
    pub(crate) fn restart(&mut self) {
        self.began = None;
    }

    /// Show `sent` messages at `now`, the run's files at `position` (the generated feed's is
    /// empty), after `label` when one is given.
    pub(crate) fn show(&mut self, sent: u64, position: &FilePosition, label: Option<Field>, now: Instant) {
        if sent > 0 {
            self.began.get_or_insert(now);
        }
        let elapsed_s = self.began.map_or(0.0, |b| now.saturating_duration_since(b).as_secs_f64());
        let (steps, fields) =
            run_progress(sent, self.limits, position.extent(), position.market_ns(), self.speed, elapsed_s);
        let line: Vec<Field> = label.into_iter().chain(fields).collect();
        self.bar.show(steps, &line, now);
    }
}

/// A run's bar position ([`super::POSITION_STEPS`]) and line, `sent` messages and `elapsed_s`
/// after its first. How far it is by each measure that bounds it, the one further on said (it
/// ends the run first): its count (`42.5% of 2000000 msgs`: `sent / count`, the time so far
/// scaled by what is left), its duration (`42.5% of 10s`: the time so far of it, and what is
/// left), its files' position `extent` (`42.5% by market time`, `by bytes read`, at `speed`
/// times the recorded pace, None: flat out or a fixed rate; [`estimate`]). Then the messages
/// sent, their rate, the market time of the record loaded last (`market_ns`, DBN) and the time
/// left. No rate and no time left in the first quarter second (one redraw, too short to
/// scale); no fraction and no time left when nothing bounds it. As fields a narrow terminal
/// drops some of ([`fit`]): `25.0% of 10s, 30000 msgs sent, 12.0 k msg/s, eta 8s`.
pub(crate) fn run_progress(
    sent: u64,
    limits: Limits,
    extent: Option<Extent>,
    market_ns: Option<u64>,
    speed: Option<f64>,
    elapsed_s: f64,
) -> (u64, Vec<Field>) {
    let elapsed_s = if elapsed_s.is_finite() && elapsed_s > 0.0 { elapsed_s } else { 0.0 };
    let early = elapsed_s < 0.25;
    // Each measure's fraction done, seconds left and what it is of.
    let by_file = extent.and_then(|x| Some((x.fraction()?.1, estimate(x, elapsed_s, speed)?)));
    let by_file = by_file.map(|(basis, e)| (e.fraction, e.left_s, basis.said().to_string()));
    let by_time = limits.duration.filter(|d| !d.is_zero()).map(|d| {
        let f = (elapsed_s / d.as_secs_f64()).min(1.0);
        (f, Some((d.as_secs_f64() - elapsed_s).max(0.0)), format!("of {}", crate::diag::human_duration_of(d)))
    });
    let by_count = limits.max_msgs.filter(|&n| n > 0).map(|n| {
        let f = (sent as f64 / n as f64).min(1.0);
        let left = (f > 0.0 && elapsed_s > 0.0).then(|| elapsed_s * (1.0 - f) / f);
        (f, left, format!("of {n} msgs"))
    });
    // Before the first message the bytes read are those read in opening the files (headers,
    // metadata, a first buffer): they say nothing of how far a run a count or a duration bounds
    // is (they showed `0.0% by bytes read` before `0.5% of 4000 msgs`).
    let by_file = by_file.filter(|_| sent > 0 || (by_count.is_none() && by_time.is_none()));
    // The last of equals: a count before a duration before a file.
    let done = [by_file, by_time, by_count].into_iter().flatten().max_by(|a, b| a.0.total_cmp(&b.0));
    let mut fields = Vec::with_capacity(5);
    let mut steps = 0;
    if let Some((f, _, of)) = &done {
        // Tenths, rounded down: 100.0% only when whole.
        fields.push(Field::new(Keep::Done, format!("{:.1}% {of}", (f * 1000.0).floor() / 10.0)));
        steps = (f * super::POSITION_STEPS as f64) as u64;
    }
    fields.push(Field::new(Keep::Sent, format!("{sent} msgs sent")));
    if !early && sent > 0 {
        fields.push(Field::new(Keep::Rate, crate::diag::human_rate(sent as f64 / elapsed_s)));
    }
    if let Some(ts) = market_ns {
        fields.push(Field::new(Keep::MarketTime, format!("market time {}", dbn::pretty::fmt_ts(ts))));
    }
    if let Some(left) = done.and_then(|(_, left, _)| left).filter(|s| !early && *s > 0.0) {
        // `as` saturates: a span of centuries is no panic.
        fields.push(Field::new(Keep::Eta, super::eta_text(left.ceil() as u64)));
    }
    (steps, fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbn::pretty::fmt_ts;

    fn fields() -> Vec<Field> {
        vec![
            Field { keep: Keep::Label, text: "run 2/5 engine/batch (3/4):".into(), sep: ", " },
            Field::new(Keep::Done, "42.5% of 2000000 msgs".into()),
            Field::new(Keep::Sent, "850000 msgs sent".into()),
            Field::new(Keep::Rate, "1.234 M msg/s".into()),
            Field::new(Keep::MarketTime, "market time 2023-11-14T22:13:20.123456789Z".into()),
            Field::new(Keep::Eta, "eta 1m02s".into()),
        ]
    }

    #[test]
    fn a_line_loses_whole_fields_the_least_needed_first() {
        let all = "run 2/5 engine/batch (3/4): 42.5% of 2000000 msgs, 850000 msgs sent, 1.234 M msg/s, market time \
                   2023-11-14T22:13:20.123456789Z, eta 1m02s";
        assert_eq!(fit(&fields(), usize::MAX), all);
        assert_eq!(fit(&fields(), all.len()), all);
        // One column short: the market time goes first, then the rate, then the count sent.
        assert_eq!(
            fit(&fields(), all.len() - 1),
            "run 2/5 engine/batch (3/4): 42.5% of 2000000 msgs, 850000 msgs sent, 1.234 M msg/s, eta 1m02s"
        );
        assert_eq!(
            fit(&fields(), 80),
            "run 2/5 engine/batch (3/4): 42.5% of 2000000 msgs, 850000 msgs sent, eta 1m02s"
        );
        assert_eq!(fit(&fields(), 60), "run 2/5 engine/batch (3/4): 42.5% of 2000000 msgs, eta 1m02s");
        assert_eq!(fit(&fields(), 50), "run 2/5 engine/batch (3/4): 42.5% of 2000000 msgs");
        assert_eq!(fit(&fields(), 30), "42.5% of 2000000 msgs");
        // Never part of a field: nothing when the most needed does not fit.
        assert_eq!(fit(&fields(), 20), "");
        assert_eq!(fit(&[], 0), "");
    }

    #[test]
    fn the_whole_line_fits_40_80_and_200_columns() {
        for (columns, bar, message) in [(40, 11, 22), (80, 24, 49), (200, 30, 163)] {
            let (b, m) = bar_and_message(columns, "bench");
            assert_eq!((b, m), (bar, message), "at {columns}");
            let msg = fit(&fields(), m);
            // `bench ` + the bar + ` ` + the message.
            let line = 6 + b + 1 + msg.chars().count();
            assert!(line <= columns, "{line} > {columns}: {msg}");
            match columns {
                40 => assert_eq!(msg, "42.5% of 2000000 msgs"),
                80 => assert_eq!(msg, "run 2/5 engine/batch (3/4): 42.5% of 2000000 msgs"),
                _ => assert!(msg.ends_with("market time 2023-11-14T22:13:20.123456789Z, eta 1m02s"), "{msg}"),
            }
        }
        // A terminal narrower than the prefix: no message, no bar wider than the room.
        assert_eq!(bar_and_message(4, "bench"), (0, 0));
        assert_eq!(bar_and_message(15, "bench"), (8, 0));
    }

    #[test]
    fn the_width_is_the_terminal_s_else_columns_else_80() {
        assert_eq!(columns_from(Some(132), Some("100")), 132);
        assert_eq!(columns_from(None, Some("100")), 100);
        assert_eq!(columns_from(Some(0), Some(" 90 ")), 90);
        assert_eq!(columns_from(None, Some("wide")), DEFAULT_COLUMNS);
        assert_eq!(columns_from(None, Some("0")), DEFAULT_COLUMNS);
        assert_eq!(columns_from(None, None), DEFAULT_COLUMNS);
    }

    /// A [`run_progress`]'s position and whole line, as a terminal wide enough shows it.
    fn whole((steps, fields): (u64, Vec<Field>)) -> (u64, String) {
        (steps, fit(&fields, usize::MAX))
    }

    const WHOLE: Limits = Limits { max_msgs: None, duration: None };
    const T0: u64 = 1_700_000_000_000_000_000;

    /// An hour of market data, a quarter through.
    fn hour() -> Extent {
        Extent::Market { now_ns: T0 + 900_000_000_000, start_ns: T0, end_ns: T0 + 3_600_000_000_000, bytes: None }
    }

    #[test]
    fn a_file_replay_says_how_far_it_is_by_what_and_the_time_left() {
        // Before: `5000 msgs sent, market time …`, no percentage and no time left.
        let at = T0 + 900_000_000_000;
        assert_eq!(
            whole(run_progress(4500, WHOLE, Some(hour()), Some(at), Some(10.0), 90.0)),
            (250, format!("25.0% by market time, 4500 msgs sent, 50 msg/s, market time {}, eta 4m30s", fmt_ts(at)))
        );
        // The metadata's end past the data's: the bytes read say how far it is, and that they do.
        let bounds = crate::replay::progress::ByteBounds { read: 950, from: 0, total: 1000, ahead: 0 };
        let past = Extent::Market {
            now_ns: T0 + 900_000_000_000,
            start_ns: T0,
            end_ns: T0 + 3_600_000_000_000,
            bytes: Some(bounds),
        };
        assert_eq!(
            whole(run_progress(4500, WHOLE, Some(past), None, Some(10.0), 90.0)).1,
            "95.0% by bytes read, 4500 msgs sent, 50 msg/s, eta 5s"
        );
        let bytes = Extent::Bytes { read: 999_999, from: 0, total: 1_000_000 };
        assert_eq!(
            whole(run_progress(7, WHOLE, Some(bytes), None, None, 1.0)).1,
            "99.9% by bytes read, 7 msgs sent, 7 msg/s, eta 1s",
            "not 100.0% before the end"
        );
        let done = Extent::Bytes { read: 1_000_000, from: 0, total: 1_000_000 };
        assert_eq!(
            whole(run_progress(4100, WHOLE, Some(done), None, None, 1.0)),
            (1000, "100.0% by bytes read, 4100 msgs sent, 4.1 k msg/s".into())
        );
        // Nothing known yet: the count alone.
        assert_eq!(whole(run_progress(0, WHOLE, None, None, None, 0.0)), (0, "0 msgs sent".into()));
        let start = Extent::Bytes { read: 0, from: 0, total: 10 };
        assert_eq!(whole(run_progress(0, WHOLE, Some(start), None, None, 0.0)).1, "0.0% by bytes read, 0 msgs sent");
        // Centuries left: said, not a panic.
        let slow = Extent::Market { now_ns: T0 + 1, start_ns: T0, end_ns: u64::MAX - 1, bytes: None };
        assert!(whole(run_progress(1, WHOLE, Some(slow), None, Some(0.001), 1.0)).1.contains("eta "));
    }

    #[test]
    fn a_file_replay_s_line_fits_the_terminal_by_dropping_whole_fields() {
        // Before: 112 columns whatever the terminal (the market time to the ns): an 80-column
        // terminal wrapped it and every redraw left a line behind.
        let (_, fields) = run_progress(12_345_678, WHOLE, Some(hour()), Some(T0 + 1), Some(10.0), 90.0);
        let at = |columns| fit(&fields, bar_and_message(columns, "replay").1);
        assert_eq!(at(40), "25.0% by market time");
        assert_eq!(at(80), "25.0% by market time, eta 4m30s");
        assert_eq!(at(100), "25.0% by market time, 12345678 msgs sent, eta 4m30s");
        assert_eq!(
            at(200),
            format!(
                "25.0% by market time, 12345678 msgs sent, 137.2 k msg/s, market time {}, eta 4m30s",
                fmt_ts(T0 + 1)
            )
        );
        for columns in [40, 80, 200] {
            let (bar, _) = bar_and_message(columns, "replay");
            assert!("replay ".len() + bar + 1 + at(columns).len() <= columns, "{columns}: {}", at(columns));
        }
    }

    fn feed_line(sent: u64, max_msgs: Option<u64>, duration_s: Option<f64>, elapsed_s: f64) -> (u64, String) {
        let limits = Limits { max_msgs, duration: duration_s.map(Duration::from_secs_f64) };
        whole(run_progress(sent, limits, None, None, None, elapsed_s))
    }

    #[test]
    fn a_generated_feed_says_how_far_it_is_by_its_count_or_its_duration() {
        // By count (`--count`, or bench's default 2M): sent / count, the time so far scaled.
        assert_eq!(
            feed_line(500_000, Some(2_000_000), None, 2.0),
            (250, "25.0% of 2000000 msgs, 500000 msgs sent, 250.0 k msg/s, eta 6s".into())
        );
        // By duration (flat out, before: a spinner with no text at all): the time so far of
        // it, and what is left of it.
        assert_eq!(
            feed_line(30_000, None, Some(10.0), 2.5),
            (250, "25.0% of 10s, 30000 msgs sent, 12.0 k msg/s, eta 8s".into())
        );
        assert_eq!(feed_line(0, None, Some(2.5), 0.0), (0, "0.0% of 2500ms, 0 msgs sent".into()));
        // Both: the one further on ends the run first.
        assert_eq!(
            feed_line(50_000, Some(100_000), Some(10.0), 2.5),
            (500, "50.0% of 100000 msgs, 50000 msgs sent, 20.0 k msg/s, eta 3s".into())
        );
        assert_eq!(
            feed_line(10_000, Some(100_000), Some(10.0), 7.5),
            (750, "75.0% of 10s, 10000 msgs sent, 1.3 k msg/s, eta 3s".into())
        );
        // Unbounded: the messages and their rate only.
        assert_eq!(feed_line(30_000, None, None, 2.5), (0, "30000 msgs sent, 12.0 k msg/s".into()));
        // The first quarter second: too short to scale.
        assert_eq!(feed_line(100, Some(1_000), None, 0.1), (100, "10.0% of 1000 msgs, 100 msgs sent".into()));
        // Done: whole, nothing left; not 100.0% before.
        assert_eq!(
            feed_line(1_000, Some(1_000), None, 1.0),
            (1000, "100.0% of 1000 msgs, 1000 msgs sent, 1.0 k msg/s".into())
        );
        assert!(feed_line(9_999, Some(10_000), None, 1.0).1.starts_with("99.9% of 10000 msgs"));
        assert!(feed_line(1, Some(10_000), None, f64::NAN).1.starts_with("0.0% of 10000 msgs"));
    }

    #[test]
    fn a_file_run_a_count_or_a_duration_ends_says_how_far_by_it() {
        // Before: `bench --from FILE --count N` said `by bytes read` of the whole file (1.0% when
        // the count was half sent) and a time left to the file's end; replay's said the count
        // alone, never the file's position when its end came first.
        let bytes = Extent::Bytes { read: 10_000, from: 0, total: 1_000_000 };
        let count = Limits { max_msgs: Some(1_000), duration: None };
        assert_eq!(
            whole(run_progress(500, count, Some(bytes), None, None, 1.0)),
            (500, "50.0% of 1000 msgs, 500 msgs sent, 500 msg/s, eta 1s".into())
        );
        // Nothing sent yet: the bytes read in opening the file do not make it further on.
        let opened = Extent::Bytes { read: 4_000, from: 4_000, total: 1_000_000 };
        assert_eq!(
            whole(run_progress(0, count, Some(opened), None, None, 0.0)),
            (0, "0.0% of 1000 msgs, 0 msgs sent".into())
        );
        assert_eq!(whole(run_progress(0, WHOLE, Some(opened), None, None, 0.0)).1, "0.4% by bytes read, 0 msgs sent");
        // A count past the file's end: the file ends the run, its bytes say how far.
        let more = Limits { max_msgs: Some(1_000_000_000), duration: None };
        assert_eq!(
            whole(run_progress(500, more, Some(bytes), None, None, 1.0)),
            (10, "1.0% by bytes read, 500 msgs sent, 500 msg/s, eta 1m39s".into())
        );
        // A duration: the time so far of it, the market time of the file still said.
        let ten_s = Limits { max_msgs: None, duration: Some(Duration::from_secs(10)) };
        let at = T0 + 900_000_000_000;
        assert_eq!(
            whole(run_progress(5_000, ten_s, Some(hour()), Some(at), Some(10.0), 5.0)),
            (500, format!("50.0% of 10s, 5000 msgs sent, 1.0 k msg/s, market time {}, eta 5s", fmt_ts(at)))
        );
        assert_eq!(
            whole(run_progress(5_000, ten_s, Some(hour()), None, None, 1.0)).1,
            "25.0% by market time, 5000 msgs sent, 5.0 k msg/s, eta 3s"
        );
    }

    #[test]
    fn a_fitted_bar_draws_within_its_columns() {
        let screen = super::super::test_screen::Screen::default();
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let mut bar = super::super::position_bar_drawn_on(target, "bench").with_columns(40);
        bar.show(425, &fields(), Instant::now());
        bar.pb.tick();
        let drawn = screen.text().rsplit("<clear>").next().unwrap_or_default().trim_end().to_string();
        assert!(drawn.starts_with("bench ") && drawn.ends_with(" 42.5% of 2000000 msgs"), "{drawn:?}");
        assert!(drawn.chars().count() <= 40, "{drawn:?}");
        bar.pb.finish_and_clear();
    }
}
