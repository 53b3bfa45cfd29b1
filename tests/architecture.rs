//! docs/ARCHITECTURE.md's import rules, checked on the source: each rule here is one the page
//! states, so a change that breaks it fails here instead of quietly making the page untrue.
//!
//! The scan reads `src/` as text. It skips comment lines and `#[cfg(test)] mod … {` blocks
//! (rustfmt closes a top-level module with a `}` in column 0), so test code may use
//! whatever it needs. It is a text scan, not a compiler: an import renamed away from the
//! names below would pass it (a reviewer's job).

use std::path::{Path, PathBuf};

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

/// Every code line outside `allowed` files that contains any of `needles`, as `path:line: text`.
fn offenders(needles: &[&str], allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for s in sources() {
        if allowed(&s.path) {
            continue;
        }
        for (n, l) in &s.lines {
            if needles.iter().any(|needle| l.contains(needle)) {
                found.push(format!("{}:{n}: {}", s.path, l.trim()));
            }
        }
    }
    found
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
fn output_goes_through_diag() {
    // eprintln! panics on a closed stderr and println! on a closed stdout: diag! and outln! do not.
    let found = offenders(&["println!(", "eprintln!(", "print!(", "eprint!(", "io::stderr()"], |p| p == "src/diag.rs");
    assert!(found.is_empty(), "printing outside diag (use crate::diag! / crate::outln!):\n{}", found.join("\n"));
}

#[test]
fn the_primitives_import_only_each_other() {
    let primitive = |p: &str| {
        p.starts_with("src/wire/")
            || p == "src/clock.rs"
            || p == "src/zmqx.rs"
            || p.starts_with("src/zmqx/")
            || p == "src/diag.rs"
            || p == "src/outfile.rs"
    };
    let mut found = Vec::new();
    for s in sources().into_iter().filter(|s| primitive(&s.path)) {
        for (n, l) in &s.lines {
            let mut rest = l.as_str();
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let module: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                // `crate::diag!`/`crate::outln!` are macros exported at the root by diag itself.
                let is_macro = rest[module.len()..].starts_with('!');
                if !is_macro && !["wire", "clock", "zmqx", "diag", "outfile"].contains(&module.as_str()) {
                    found.push(format!("{}:{n}: {}", s.path, l.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "wire/clock/zmqx/diag/outfile importing the rest of mdsub:\n{}", found.join("\n"));
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
    let mut found = Vec::new();
    for core in CORES {
        let s = all
            .iter()
            .find(|s| s.path == *core)
            .unwrap_or_else(|| panic!("{core} is gone: update this list and docs/ARCHITECTURE.md's cores"));
        for (n, l) in &s.lines {
            if forbidden.iter().any(|f| l.contains(f)) {
                found.push(format!("{}:{n}: {}", s.path, l.trim()));
            }
        }
    }
    assert!(found.is_empty(), "a core reading a clock or using a socket, thread or file:\n{}", found.join("\n"));
}

#[test]
fn the_scan_sees_code_and_skips_comments_and_test_modules() {
    let text = "use a;\n// thread::spawn in a comment\nfn f() {}\n#[cfg(test)]\nmod tests {\n    fn g() { std::thread::spawn(|| ()); }\n}\nfn after() {}\n";
    let lines: Vec<String> = code_lines(text).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, ["use a;", "fn f() {}", "fn after() {}"]);
}
