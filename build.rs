// Stamps the git commit into the binary so benchmark output names it.
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    println!("cargo:rustc-env=MDSUB_COMMIT={commit}{}", if dirty { "+dirty" } else { "" });
    // In a git worktree `.git` is a file, so ask git where HEAD and the index
    // really are; watching a path that does not exist would rerun this
    // script (and relink with fat LTO) on every build.
    let paths = std::process::Command::new("git")
        .args(["rev-parse", "--git-path", "HEAD", "--git-path", "index"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let mut watched = 0;
    for path in paths.lines().filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
        watched += 1;
    }
    if watched == 0 {
        // Not a git checkout (a source tarball): nothing to watch but this file.
        println!("cargo:rerun-if-changed=build.rs");
    }
}
