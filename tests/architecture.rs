//! docs/ARCHITECTURE.md's import rules, checked on the source: each rule here is one the page
//! states, so a change that breaks it fails here instead of quietly making the page untrue.
//!
//! The scan reads `src/` as text. It skips comment lines and `#[cfg(test)] mod … {` blocks
//! (rustfmt closes a top-level module with a `}` in column 0), so test code may use
//! whatever it needs. It is a text scan, not a compiler: an import renamed away from the
//! names below would pass it (a reviewer's job).
//!
//! Last, the command docs: every command `mdsub --help` lists has a row in README's command table
//! and a `## mdsub COMMAND` section in docs/COMMANDS.md, in the same order, README stays short,
//! and every long flag a command's `--help` lists is described in docs/COMMANDS.md.

use std::path::{Path, PathBuf};

#[path = "common/help.rs"]
mod help;

use help::{commands_in, flags_in};

/// One source file's code lines: (1-based line number, text).
struct Source {
    path: String,
    lines: Vec<(usize, String)>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if t == "#[cfg(test)]" && lines.peek().is_some_and(|(_, next)| next.starts_with("mod ") && next.ends_with('{'))
        {
            // Skip the test module: up to its closing brace in column 0.
            for (_, l) in lines.by_ref() {
                if l == "}" {
                    break;
                }
            }
            continue;
        }
        out.push((i + 1, line.to_string()));
    }
    out
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 50, "found only {} source files under src/", files.len());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            let rel = p.strip_prefix(root).expect("under the manifest dir").to_string_lossy().replace('\\', "/");
            Source { path: rel, lines: code_lines(&text) }
        })
        .collect()
}

/// Every code line of `sources` whose file `scanned` takes and that `hit` finds, as
/// `path:line: text`.
fn lines_where(sources: &[Source], scanned: impl Fn(&str) -> bool, hit: impl Fn(&str) -> bool) -> Vec<String> {
    let files = sources.iter().filter(|s| scanned(&s.path));
    let lines = files.flat_map(|s| s.lines.iter().map(move |(n, l)| (s, n, l)));
    lines.filter(|(_, _, l)| hit(l)).map(|(s, n, l)| format!("{}:{n}: {}", s.path, l.trim())).collect()
}

/// Every code line outside `allowed` files that contains any of `needles`, as `path:line: text`.
fn offenders(needles: &[&str], allowed: impl Fn(&str) -> bool) -> Vec<String> {
    lines_where(&sources(), |p| !allowed(p), |l| needles.iter().any(|needle| l.contains(needle)))
}

#[test]
fn only_the_runner_starts_threads() {
    let found = offenders(
        &[
            "thread::spawn",
            "thread::Builder",
            "thread::scope",
            "use std::thread::{",
            "thread::{spawn",
            "thread::{Builder",
        ],
        |p| p == "src/agent.rs",
    );
    assert!(found.is_empty(), "threads started outside agent::Runner:\n{}", found.join("\n"));
}

#[test]
fn only_cli_and_main_know_clap() {
    let found = offenders(&["clap::", "use clap", "#[arg(", "#[command("], |p| {
        p.starts_with("src/cli/") || p == "src/cli.rs" || p == "src/main.rs"
    });
    assert!(found.is_empty(), "clap outside src/cli/ and main.rs:\n{}", found.join("\n"));
}

#[test]
fn nothing_below_the_cli_imports_it() {
    let found = offenders(&["crate::cli"], |p| p.starts_with("src/cli/") || p == "src/cli.rs" || p == "src/main.rs");
    assert!(found.is_empty(), "library modules importing cli:\n{}", found.join("\n"));
    // The parts (engine, proxies, clone, replay, …) sit below bench/: only cli/ and bench/ use it.
    let found = offenders(&["crate::bench"], |p| {
        p.starts_with("src/bench/") || p.starts_with("src/cli/") || p == "src/main.rs"
    });
    assert!(found.is_empty(), "parts importing bench:\n{}", found.join("\n"));
}

