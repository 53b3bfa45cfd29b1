//! Settings an engine takes while it runs (from `/mdsub/config/<engine-id>/NAME`
//! in the clone store), and the engine's log level. A socket-free core: the
//! store agent offers `(name, raw value)` and publishes what comes back.
//!
//! Each setting is registered with a function that parses, checks and applies
//! a raw value, returning the value now in force (normalised) or why it was
//! refused; a refused value leaves the running one in place. The CLI
//! (`cli/engine.rs`, `engine_settings`) registers the engine's settings with
//! the shared parsers: `metrics_interval`, `log_level` and the snail's
//! thresholds and policy (`snail_max_lag`, `snail_policy`, …), each applying
//! to the snail's shared configuration.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// What became of an offered value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Now in force (the normalised value).
    Applied(String),
    /// The same value as the one in force: nothing to do.
    Unchanged,
    /// Not applied, and why; the value in force stays.
    Refused(String),
}

type ApplyFn = Box<dyn FnMut(&str) -> Result<String, String> + Send>;

struct Setting {
    help: &'static str,
    apply: ApplyFn,
}

/// The registry of live settings and their values in force.
#[derive(Default)]
pub struct Settings {
    entries: BTreeMap<String, Setting>,
    current: BTreeMap<String, String>,
    /// Each setting's value at start (the profile's, or a flag's), for what changed since.
    initial: BTreeMap<String, String>,
}

impl Settings {
    /// Register `name` with its value in force now and the function that
    /// parses, checks and applies a new raw value.
    pub fn register(
        &mut self,
        name: &str,
        help: &'static str,
        current: String,
        apply: impl FnMut(&str) -> Result<String, String> + Send + 'static,
    ) {
        self.entries.insert(name.to_string(), Setting { help, apply: Box::new(apply) });
        self.initial.insert(name.to_string(), current.clone());
        self.current.insert(name.to_string(), current);
    }

    /// Offer `raw` for `name`.
    pub fn offer(&mut self, name: &str, raw: &str) -> Offer {
        let Some(s) = self.entries.get_mut(name) else {
            let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
            return Offer::Refused(format!(
                "unknown setting `{}` (known: {})",
                crate::diag::quoted(name),
                known.join(", ")
            ));
        };
        let raw = raw.trim();
        if self.current.get(name).is_some_and(|c| c == raw) {
            return Offer::Unchanged;
        }
        match (s.apply)(raw) {
            Ok(v) => {
                let changed = self.current.get(name) != Some(&v);
                self.current.insert(name.to_string(), v.clone());
                if changed {
                    Offer::Applied(v)
                } else {
                    Offer::Unchanged
                }
            }
            Err(why) => Offer::Refused(format!("`{}` refused: {why}", crate::diag::quoted(raw))),
        }
    }

    /// True when `name` is a registered setting.
    pub fn is_known(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Every setting's value in force.
    pub fn current(&self) -> &BTreeMap<String, String> {
        &self.current
    }

    /// Setting `name`'s value at start (registered), if it is a setting.
    pub fn initial(&self, name: &str) -> Option<&str> {
        self.initial.get(name).map(String::as_str)
    }

    /// The settings whose value in force is not their value at start.
    pub fn changed(&self) -> Vec<&str> {
        (self.current.iter()).filter(|(k, v)| self.initial.get(*k) != Some(v)).map(|(k, _)| k.as_str()).collect()
    }

    /// `(name, help)` of every setting.
    pub fn help(&self) -> Vec<(&str, &'static str)> {
        self.entries.iter().map(|(k, s)| (k.as_str(), s.help)).collect()
    }
}

/// How much the engine says on stderr while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub const NAMES: [&'static str; 4] = ["error", "warn", "info", "debug"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn parse(s: &str) -> Result<Level, String> {
        match s {
            "error" => Ok(Level::Error),
            "warn" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err(format!("not a log level (one of {})", Level::NAMES.join(", "))),
        }
    }
}

/// The engine's log level, changeable while running (`info` by default:
/// settings applied or refused; `debug` adds one line per shard per interval).
#[derive(Debug)]
pub struct LogLevel(AtomicU8);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(AtomicU8::new(Level::Info as u8))
    }
}

impl LogLevel {
    pub fn get(&self) -> Level {
        match self.0.load(Relaxed) {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }

    pub fn set(&self, l: Level) {
        self.0.store(l as u8, Relaxed);
    }

    /// Say `msg` on stderr if `level` is enabled.
    pub fn log(&self, level: Level, msg: impl std::fmt::Display) {
        if level <= self.get() {
            crate::diag!("{}: {msg}", level.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn registry() -> (Settings, Arc<AtomicU64>) {
        let v = Arc::new(AtomicU64::new(5));
        let mut s = Settings::default();
        let w = v.clone();
        s.register("n", "a number from 1 to 9", "5".into(), move |raw| {
            let n: u64 = raw.parse().map_err(|_| "not a number".to_string())?;
            if !(1..=9).contains(&n) {
                return Err("out of 1..=9".into());
            }
            w.store(n, Relaxed);
            Ok(n.to_string())
        });
        (s, v)
    }

    #[test]
    fn applies_refuses_and_keeps_the_value_in_force() {
        let (mut s, v) = registry();
        assert_eq!(s.offer("n", " 7 "), Offer::Applied("7".into()));
        assert_eq!(v.load(Relaxed), 7);
        assert_eq!(s.offer("n", "7"), Offer::Unchanged);
        assert_eq!(s.offer("n", "fast"), Offer::Refused("`fast` refused: not a number".into()));
        assert_eq!(s.offer("n", "12"), Offer::Refused("`12` refused: out of 1..=9".into()));
        // A hostile 100 KB value is quoted in part, not echoed whole on stderr and in the store.
        match s.offer("n", &"x".repeat(100_000)) {
            Offer::Refused(why) => assert!(why.len() < 200 && why.contains("(100000 bytes)"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!((v.load(Relaxed), s.current()["n"].as_str()), (7, "7"), "the running value stays");
        match s.offer("m", "1") {
            Offer::Refused(why) => assert!(why.contains("unknown setting `m` (known: n)"), "{why}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(s.help(), vec![("n", "a number from 1 to 9")]);
        assert_eq!((s.initial("n"), s.changed()), (Some("5"), vec!["n"]), "changed since start");
        assert_eq!(s.offer("n", "5"), Offer::Applied("5".into()));
        assert!(s.changed().is_empty(), "back to the value at start: {:?}", s.changed());
        assert_eq!(s.initial("m"), None);
    }

    #[test]
    fn log_levels() {
        let l = LogLevel::default();
        assert_eq!(l.get(), Level::Info);
        l.set(Level::parse("debug").expect("a level"));
        assert_eq!(l.get(), Level::Debug);
        assert!(Level::parse("loud").is_err());
        assert!(Level::Warn < Level::Info);
    }
}
