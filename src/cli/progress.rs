//! Progress lines that fit the terminal: a line is a list of [`Field`]s, and one wider than
//! the terminal loses whole fields, the least needed first ([`Keep`]), never part of one. A
//! terminal wraps a line wider than itself, and each redraw (`\r`, back to the line's start)
//! then leaves the wrapped part behind: the lines pile up.

use std::time::{Duration, Instant};

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

/// What a field of a progress line is, in the order they are dropped as the terminal narrows:
/// the market time first, then the rate, the messages sent, the time left, which measurement
/// (bench), and last how far it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Keep {
    MarketTime,
    Rate,
    Sent,
    Eta,
    Label,
    Done,
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

/// A bar by position (`{prefix} {bar} {msg}`) whose message is fitted to the terminal: the bar
/// narrows with it ([`bar_and_message`]) and the message loses fields ([`fit`]).
pub(crate) struct FitBar {
    pub(crate) pb: indicatif::ProgressBar,
    prefix: String,
    columns: Columns,
    /// The bar's width in the style set (0: none set yet).
    bar: usize,
}

impl FitBar {
    /// On `pb`, fitted to stderr's terminal ([`terminal_columns`]).
    pub(crate) fn new(pb: indicatif::ProgressBar, prefix: &str) -> Self {
        pb.set_prefix(prefix.to_string());
        let mut bar = FitBar {
            pb,
            prefix: prefix.into(),
            columns: Columns::Terminal { columns: DEFAULT_COLUMNS, read_at: None },
            bar: 0,
        };
        // Styled before its first message: a bar drawn before it is this bar, not indicatif's.
        bar.style(bar_and_message(DEFAULT_COLUMNS, prefix).0);
        bar
    }

    /// Style the bar `bar` columns wide (when it is not already).
    fn style(&mut self, bar: usize) {
        if bar != self.bar {
            if let Ok(style) = indicatif::ProgressStyle::with_template(&format!("{{prefix}} {{bar:{bar}}} {{msg}}")) {
                self.pb.set_style(style);
            }
            self.bar = bar;
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

    /// Show `steps` ([`super::POSITION_STEPS`]) and `fields` at `now`, fitted to the terminal.
    pub(crate) fn show(&mut self, steps: u64, fields: &[Field], now: Instant) {
        let (bar, message) = bar_and_message(self.columns(now), &self.prefix);
        self.style(bar);
        self.pb.set_message(fit(fields, message));
        self.pb.set_position(steps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
