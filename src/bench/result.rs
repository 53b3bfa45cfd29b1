//! The one result shape of every end-to-end benchmark (`mdsub bench`, `lvc-bench`, `clone-bench`,
//! `capacity`): the envelope their `--json` prints and their `--save FILE` (capacity: its
//! `summary.json`) writes, and the atomic save file (their human lines go through
//! [`crate::diag::Lines`]).
//!
//! Every result is one JSON object: `kind` (which benchmark), `machine` (the [stamp](super::stamp):
//! cores, CPU, libzmq, commit, date), `settings`, `runs` (every measurement, those that are not
//! results included and marked), `medians` (per variant, each entry named by `subscriber`),
//! `ratios` (`[what, value]` pairs from the same runs), then what the benchmark adds, and `error`
//! when the whole is not a result (the command then exits non-zero).
//!
//! `bench`, `lvc-bench` and `clone-bench` measure in whole runs (each run measures every variant
//! once) and keep them on Ctrl-C ([`Completed`]: `interrupted`, `runs_completed`): a stop after
//! the first whole run gives the medians and ratios of the whole runs, marked, printed, saved,
//! exit 0; before it, nothing (`mdsub: interrupted`, 130).
//!
//! `mdsub capacity` ([`CapacityResult`](super::capacity::CapacityResult)) measures per
//! configuration rather than variants side by side: its `runs` are its trials (each naming its
//! configuration in `subscriber`), its `medians` each configuration's knee and the latency there,
//! its `ratios` each knee over the winner's; it adds `configurations` (outcomes and every trial)
//! and `winner`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::stamp::Machine;

/// A benchmark's result: the common envelope around its own run, median and ratio types.
#[derive(Debug, Clone, Serialize)]
pub struct Results<Run, Med, Ratio, Extra = ()> {
    /// Which benchmark made it: `bench`, `lvc-bench`, `clone-bench`, `capacity`.
    pub kind: &'static str,
    pub machine: Machine,
    pub settings: serde_json::Value,
    /// Every measurement, in the order made.
    pub runs: Vec<Run>,
    /// Per variant, medians of the runs that are results.
    pub medians: Vec<Med>,
    /// `(what, value)`: `B / A` from the same runs (each benchmark says which).
    pub ratios: Vec<(String, Ratio)>,
    /// What this benchmark reports beyond the envelope.
    #[serde(flatten)]
    pub extra: Extra,
    /// Why this is not a result (every run lost messages, a measurement failed); the command
    /// exits non-zero after printing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<Run: Serialize, Med: Serialize, Ratio: Serialize, Extra: Serialize> Results<Run, Med, Ratio, Extra> {
    /// Write the result to `save` when it is a result (a failed run leaves an earlier file as
    /// it was) and print it as JSON on stdout (`json`), then give `error` back as the command's.
    pub fn finish(self, json: bool, save: Option<SaveFile>) -> anyhow::Result<Self> {
        let text = serde_json::to_string_pretty(&self)?;
        if let (None, Some(save)) = (&self.error, save) {
            save.commit(text.as_bytes())?;
        }
        if json {
            crate::outln!("{text}");
        }
        match &self.error {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(self),
        }
    }
}

/// How many of its runs a benchmark measured whole: `bench`'s, `lvc-bench`'s and `clone-bench`'s
/// (flattened into their results: `interrupted`, `runs_completed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Completed {
    /// Ctrl-C (or SIGTERM) ended the benchmark before its last run: `runs`, the medians and the
    /// ratios are of the whole runs it finished ([`runs_completed`](Self::runs_completed) of
    /// `settings.runs`).
    pub interrupted: bool,
    /// The whole runs measured (every variant once each): `settings.runs`, or fewer when
    /// [`interrupted`](Self::interrupted).
    pub runs_completed: usize,
}

impl Completed {
    /// `done` whole runs of the `runs` asked for (fewer: interrupted).
    pub fn of(done: usize, runs: usize) -> Completed {
        Completed { interrupted: done < runs, runs_completed: done }
    }

    /// The line an interrupted benchmark says before its medians, `None` when it was not:
    /// `interrupted after 2 of 5 runs (run 3's 1 finished measurement left out): the medians
    /// and ratios are of those 2`. `left_out`: the measurements of the run the stop cut between
    /// its variants (none of them is in the result).
    pub fn said(&self, runs: usize, left_out: usize) -> Option<String> {
        let done = self.runs_completed;
        let note = match left_out {
            0 => String::new(),
            n => format!(" (run {}'s {n} finished measurement{} left out)", done + 1, if n == 1 { "" } else { "s" }),
        };
        self.interrupted.then(|| {
            format!("interrupted after {done} of {runs} runs{note}: the medians and ratios are of those {done}")
        })
    }
}

