//! Readers of `mdsub … --help` texts, shared by tests/cli.rs (every help speaks the one
//! vocabulary) and tests/architecture.rs (docs/COMMANDS.md describes every flag).
#![allow(dead_code)]

/// The names under `Commands:` in a help text (`help` left out).
pub fn commands_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Each `--flag <VALUE>` of a help text: (flag, value name); a flag without a value has "".
/// Option lines are indented 2 (`  -q, --quiet`) or 6 spaces; a description's lines more, and
/// an after-help's not at all.
pub fn flags_in(help: &str) -> Vec<(String, String)> {
    help.lines()
        .filter(|l| (2..=6).contains(&(l.len() - l.trim_start().len())))
        .filter_map(|l| {
            let l = l.trim_start();
            let l = if l.starts_with('-') && l.as_bytes().get(2) == Some(&b',') { l[3..].trim_start() } else { l };
            let rest = l.strip_prefix("--")?;
            let (name, after) = rest.split_once(' ').unwrap_or((rest, ""));
            let value = after.strip_prefix('<').and_then(|v| v.split_once('>')).map_or("", |(v, _)| v);
            Some((format!("--{name}"), value.to_string()))
        })
        .collect()
}