#[test]
fn only_the_cli_and_bench_use_profiles() {
    // docs/ARCHITECTURE.md: profile sits above the parts (it imports engine, snail, security and
    // agent) and is used by bench/ and cli/ only. Before, the engine's reader asked
    // `crate::profile` whether a shard's interface was down; those NIC facts are `crate::nic`'s.
    let found = offenders(&["crate::profile"], |p| {
        p == "src/profile.rs" || p.starts_with("src/bench/") || p.starts_with("src/cli/")
    });
    assert!(found.is_empty(), "a part or primitive importing profile (a layer above it):\n{}", found.join("\n"));
}

#[test]
fn output_goes_through_diag() {
    // eprintln! panics on a closed stderr and println! on a closed stdout: diag! and outln! do not.
    let found = offenders(&["println!(", "eprintln!(", "print!(", "eprint!(", "io::stderr()"], |p| p == "src/diag.rs");
    assert!(found.is_empty(), "printing outside diag (use crate::diag! / crate::outln!):\n{}", found.join("\n"));
}

/// The primitives: facts and tools every layer may use, importing nothing of mdsub's but each other.
const PRIMITIVES: &[&str] = &["wire", "clock", "zmqx", "diag", "outfile", "infile", "host", "nic", "endpoint"];

#[test]
fn the_primitives_import_only_each_other() {
    let primitive = |p: &str| {
        p.starts_with("src/wire/")
            || p == "src/clock.rs"
            || p == "src/zmqx.rs"
            || p.starts_with("src/zmqx/")
            || p == "src/diag.rs"
            || p == "src/outfile.rs"
            || p == "src/infile.rs"
            || p == "src/host.rs"
            || p == "src/nic.rs"
            || p == "src/endpoint.rs"
    };
    // A line that names a module of mdsub's outside the primitives.
    let imports_the_rest = |l: &str| {
        let mut rest = l;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let module: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // `crate::diag!`/`crate::outln!` are macros exported at the root by diag itself.
            let is_macro = rest[module.len()..].starts_with('!');
            if !is_macro && !PRIMITIVES.contains(&module.as_str()) {
                return true;
            }
        }
        false
    };
    let found = lines_where(&sources(), primitive, imports_the_rest);
    assert!(found.is_empty(), "a primitive ({PRIMITIVES:?}) importing the rest of mdsub:\n{}", found.join("\n"));
}

/// The socket-free cores docs/ARCHITECTURE.md names, one file each.
const CORES: &[&str] = &[
    "src/engine/sequence.rs",
    "src/lvc/cache.rs",
    "src/lvc/answer.rs",
    "src/snail/lag.rs",
    "src/clone/map.rs",
    "src/clone/bstar.rs",
    "src/clone/server_core.rs",
    "src/clone/client_core.rs",
    "src/bench/capacity/search.rs",
    "src/link/core.rs",
    "src/replay/faults.rs",
    "src/replay/progress.rs",
    "src/engine/book.rs",
    "src/feed/mod.rs",
];

#[test]
fn cores_take_now_ns_and_touch_no_socket_thread_or_file() {
    let forbidden = [
        "zmq::",
        "use zmq",
        "realtime_ns()",
        "monotonic_ns()",
        "Instant::now",
        "SystemTime::now",
        "std::thread",
        "std::fs",
        "File::",
    ];
    let all = sources();
    for core in CORES {
        let there = all.iter().any(|s| s.path == *core);
        assert!(there, "{core} is gone: update this list and docs/ARCHITECTURE.md's cores");
    }
    let found = lines_where(&all, |p| CORES.contains(&p), |l| forbidden.iter().any(|f| l.contains(f)));
    assert!(found.is_empty(), "a core reading a clock or using a socket, thread or file:\n{}", found.join("\n"));
}