/// `--save PATH`: tried before the runs (a bad path fails at once: `PATH.partial` is made and
/// removed), then written as `PATH.partial` and renamed over PATH at the end, so a failed benchmark,
/// or one interrupted before its first whole run, leaves an earlier PATH as it was. Nothing stays
/// open during the runs, so one ended at once (a second Ctrl-C) leaves no partial file either.
#[derive(Debug)]
pub struct SaveFile {
    path: PathBuf,
    partial: PathBuf,
}

impl SaveFile {
    pub fn create(path: &Path) -> anyhow::Result<SaveFile> {
        // The rename at the end would fail on a directory (after the whole run) and replace
        // a device or a FIFO: refuse anything but a file, or a name not taken yet, now.
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_dir() {
                anyhow::bail!(
                    "--save {}: is a directory (give a file name in it, e.g. {})",
                    path.display(),
                    path.join("bench.json").display()
                );
            }
            if !meta.is_file() {
                anyhow::bail!("--save {}: is not a regular file", path.display());
            }
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        // Said as the flag and the path the person gave (the `.partial` name is ours).
        std::fs::File::create(&partial).map_err(|e| anyhow::anyhow!("--save {}: {e}", path.display()))?;
        let _ = std::fs::remove_file(&partial);
        Ok(SaveFile { path: path.to_path_buf(), partial })
    }

    /// Write `bytes` to `PATH.partial` and rename it over PATH. A failure is said as the flag
    /// and the path the person gave, with its cause once (`--save PATH: No space left on
    /// device`): the `.partial` name is ours, and it is removed.
    pub fn commit(self, bytes: &[u8]) -> anyhow::Result<()> {
        use std::io::Write as _;
        let written = std::fs::File::create(&self.partial)
            .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&self.partial, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&self.partial);
        }
        written.map_err(|e| anyhow::anyhow!("--save {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_benchmark_says_how_many_whole_runs_its_result_is_of() {
        assert_eq!(Completed::of(3, 3), Completed { interrupted: false, runs_completed: 3 });
        assert_eq!(Completed::of(3, 3).said(3, 0), None);
        let c = Completed::of(2, 5);
        assert!(c.interrupted);
        assert_eq!(
            c.said(5, 0).as_deref(),
            Some("interrupted after 2 of 5 runs: the medians and ratios are of those 2")
        );
        assert_eq!(
            c.said(5, 1).as_deref(),
            Some("interrupted after 2 of 5 runs (run 3's 1 finished measurement left out): the medians and ratios are of those 2")
        );
        assert!(c.said(5, 2).is_some_and(|l| l.contains("(run 3's 2 finished measurements left out)")));
        let v = serde_json::to_value(c).expect("json");
        assert_eq!(v, serde_json::json!({"interrupted": true, "runs_completed": 2}));
    }

    /// A failed final write or rename names the path given to `--save`, with its cause once,
    /// and leaves no `.partial` behind. Before, it named `PATH.partial` (`writing
    /// x.json.partial: Is a directory`, `renaming x.json.partial to x.json: …`).
    #[test]
    fn a_failed_commit_names_the_saved_path_and_its_cause_once() {
        let dir = crate::test_dir("savefile");
        let path = dir.join("x.json");
        // The rename fails: a directory took the path during the run.
        let save = SaveFile::create(&path).expect("save");
        std::fs::create_dir(&path).expect("a directory at the path");
        let e = crate::diag::error_line(&save.commit(b"{}").expect_err("rename over a directory"));
        assert_eq!(e, format!("--save {}: Is a directory (os error 21)", path.display()));
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 1, "no .partial left: {e}");
        std::fs::remove_dir(&path).expect("rmdir");
        // The write fails: a directory took the `.partial` name.
        let save = SaveFile::create(&path).expect("save");
        std::fs::create_dir(dir.join("x.json.partial")).expect("a directory at the partial name");
        let e = crate::diag::error_line(&save.commit(b"{}").expect_err("write"));
        assert_eq!(e, format!("--save {}: Is a directory (os error 21)", path.display()));
        assert!(!e.contains(".partial"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