/// What every core may import: the socket-free, clock-free primitives (`diag` only for its
/// `Refusals` core and the `human_ns` and `human_duration` words), besides the other cores.
const CORE_IMPORTS: &[&str] = &[
    "crate::wire",
    "crate::clock",
    "crate::endpoint",
    "crate::diag::Refusals",
    "crate::diag::SUMMARY_INTERVAL_NS",
    "crate::diag::human_ns",
    "crate::diag::human_duration",
    "crate::diag::human_ms",
];

/// Per core, the plain types of its own part it is built on, one by one (docs/ARCHITECTURE.md
/// names them): the clone cores take and return kvmsgs and the server core decides what the
/// log records; the lag detector reads snail's config and returns its verdicts; the capacity
/// search takes the one median; the client core reports link::core's `LinkStats`.
const CORE_PART_IMPORTS: &[(&str, &[&str])] = &[
    ("src/clone/map.rs", &["crate::clone::kvmsg"]),
    (
        "src/clone/client_core.rs",
        &["crate::clone::kvmsg", "crate::clone::endpoints", "crate::link::LinkStats", "crate::link::KeyFlags"],
    ),
    ("src/clone/server_core.rs", &["crate::clone::kvmsg", "crate::clone::persist", "crate::clone::endpoints"]),
    ("src/snail/lag.rs", &["crate::snail::SkewMode", "crate::snail::SnailConfig", "crate::snail::Verdict"]),
    ("src/bench/capacity/search.rs", &["crate::bench::median"]),
];

/// The module a source file is: `src/a/b.rs` is `crate::a::b`, `src/a/mod.rs` is `crate::a`.
fn module_of(path: &str) -> String {
    let rel = path.trim_start_matches("src/").trim_end_matches(".rs");
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    format!("crate::{}", rel.replace('/', "::"))
}

/// Every `crate::…` and `super::…` path in `text`, as (1-based line, absolute path): `super`
/// resolved against `module`, a `{a, b::c}` group expanded (`self` in one is the group's path).
fn import_paths(text: &str, module: &str) -> Vec<(usize, String)> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let line_at = |at: usize| text[..at].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = ["crate::", "super::"].iter().filter_map(|k| text[at..].find(k)).min() {
        let start = at + found;
        at = start + 1;
        if text[..start].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue; // part of a longer path, seen from its start
        }
        let path: String = text[start..].chars().take_while(|&c| is_path(c)).collect();
        let mut base: Vec<&str> = module.split("::").collect();
        let mut rest = path.as_str();
        if rest.starts_with("super::") {
            // `super::x` in `crate::a::b` is `crate::a::x`: one module up per `super`.
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
        } else {
            base = vec!["crate"];
            rest = &rest["crate::".len()..];
        }
        let head = format!("{}::{}", base.join("::"), rest).trim_end_matches(':').to_string();
        let after = &text[start + path.len()..];
        if path.ends_with("::") && after.starts_with('{') {
            let mut depth = 0;
            let group: String = after
                .chars()
                .take_while(|&c| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth > 0
                })
                .skip(1)
                .collect();
            for item in group.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let item: String = item.chars().take_while(|&c| is_path(c)).collect();
                let full = if item == "self" { head.clone() } else { format!("{head}::{item}") };
                out.push((line_at(start), full.trim_end_matches(':').to_string()));
            }
        } else {
            out.push((line_at(start), head));
        }
    }
    out
}

#[test]
fn cores_import_only_primitives_other_cores_and_their_parts_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let core_modules: Vec<String> = CORES.iter().map(|c| module_of(c)).collect();
    let all = sources();
    let mut found = Vec::new();
    for core in CORES {
        let s = all.iter().find(|s| s.path == *core).unwrap_or_else(|| panic!("{core} is gone"));
        let text: String = {
            // Keep line numbers: blank out the lines the scan skips.
            let mut lines = vec![String::new(); s.lines.last().map_or(0, |(n, _)| *n)];
            for (n, l) in &s.lines {
                lines[n - 1] = l.clone();
            }
            lines.join("\n")
        };
        let own: &[&str] = CORE_PART_IMPORTS.iter().find(|(c, _)| c == core).map_or(&[], |(_, a)| a);
        let under = |path: &str, a: &str| path == a || path.starts_with(&format!("{a}::"));
        for (n, path) in import_paths(&text, &module_of(core)) {
            let another_core = core_modules.iter().zip(CORES).any(|(m, file)| {
                // A `mod.rs` core covers its own items, not its child modules' files.
                let child = path.strip_prefix(&format!("{m}::")).and_then(|r| r.split("::").next());
                let is_child_file = file.ends_with("/mod.rs")
                    && child.is_some_and(|c| {
                        let dir = Path::new(file).parent().expect("a directory");
                        root.join(dir).join(format!("{c}.rs")).exists() || root.join(dir).join(c).is_dir()
                    });
                under(&path, m) && !is_child_file
            });
            if !(another_core || CORE_IMPORTS.iter().chain(own).any(|a| under(&path, a))) {
                found.push(format!("{core}:{n}: {path}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "a core importing beyond wire, clock, endpoint, diag's Refusals and other cores:\n{}",
        found.join("\n")
    );
}

#[test]
fn import_paths_resolve_super_and_expand_groups() {
    let text = "use super::kvmsg::{self, KvMsg};\nuse crate::diag::{Refusals, SUMMARY_INTERVAL_NS};\nlet m = super::super::median(v);\nx(crate::link::LinkStats);\n";
    assert_eq!(
        import_paths(text, "crate::bench::capacity::search"),
        [
            (1, "crate::bench::capacity::kvmsg".to_string()),
            (1, "crate::bench::capacity::kvmsg::KvMsg".to_string()),
            (2, "crate::diag::Refusals".to_string()),
            (2, "crate::diag::SUMMARY_INTERVAL_NS".to_string()),
            (3, "crate::bench::median".to_string()),
            (4, "crate::link::LinkStats".to_string()),
        ]
    );
    assert_eq!(module_of("src/feed/mod.rs"), "crate::feed");
    assert_eq!(module_of("src/clone/server_core.rs"), "crate::clone::server_core");
}

#[test]
fn the_scan_sees_code_and_skips_comments_and_test_modules() {
    let text = "use a;\n// thread::spawn in a comment\nfn f() {}\n#[cfg(test)]\nmod tests {\n    fn g() { std::thread::spawn(|| ()); }\n}\nfn after() {}\n";
    let lines: Vec<String> = code_lines(text).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, ["use a;", "fn f() {}", "fn after() {}"]);
}

// ---- The command docs: README's table and docs/COMMANDS.md follow `mdsub --help` ----

/// What `mdsub ARGS… --help` prints.
fn help_of(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mdsub"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run mdsub {} --help: {e}", args.join(" ")));
    assert!(out.status.success(), "mdsub {} --help exited {}", args.join(" "), out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The commands `mdsub --help` lists (its `Commands:` block, `help` left out), in its order.
fn commands_in_help() -> Vec<String> {
    commands_in(&help_of(&[]))
}

/// The commands a markdown text gives a `## mdsub COMMAND` section, in its order.
fn command_sections(md: &str) -> Vec<String> {
    md.lines().filter_map(|l| l.strip_prefix("## mdsub ")).map(|c| c.trim().to_string()).collect()
}

/// The commands README's `## Commands` table has a row for (`` `mdsub COMMAND` `` in the row's
/// first cell), in its order.
fn readme_table_commands(readme: &str) -> Vec<String> {
    readme
        .lines()
        .skip_while(|l| l.trim() != "## Commands")
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with('|'))
        .filter_map(|row| row.split('|').nth(1))
        .filter_map(|cell| cell.split("`mdsub ").nth(1)?.split('`').next())
        .map(|c| c.trim().to_string())
        .collect()
}

fn read_doc(rel: &str) -> String {
    let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// README stays a way in (quick start, what it is, one line per command, the jobs); the full
/// reference is docs/COMMANDS.md. README had grown to 11 183 words, its table rows to 6 700
/// characters.
const README_MAX_WORDS: usize = 4500;

#[test]
fn every_command_has_a_readme_row_and_a_commands_md_section_and_readme_stays_short() {
    let commands = commands_in_help();
    assert!(commands.len() >= 10, "read too few commands from mdsub --help: {commands:?}");
    let readme = read_doc("README.md");
    let reference = read_doc("docs/COMMANDS.md");
    let rows = readme_table_commands(&readme);
    let sections = command_sections(&reference);
    let mut missing = Vec::new();
    for c in &commands {
        if !rows.contains(c) {
            missing.push(format!("`mdsub {c}` has no row in README's `## Commands` table"));
        }
        if !sections.contains(c) {
            missing.push(format!("`mdsub {c}` has no `## mdsub {c}` section in docs/COMMANDS.md"));
        }
    }
    for c in rows.iter().chain(&sections) {
        if !commands.contains(c) {
            missing.push(format!("`mdsub {c}` is documented but not in mdsub --help"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    assert_eq!(sections, rows, "docs/COMMANDS.md's sections are in the order of README's table");
    let words = readme.split_whitespace().count();
    assert!(
        words < README_MAX_WORDS,
        "README.md has {words} words (at most {README_MAX_WORDS}): move detail to docs/COMMANDS.md or the doc it belongs in"
    );
}

#[test]
fn the_command_doc_readers_read_what_they_are_given() {
    let help = "Usage: mdsub [OPTIONS] <COMMAND>\n\nCommands:\n  demo    Replay\n  top     Dash\n  help    Print\n\nOptions:\n      --log-time\n";
    assert_eq!(commands_in(help), ["demo", "top"]);
    let readme = "## Commands\n\n| command | what |\n|---|---|\n| [`mdsub demo`](x) | a `mdsub top` mention |\n| `mdsub top` | t |\n\n## Exit codes\n| `mdsub info` | not the table |\n";
    assert_eq!(readme_table_commands(readme), ["demo", "top"]);
    assert_eq!(command_sections("# x\n## mdsub demo\ntext\n### sub\n## mdsub top\n## Exit codes\n"), ["demo", "top"]);
}

// ---- Every flag a `--help` lists is described in docs/COMMANDS.md ----

/// The long flags (`--xyz`) a help text lists, in its order (not those its prose mentions).
fn long_flags_in_help(help: &str) -> Vec<String> {
    flags_in(help).into_iter().map(|(flag, _)| flag).collect()
}

/// Every long flag of `mdsub COMMAND --help` and of its subcommands' (`profile check`,
/// `clone-client set`, …), each once, in order.
fn long_flags_of_command(command: &str) -> Vec<String> {
    let help = help_of(&[command]);
    let mut flags = long_flags_in_help(&help);
    for sub in commands_in(&help) {
        flags.extend(long_flags_in_help(&help_of(&[command, &sub])));
    }
    let mut seen = std::collections::HashSet::new();
    flags.retain(|f| seen.insert(f.clone()));
    flags
}

/// A heading's anchor as GitHub makes it: lower case, punctuation but `-` and `_` dropped,
/// spaces to `-` (`## Exit codes, Ctrl-C and refused values` → `exit-codes-ctrl-c-and-refused-values`).
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A markdown page's sections, each as (its heading's anchor, its text from the heading to the
/// next heading of its level or above). Lines in ``` fences are no headings.
fn md_sections(md: &str) -> Vec<(String, String)> {
    let mut fenced = false;
    let mut headings = Vec::new(); // (line index, level, anchor)
    let lines: Vec<&str> = md.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && l.starts_with('#') {
            let level = l.len() - l.trim_start_matches('#').len();
            if let Some(title) = l[level..].strip_prefix(' ') {
                headings.push((i, level, anchor_of(title)));
            }
        }
    }
    headings
        .iter()
        .map(|(start, level, anchor)| {
            let end = headings.iter().find(|(j, lv, _)| j > start && lv <= level).map_or(lines.len(), |h| h.0);
            (anchor.clone(), lines[*start..end].join("\n"))
        })
        .collect()
}

/// The texts a section links to within docs/, one hop: `(#anchor)` is that section of `page`
/// itself, `(PAGE.md)` the whole page, `(PAGE.md#anchor)` that section of it. `pages` are docs/'s
/// pages by file name. A link to a missing page or section is an error.
fn linked_texts(section: &str, page: &str, pages: &[(String, String)]) -> Result<Vec<String>, String> {
    let mut texts = Vec::new();
    for (target, after) in section.split("](").skip(1).filter_map(|rest| rest.split_once(')')) {
        let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
        let file = if file.is_empty() { page } else { file };
        if file.contains('/') || file.contains(':') || !file.ends_with(".md") {
            continue; // outside docs/ (README, tuning/, a web page)
        }
        let Some((_, md)) = pages.iter().find(|(name, _)| name == file) else {
            return Err(format!("links to docs/{file}, which does not exist"));
        };
        // `[X.md](X.md), "Settings"` means that section, but would let the whole page describe
        // the command's flags: it is linked as the section, `(X.md#settings)`.
        let named = after.strip_prefix(", \"").and_then(|a| a.split_once('"')).map(|(title, _)| anchor_of(title));
        if let Some(named) = named.filter(|n| anchor.is_empty() && md_sections(md).iter().any(|(a, _)| a == n)) {
            return Err(format!("names a section of docs/{file} in words: link it, ({file}#{named})"));
        }
        if anchor.is_empty() {
            texts.push(md.clone());
        } else {
            match md_sections(md).into_iter().find(|(a, _)| a == anchor) {
                Some((_, text)) => texts.push(text),
                None => return Err(format!("links to docs/{file}#{anchor}, a section that does not exist")),
            }
        }
    }
    Ok(texts)
}

/// Whether `text` has `` `--flag `` with no letter, digit or `-` after it (`--max` is not
/// `--max-lag`).
fn describes_flag(text: &str, flag: &str) -> bool {
    let needle = format!("`{flag}");
    text.match_indices(&needle)
        .any(|(i, _)| !text[i + needle.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-'))
}

/// The flags of `flags` no text of `texts` describes.
fn undescribed<'a>(flags: &'a [String], texts: &[String]) -> Vec<&'a str> {
    flags.iter().filter(|f| !texts.iter().any(|t| describes_flag(t, f))).map(String::as_str).collect()
}

/// Every long flag a command's `--help` lists (its subcommands' too) is described in
/// docs/COMMANDS.md. The rule: `` `--flag `` appears in the command's `## mdsub COMMAND` section,
/// or in a page or section that section links to within docs/ (one hop: `(#anchor)` a section of
/// COMMANDS.md, `(PAGE.md)` the whole page, as LVC-TAP.md for `lvc`, `(PAGE.md#anchor)` only
/// that section); a link there to a page or section that does not exist fails too, and so does a
/// page linked whole with one of its sections named after it (`[X.md](X.md), "Settings"`: link
/// the section). clap's `--help`
/// and `--version` are left out; the other flags `mdsub --help` itself lists (`--log-time`, which
/// every command takes) are described once, in the page's opening sections, before the first
/// command's. The flag list comes from the built binary, so a flag added without its line here
/// fails, naming the command and the flag.
#[test]
fn every_flag_a_commands_help_lists_is_described_in_commands_md() {
    let docs_dir = format!("{}/docs", env!("CARGO_MANIFEST_DIR"));
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(&docs_dir).unwrap_or_else(|e| panic!("reading {docs_dir}: {e}")) {
        let name = entry.expect("a docs/ entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push((name.clone(), read_doc(&format!("docs/{name}"))));
        }
    }
    let reference = read_doc("docs/COMMANDS.md");
    let sections = md_sections(&reference);
    let global: Vec<String> =
        long_flags_in_help(&help_of(&[])).into_iter().filter(|f| f != "--help" && f != "--version").collect();
    assert!(global.contains(&"--log-time".to_string()), "read no --log-time from mdsub --help: {global:?}");
    let opening = reference.split("\n## mdsub ").next().unwrap_or_default().to_string();
    let mut missing = Vec::new();
    let not_global = undescribed(&global, &[opening]);
    if !not_global.is_empty() {
        missing.push(format!("every command: {} (in COMMANDS.md's opening sections)", not_global.join(" ")));
    }
    let commands = commands_in_help();
    for c in &commands {
        let mut flags = long_flags_of_command(c);
        flags.retain(|f| f != "--help" && f != "--version" && !global.contains(f));
        let Some((_, section)) = sections.iter().find(|(a, _)| *a == anchor_of(&format!("mdsub {c}"))) else {
            missing.push(format!("mdsub {c}: no `## mdsub {c}` section"));
            continue;
        };
        let mut texts = vec![section.clone()];
        match linked_texts(section, "COMMANDS.md", &pages) {
            Ok(linked) => texts.extend(linked),
            Err(e) => missing.push(format!("mdsub {c}: its section {e}")),
        }
        let lacking = undescribed(&flags, &texts);
        if !lacking.is_empty() {
            missing.push(format!("mdsub {c}: {}", lacking.join(" ")));
        }
    }
    assert!(
        missing.is_empty(),
        "flags `--help` lists that docs/COMMANDS.md does not describe (as `--flag`, in the command's section or a page or section it links to within docs/):\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_flag_doc_readers_read_what_they_are_given() {
    let help = "Usage: mdsub x\n\nCommands:\n  a  A\n\nOptions:\n      --rate <COUNT>\n          Rate; see --not-a-flag\n\n  -q, --quiet  Q\n  -h, --help\n          Print\n\nAfter:\n--after <X>\n";
    assert_eq!(long_flags_in_help(help), ["--rate", "--quiet", "--help"]);
    assert_eq!(anchor_of("Exit codes, Ctrl-C and refused values"), "exit-codes-ctrl-c-and-refused-values");
    assert_eq!(anchor_of("`mdsub lvc`"), "mdsub-lvc");
    let md = "# P\nintro\n## A b\na `--x` text\n```\n# not a heading\n```\n### Sub\nsub\n## C\nc\n";
    let sections = md_sections(md);
    let names: Vec<&str> = sections.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(names, ["p", "a-b", "sub", "c"]);
    assert!(
        sections[1].1.contains("# not a heading") && sections[1].1.contains("sub") && !sections[1].1.contains("\nc")
    );
    let pages = vec![("P.md".to_string(), md.to_string()), ("Q.md".to_string(), "`--q`".to_string())];
    let linked =
        linked_texts("see [a](#sub), [q](Q.md), [p](P.md#c), [r](../README.md), [w](https://x/y.md)", "P.md", &pages);
    assert_eq!(linked, Ok(vec!["### Sub\nsub".to_string(), "`--q`".to_string(), "## C\nc".to_string()]));
    assert!(linked_texts("[gone](#nope)", "P.md", &pages).is_err());
    // A page linked whole with one of its sections named after it: only that section counts,
    // so it is linked as the section.
    assert!(linked_texts("[p](P.md), \"A b\"", "Q.md", &pages).is_err());
    assert!(linked_texts("[p](P.md), \"not a heading\"", "Q.md", &pages).is_ok());
    assert!(describes_flag("a `--max` b", "--max") && describes_flag("`--max 5`", "--max"));
    assert!(!describes_flag("`--max-lag`", "--max") && !describes_flag("--max", "--max"));
}
