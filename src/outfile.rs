//! Output files a run writes (`--hlog`, `--hgrm`, tap `--record`, bench's `--outputs-dir`):
//! claimed once, before the run, under an exclusive advisory lock held until the run ends.
//!
//! Two runs given the same path used to write it together: `File::create` truncated the first
//! run's file under it, and an interval log ended up with both runs' headers interleaved (no
//! HdrHistogram reader takes that), with both runs exiting 0. A claim opens the file without
//! truncating it, takes `flock(LOCK_EX | LOCK_NB)` on it (std's [`File::try_lock`]) and only
//! then empties it, so a second run is refused with [`OutFileError::Busy`] and the first run's
//! file is left as it was ([`lock_all`] locks without emptying, for an output whose earlier
//! content is kept: `--hlog`, `--hgrm` and tap `--record` keep an earlier run's file under its
//! start's name, [`judge_earlier`] and [`Judged::claim`], one implementation for the three). The
//! lock is the kernel's: it goes with the last handle on the file, however the process ends, so
//! a crashed run leaves no stale lock behind.
//!
//! The lock is advisory (a program that does not ask for it is not stopped) and only regular
//! files take part: `/dev/null`, `/dev/full`, `/dev/stdout` or a FIFO are opened as they are,
//! unlocked and not emptied (they cannot be). Every output is opened non-blocking: a FIFO with
//! no reader is refused at once ([`OutFileError::NoReader`]) rather than holding start-up, where
//! the first Ctrl-C and `--max-duration` did not reach it (inputs: [`crate::infile`]).
//! [`distinct`] refuses one path given to two outputs of a run (`--hlog x --hgrm x`), compared
//! canonicalised, before anything is claimed.
//!
//! An output rewritten whole while its run goes on (`--hgrm`) is written by
//! [`Claimed::replace`]: a new file beside it, locked, filled, renamed over it (a killed run
//! leaves the old content or the new, never half of one), the claim then holding the new file.

use std::fs::{File, OpenOptions};
use std::io::Seek as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why an output file could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum OutFileError {
    /// Another process holds the file's lock: it is writing the file now. That process, when
    /// found (`/proc/locks`: its pid and command, as [`OutFileError::NextBusy`] names it).
    #[error(
        "{flag} {}: {} is writing this file (it holds the file's lock); give another path or let that run end",
        path.display(),
        holder.as_deref().unwrap_or("another process")
    )]
    Busy { flag: String, path: PathBuf, holder: Option<String> },
    /// Another process holds the lock of `.NAME.next` beside FILE: it is writing the new file a
    /// rewrite or rotation of FILE renames over it (another run, mid-rewrite of FILE). This run
    /// does not take that file from it.
    #[error(
        "{flag} {}: {} holds the lock of {}, the new file a rewrite or rotation of this file writes (another run \
         is replacing this file now); let that run end (or end it), then start this one again, or give another path",
        path.display(),
        holder.as_deref().unwrap_or("another process"),
        next.display()
    )]
    NextBusy { flag: String, path: PathBuf, next: PathBuf, holder: Option<String> },
    /// Two outputs of one run name the same file.
    #[error("{first} and {second} both name {}: give each its own file", path.display())]
    Same { first: String, second: String, path: PathBuf },
    /// A FIFO no process reads (opening it for writing would wait for one).
    #[error("{flag} {}: a FIFO no process is reading; start its reader first, or give a file", path.display())]
    NoReader { flag: String, path: PathBuf },
    /// Opening, locking or emptying the file failed.
    #[error("{flag} {}: {source}", path.display())]
    Io { flag: String, path: PathBuf, source: std::io::Error },
}

/// An output file claimed for a run: the lock is held while any clone of this (or a handle
/// from [`Claimed::rewrite`]) is alive. Its clones share one file: once [`Claimed::replace`]
/// put a new file at the path, every clone holds that one (and its lock).
#[derive(Debug, Clone)]
pub struct Claimed {
    /// What the file is to the person who named it: its flag (`--hlog`), or a description.
    flag: String,
    path: PathBuf,
    file: Arc<Mutex<File>>,
    regular: bool,
}

/// Why [`Claimed::replace`] did not put a new file at the path; the path still names the file
/// it named, as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// The new file could not be made beside the path (a folder this run may not write in, a
    /// read-only mount), or is another's: writing in place ([`Claimed::rewrite`]) may still work.
    #[error("making {}: {source}", temp.display())]
    Temp { temp: PathBuf, source: std::io::Error },
    /// Writing the new file, syncing it, or renaming it over the path, failed.
    #[error("{0}")]
    Write(std::io::Error),
    /// The new file is at the path, whole and synced, and the claim holds it, but syncing its
    /// folder failed: the rename may not outlive a power loss.
    #[error("syncing its folder after the rename: {0}")]
    Sync(std::io::Error),
}

impl Claimed {
    /// Open `path` for `flag` (create it if missing, never truncate it first), lock it, then
    /// empty it.
    pub fn claim(flag: &str, path: &Path) -> Result<Claimed, OutFileError> {
        let mut claimed = claim_all(&[(flag, path)])?;
        Ok(claimed.remove(0))
    }

    /// Open (create if missing, never truncate): nothing locked or emptied yet. Opened
    /// non-blocking, so a FIFO nobody reads is refused at once ([`OutFileError::NoReader`])
    /// instead of holding the run's start-up; the handle then blocks as usual on writes.
    fn open(flag: &str, path: &Path) -> Result<Claimed, OutFileError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                // A FIFO (or /dev/stdout on one) with no reader: open(2) says ENXIO.
                Some(libc::ENXIO) => OutFileError::NoReader { flag: flag.to_string(), path: path.to_path_buf() },
                _ => io(flag, path)(e),
            })?;
        let meta = file.metadata().map_err(io(flag, path))?;
        if meta.is_file() {
            if let Some(stream) = standard_stream_of(&meta) {
                return Ok(Claimed { flag: flag.to_string(), path: path.to_path_buf(), file: stream, regular: false });
            }
        }
        let regular = meta.is_file();
        if !regular {
            blocking(&file).map_err(io(flag, path))?;
        }
        // A symlink names its target: the claim is the target's, so keeping, rotating and
        // pruning work on the file in its own folder and the link goes on naming the file this
        // run writes (renaming over the path would replace the link with a file of its own).
        let path = if regular { link_target(path) } else { path.to_path_buf() };
        Ok(Claimed { flag: flag.to_string(), path, file: Arc::new(Mutex::new(file)), regular })
    }

    /// The file this claim holds now (a poisoned lock still holds it: nothing is left half-set
    /// under it).
    fn file(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take the file's lock (regular files only).
    fn lock(&self) -> Result<(), OutFileError> {
        if !self.regular {
            return Ok(());
        }
        let file = self.file();
        match file.try_lock() {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => Err(self.busy(lock_holder(&file))),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&self.flag, &self.path)(e)),
        }
    }

    /// [`OutFileError::Busy`] for this file, held by `holder` ([`lock_holder`]).
    fn busy(&self, holder: Option<String>) -> OutFileError {
        OutFileError::Busy { flag: self.flag.clone(), path: self.path.clone(), holder }
    }

    /// `(device, inode)` of a regular file: two outputs are one file when these agree.
    fn identity(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let m = self.file().metadata().ok().filter(|_| self.regular)?;
        Some((m.dev(), m.ino()))
    }

    /// Whether `m` is this claim's file's (the same device and inode).
    fn is_this(&self, m: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        Some((m.dev(), m.ino())) == self.identity()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A regular file (one that can be locked, emptied, renamed); not a device or FIFO.
    pub fn is_regular(&self) -> bool {
        self.regular
    }

    /// Whether the path still names this file: false once it was moved or removed (an external
    /// logrotate's rename), or another file was put there. A path that cannot be looked at for
    /// another reason (a folder not searchable any more) is said as that error.
    pub fn still_named(&self) -> std::io::Result<bool> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(self.is_this(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The file's length now (0 once an external `copytruncate` emptied it).
    pub fn file_len(&self) -> std::io::Result<u64> {
        self.file().metadata().map(|m| m.len())
    }

    /// Claim this path anew, for this flag: the file now there (made if missing), locked,
    /// emptied. For a path whose file was moved away ([`still_named`](Self::still_named) false).
    pub fn again(&self) -> Result<Claimed, OutFileError> {
        Claimed::claim(&self.flag, &self.path)
    }

    /// Close this file under a second name and put a new one, claimed and empty, at its path: the
    /// content stays under `closed` (a hard link; a file already there is never replaced: that
    /// is an error, unless it is this very file, linked there by a run that ended between the
    /// link and the rename, or an empty file no process holds, a placeholder a killed run left:
    /// `empty_unheld`), then a new file is claimed beside it (`.NAME.next`) and renamed over
    /// the path, so the path names a locked file throughout and another run given it is still
    /// refused. On an error nothing is left changed (the link and the new file are removed) and
    /// this claim stays as it was; the error names the step and the file.
    ///
    /// A file system without hard links (vfat, some FUSE and network mounts: the link fails with
    /// `EPERM`, `EOPNOTSUPP`, `EMLINK`, `EXDEV` or `ENOSYS`) is rotated by renames instead
    /// ([`Closing::Renamed`]): the new file is claimed first, then this file is renamed to
    /// `closed` and the new one to the path. Nothing written is lost (this claim's handle goes on
    /// naming the same file, now `closed`), but the path names no file between the two renames;
    /// a file another run made there in that moment is not replaced (neither rename ever
    /// replaces: `renameat2(RENAME_NOREPLACE)`, or an `O_EXCL` placeholder renamed over): this
    /// claim then stays as it was, its file under `closed`, and the error says so; the second
    /// rename failing otherwise is undone, and an undo that fails for another cause says that
    /// cause (`not_undone`).
    pub fn rotate(&self, closed: &Path) -> Result<(Claimed, Closing), OutFileError> {
        let linked = match hard_link(&self.path, closed) {
            // A placeholder a killed run left at the closed name (an empty file nobody holds).
            // Removed under its lock, then linked again.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match empty_unheld(closed) {
                Some(_held) => std::fs::remove_file(closed).and_then(|()| hard_link(&self.path, closed)),
                None => Err(e),
            },
            r => r,
        };
        let linked = match linked {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && self.is_named(closed) => false,
            Err(e) if no_hard_links(&e) => return self.rotate_by_renames(closed).map(|c| (c, Closing::Renamed)),
            Err(e) => return Err(io(&self.flag, closed)(e)),
        };
        let next = self.next_path();
        let fresh = self.claim_next(&next).and_then(|fresh| {
            std::fs::rename(&next, &self.path).map_err(|e| {
                let _ = std::fs::remove_file(&next);
                io(&self.flag, &self.path)(e)
            })?;
            Ok(fresh)
        });
        match fresh {
            Ok(fresh) => Ok((Claimed { path: self.path.clone(), ..fresh }, Closing::Linked)),
            Err(e) => {
                if linked {
                    let _ = std::fs::remove_file(closed);
                }
                Err(e)
            }
        }
    }

    /// [`rotate`](Self::rotate) where the file system has no hard links: two renames, neither
    /// replacing a file.
    fn rotate_by_renames(&self, closed: &Path) -> Result<Claimed, OutFileError> {
        let next = self.next_path();
        let fresh = self.claim_next(&next)?;
        // A placeholder either rename makes takes FILE's owner and mode from it.
        let like = self.file();
        if let Err(e) = rename_noreplace(&self.path, closed, &like) {
            let _ = std::fs::remove_file(&next);
            return Err(io(&self.flag, closed)(e));
        }
        // The path names no file from here to the next rename.
        if let Err(e) = rename_noreplace(&next, &self.path, &like) {
            let _ = std::fs::remove_file(&next);
            return Err(match rename_noreplace(closed, &self.path, &like) {
                Ok(()) => io(&self.flag, &self.path)(e),
                Err(undo) => io(&self.flag, &self.path)(not_undone(e, &undo, closed)),
            });
        }
        Ok(Claimed { path: self.path.clone(), ..fresh })
    }

    /// `.NAME.next` beside the file: where a rotation claims the new file, and where
    /// [`replace`](Self::replace) writes one.
    fn next_path(&self) -> PathBuf {
        next_path_of(&self.path)
    }

    /// Claim `next`, the new file a rotation puts at the path, with this file's mode bits (and
    /// owner and group where permitted), as [`replace`](Self::replace) gives its new file: one
    /// open that never follows a link ([`open_next`]), the file opened then judged (a regular
    /// file, locked, still at `next`) and emptied. A link (or anything but a regular file) at
    /// `next` is refused, its target untouched; one another process holds locked is
    /// [`OutFileError::NextBusy`], naming that process.
    fn claim_next(&self, next: &Path) -> Result<Claimed, OutFileError> {
        let file = fresh_next(next, &self.file()).map_err(|e| match e {
            NextError::Busy(holder) => OutFileError::NextBusy {
                flag: self.flag.clone(),
                path: self.path.clone(),
                next: next.to_path_buf(),
                holder,
            },
            e => io(&self.flag, next)(e.into()),
        })?;
        Ok(Claimed {
            flag: self.flag.clone(),
            path: next.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
            regular: true,
        })
    }

    /// Remove the `.NAME.next` a run left beside this file when it ended during a rewrite or a
    /// rotation (`kill -9`): a regular file whose lock no process holds (a live run locks it
    /// before it writes it, and holds it to the rename: that one is left alone). Said in one
    /// line on stderr; one that cannot be removed is said too, and the run goes on (a rewrite
    /// empties and reuses it).
    fn remove_stale_next(&self) {
        let next = self.next_path();
        // Not followed if a link, never waited on if a FIFO: only a regular file is a run's.
        let Ok(f) = open_unfollowed(&next) else {
            return;
        };
        let is_file = f.metadata().is_ok_and(|m| m.is_file());
        if !is_file || f.try_lock().is_err() {
            return;
        }
        // Still the file locked (not one another run renamed there meanwhile), then removed
        // under its lock.
        if !names(&next, &f) {
            return;
        }
        match std::fs::remove_file(&next) {
            Ok(()) => crate::diag!(
                "{}: removed {}, left by a run that ended while writing it (killed?)",
                self.named(),
                next.display()
            ),
            Err(e) => crate::diag!(
                "{}: could not remove {}, left by a run that ended while writing it: {e}",
                self.named(),
                next.display()
            ),
        }
    }

    /// Whether `other` names this very file (a link to it).
    fn is_named(&self, other: &Path) -> bool {
        std::fs::metadata(other).is_ok_and(|m| self.is_this(&m))
    }

    /// `FLAG PATH`, as an error about the file starts.
    pub fn named(&self) -> String {
        format!("{} {}", self.flag, self.path.display())
    }

    /// A handle that writes the file from its start, the file emptied first (each run of a
    /// benchmark writes it anew under the one claim). It holds the lock too.
    pub fn rewrite(&self) -> std::io::Result<File> {
        let mut f = self.file().try_clone()?;
        if self.regular {
            f.set_len(0)?;
            f.rewind()?;
        }
        Ok(f)
    }

    /// Write the file in place from its start ([`rewrite`](Self::rewrite)) with `write`, then sync
    /// it (a regular file): where no new file can be made beside it for
    /// [`replace`](Self::replace).
    pub fn rewrite_synced(&self, write: impl FnOnce(File) -> std::io::Result<()>) -> std::io::Result<()> {
        let f = self.rewrite()?;
        let synced = f.try_clone()?;
        write(f)?;
        if self.regular {
            synced.sync_all()?;
        }
        Ok(())
    }

    /// Write a whole new content of a regular file, never leaving it half-written at the path
    /// whenever the process ends (`kill -9` included): `write` fills a new file beside it
    /// (`.NAME.next`, in the folder of a symlink's target, so a link stays a link), locked before
    /// it is written, which is then renamed over the path; the claim (and every clone of it) then
    /// holds the new file and its lock. The path names a locked file throughout: a run given it
    /// between the rename and the old file's release finds, once it has the old file's lock,
    /// that the path names another file, and is refused ([`Locked::check_named`]). The new file
    /// (`fresh_next`) takes the replaced file's permission bits (`0777`), and its owner and
    /// group where this process may give them (root: always; another user: a group it is in),
    /// so a file an operator opened to a dashboard's user stays open to it. It is synced
    /// (`fsync`) before the rename and its folder after ([`ReplaceError::Sync`] when only that
    /// failed), so a power loss leaves the old content or the new, as a kill does. On an error
    /// nothing is changed (the new file is removed) and the error says which step failed. A
    /// device or FIFO is written as it is, through [`rewrite`](Self::rewrite).
    pub fn replace(&self, write: impl FnOnce(File) -> std::io::Result<()>) -> Result<(), ReplaceError> {
        if !self.regular {
            return self.rewrite().and_then(write).map_err(ReplaceError::Write);
        }
        let temp = self.next_path();
        // A regular file this run made or one a killed run left (emptied); never a link's target.
        let fresh = fresh_next(&temp, &self.file()).map_err(|e| match e {
            NextError::Prepare(e) => ReplaceError::Write(e),
            e => ReplaceError::Temp { temp: temp.clone(), source: e.into() },
        })?;
        let written = fresh
            .try_clone()
            .and_then(write)
            .and_then(|()| fresh.sync_all())
            .and_then(|()| std::fs::rename(&temp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(ReplaceError::Write(e));
        }
        // The old file (unlinked now) and its lock go with its last handle.
        *self.file() = fresh;
        sync_folder(&self.path).map_err(ReplaceError::Sync)
    }
}

/// The error of a rotation by renames whose second rename failed with `e` and whose undo (the
/// file renamed back from `closed`) failed with `undo`: the run's file stays under `closed`.
/// Only an undo refused with `EEXIST` means another process made FILE between the two renames;
/// any other cause (`ENOLCK`, `ENOSPC`, `EIO`) is said as it is, once: not again when it is
/// the one the second rename met.
fn not_undone(e: std::io::Error, undo: &std::io::Error, closed: &Path) -> std::io::Error {
    let why = if undo.kind() == std::io::ErrorKind::AlreadyExists {
        ": another process made this file between the two renames of a rotation without hard links".to_string()
    } else if same_os_error(undo, &e) {
        "; renaming it back failed the same way".to_string()
    } else {
        format!("; renaming it back failed: {undo}")
    };
    std::io::Error::new(e.kind(), format!("{e}{why}; what this run wrote is in {}", closed.display()))
}

/// An OS error with the step it came from, said `{doing}: {os}`: the error keeps its errno
/// ([`os_error_of`]) where an `io::Error` made of the text alone would lose it.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {os}")]
struct Doing {
    doing: &'static str,
    os: std::io::Error,
}

/// The errno of `e`, or of the OS error a [`Doing`] in it carries.
fn os_error_of(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| e.get_ref()?.downcast_ref::<Doing>()?.os.raw_os_error())
}

/// True when `a` and `b` are one OS error (one errno, one kind), however each was worded.
/// Errors without an errno never are: each is said, whatever its text.
fn same_os_error(a: &std::io::Error, b: &std::io::Error) -> bool {
    os_error_of(a).is_some() && os_error_of(a) == os_error_of(b) && a.kind() == b.kind()
}

/// How [`Claimed::rotate`] closed the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// A hard link to the closed name, then the new file renamed over the path: the path names
    /// a file throughout.
    Linked,
    /// The file system has no hard links: the file renamed to the closed name, then the new one
    /// to the path, which names no file between the two.
    Renamed,
}

#[cfg(test)]
thread_local! {
    /// Tests set this to make [`hard_link`] fail as on a file system without hard links (vfat).
    pub(crate) static NO_HARD_LINKS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `std::fs::hard_link`; in tests, failing with `EPERM` (as vfat does) when [`NO_HARD_LINKS`]
/// is set.
fn hard_link(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    if NO_HARD_LINKS.with(std::cell::Cell::get) {
        return Err(std::io::Error::from_raw_os_error(libc::EPERM));
    }
    std::fs::hard_link(from, to)
}

/// Whether a failed `link(2)` says the file system has no hard links (or none across these
/// names), so a rename would do.
fn no_hard_links(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK | libc::EXDEV | libc::ENOSYS))
}

#[cfg(test)]
thread_local! {
    /// Tests set this to make `renameat2(RENAME_NOREPLACE)` fail with `EINVAL`, as on a file
    /// system that does not take the flag (some FUSE mounts).
    pub(crate) static NO_RENAME_NOREPLACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Tests set this to act as another process would in a window (see [`window`]).
    pub(crate) static WINDOW: std::cell::RefCell<Option<WindowHook>> = const { std::cell::RefCell::new(None) };
}

/// What a test does in a [`window`], given the path.
#[cfg(test)]
pub(crate) type WindowHook = Box<dyn FnMut(&Path)>;

/// A window another process may act in: just before the one call on `path` that must neither
/// follow a link nor replace a file made there. Tests run [`WINDOW`] here; nothing otherwise.
fn window(path: &Path) {
    #[cfg(test)]
    {
        let hook = WINDOW.with(|w| w.borrow_mut().take());
        if let Some(mut hook) = hook {
            hook(path);
            WINDOW.with(|w| *w.borrow_mut() = Some(hook));
        }
    }
    let _ = path;
}

/// Why [`open_next`] did not open a `.NAME.next`.
#[derive(Debug, thiserror::Error)]
enum NextError {
    /// A link, FIFO, device or folder is there: never written through.
    #[error("it is there and not a regular file (a link is never written through)")]
    NotRegular,
    /// Another process holds its lock (it is writing it): that process, when found.
    #[error("{} holds its lock", .0.as_deref().unwrap_or("another process"))]
    Busy(Option<String>),
    /// The file was put there by another process between this open and this lock.
    #[error("it was replaced while it was being opened")]
    Replaced,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Opened, but emptying it or giving it FILE's owner and mode failed ([`fresh_next`]).
    #[error(transparent)]
    Prepare(std::io::Error),
}

impl From<NextError> for std::io::Error {
    fn from(e: NextError) -> Self {
        match e {
            NextError::Io(e) | NextError::Prepare(e) => e,
            e => std::io::Error::other(e.to_string()),
        }
    }
}

/// Open `next`, the new file beside an output (`.NAME.next`), in one `open(2)` that never
/// follows a link (`O_NOFOLLOW`: a link there is `ELOOP`) nor waits on a FIFO (`O_NONBLOCK`),
/// creating it if missing and not truncating it; then judge what was opened, not the name: a
/// regular file (`fstat`), locked by this process, still named `next`. A check of the name
/// before an open that follows links would let a link made between the two be written through.
fn open_next(next: &Path) -> Result<File, NextError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    window(next);
    let opened = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(next);
    let file = match opened {
        Ok(f) => f,
        // A link (O_NOFOLLOW), or a FIFO with no reader.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => return Err(NextError::NotRegular),
        Err(e) => return Err(e.into()),
    };
    if !file.metadata()?.is_file() {
        return Err(NextError::NotRegular);
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(NextError::Busy(lock_holder(&file))),
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    if !names(next, &file) {
        return Err(NextError::Replaced);
    }
    Ok(file)
}

/// `next`, the new file that goes over FILE (a rotation's, a rewrite's), opened ([`open_next`]),
/// emptied and given `like`'s (FILE's) owner and mode ([`same_owner_and_mode`]); when the last
/// two fail, [`NextError::Prepare`], the file removed (if `next` still names it).
fn fresh_next(next: &Path, like: &File) -> Result<File, NextError> {
    let file = open_next(next)?;
    file.set_len(0).and_then(|()| same_owner_and_mode(like, &file)).map_err(|e| {
        if names(next, &file) {
            let _ = std::fs::remove_file(next);
        }
        NextError::Prepare(e)
    })?;
    Ok(file)
}

/// Whether `path` names `file` itself (not following a link at `path`).
fn names(path: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let same = |m: std::fs::Metadata| file.metadata().is_ok_and(|o| (o.dev(), o.ino()) == (m.dev(), m.ino()));
    std::fs::symlink_metadata(path).is_ok_and(same)
}

/// The process that holds `file`'s `flock` lock, as `process PID (COMMAND)`, found in
/// `/proc/locks` (`None` where that cannot be read or has no such lock: another pid
/// namespace's process, or one that released it meanwhile).
fn lock_holder(file: &File) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let m = file.metadata().ok()?;
    let (major, minor) = (u64::from(libc::major(m.dev())), u64::from(libc::minor(m.dev())));
    let locks = proc_locks()?;
    let pid = locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 31251 fe:00:5448651 0 EOF`; a waiter's line has `->`
        // before FLOCK.
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = fields.get(5)?.split(':');
        let hex = |s: Option<&str>| s.and_then(|s| u64::from_str_radix(s, 16).ok());
        let ino: Option<u64> = id.next_back().and_then(|s| s.parse().ok());
        let at = (hex(id.next()), hex(id.next()), ino) == (Some(major), Some(minor), Some(m.ino()));
        // 0: a process this one's pid namespace does not see.
        at.then(|| fields[4].parse::<u32>().ok().filter(|&pid| pid > 0)).flatten()
    })?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Some(match comm.trim() {
        "" => format!("process {pid}"),
        comm => format!("process {pid} ({comm})"),
    })
}

/// `/proc/locks`, each read as large as a page or more. The kernel walks its lock list afresh at
/// every `read` (by position), so a list read in small pieces while other processes take and
/// drop locks can skip the very line looked for: `read_to_string` starts with a 32-byte read,
/// and the holder of a lock was then missed now and then (said as "another process").
fn proc_locks() -> Option<String> {
    use std::io::Read as _;
    let mut f = File::open("/proc/locks").ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(2 * len, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

/// The process holding the lock of the regular file at `path` now ([`lock_holder`]), the file
/// opened without following a link or waiting on a FIFO.
fn held_at(path: &Path) -> Option<String> {
    lock_holder(&open_unfollowed(path).ok()?)
}

/// `path` opened to read, never through a link (`O_NOFOLLOW`) nor waiting on a FIFO
/// (`O_NONBLOCK`): to look at a file another run may have put there.
fn open_unfollowed(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

/// Rename `from` to `to` unless `to` exists (`renameat2(RENAME_NOREPLACE)`; `EEXIST` if it
/// does). Where the file system does not take that flag, [`rename_over_placeholder`], its
/// placeholder given `like`'s (FILE's) owner and mode.
fn rename_noreplace(from: &Path, to: &Path, like: &File) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the path"))
    };
    let (f, t) = (c(from)?, c(to)?);
    #[cfg(test)]
    if NO_RENAME_NOREPLACE.with(std::cell::Cell::get) {
        return rename_over_placeholder(from, to, like);
    }
    // SAFETY: two NUL-terminated paths that live across the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => rename_over_placeholder(from, to, like),
        _ => Err(e),
    }
}

/// Rename `from` to `to` where `renameat2(RENAME_NOREPLACE)` is not taken, never replacing a
/// file another process puts at `to`: `to` is made first, empty, by `O_CREAT | O_EXCL` (which
/// never opens a file or link already there: `EEXIST`) and locked, then `from` is renamed over
/// that placeholder. A run that opened the placeholder and took its lock first keeps it
/// (`EEXIST`); one that opens it later finds it locked and is refused, so the rename only ever
/// replaces this empty file. (Looking at `to` and then renaming, as before, replaced a file made
/// between the look and the rename: between a rotation's two renames, another run's new FILE.)
///
/// The placeholder is made with `like`'s (FILE's) permission bits (`0777`) and owner and group
/// where permitted ([`same_owner_and_mode`]), as `.NAME.next` is: a run killed before the
/// rename leaves an empty FILE with FILE's mode, not `0600`. An empty file no process holds
/// already at `to` ([`empty_unheld`]: a placeholder a run killed before its rename left) is
/// removed, under its lock, and made anew as this run's (left, it refused every later run
/// keeping an earlier FILE under that closed name): every placeholder then has FILE's mode and
/// owner, whoever's the one left was, and removing it takes no more than the rename over it
/// would (write access to the folder; in a
/// sticky one, its owner or root). A file made there between the removal and the new one is
/// that process's (`EEXIST`). Locking the placeholder failing (not another's lock: `ENOLCK`
/// on a mount without locks) is said as that error, and the placeholder removed.
fn rename_over_placeholder(from: &Path, to: &Path, like: &File) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let exists = || std::io::Error::from_raw_os_error(libc::EEXIST);
    // Made with FILE's bits (less the umask; all of them set below), so that even a kill just
    // after the open leaves it with no more than FILE's.
    let bits = like.metadata()?.permissions().mode() & 0o777;
    let make = || OpenOptions::new().write(true).create_new(true).mode(bits).open(to);
    window(to);
    let placeholder = match make() {
        Ok(f) => f,
        // An empty file no process holds: a placeholder a run killed here left (nothing in it
        // to lose, whoever's it is), removed under its lock and made anew, as this run's.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match empty_unheld(to) {
            Some(_left) => std::fs::remove_file(to).and_then(|()| make())?,
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    // Removing what this run made, on an error before the rename.
    let undo = |e: std::io::Error| {
        if names(to, &placeholder) {
            let _ = std::fs::remove_file(to);
        }
        e
    };
    same_owner_and_mode(like, &placeholder).map_err(undo)?;
    window(to);
    match lock_placeholder(&placeholder) {
        Ok(()) if names(to, &placeholder) => {}
        // Another process took it between its making and this lock: its file now.
        Ok(()) | Err(std::fs::TryLockError::WouldBlock) => return Err(exists()),
        Err(std::fs::TryLockError::Error(e)) => {
            let doing = "locking the empty file made there first, for a rename that never replaces";
            return Err(undo(std::io::Error::new(e.kind(), Doing { doing, os: e })));
        }
    }
    std::fs::rename(from, to).inspect_err(|_| {
        if names(to, &placeholder) {
            let _ = std::fs::remove_file(to);
        }
    })
}

#[cfg(test)]
thread_local! {
    /// Tests set this to make locking a placeholder at this path fail once with `ENOLCK` (a
    /// mount that takes no locks), not as another's lock would.
    pub(crate) static PLACEHOLDER_LOCK_FAILS: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// `try_lock` on a placeholder; in tests, failing as [`PLACEHOLDER_LOCK_FAILS`] says.
fn lock_placeholder(placeholder: &File) -> Result<(), std::fs::TryLockError> {
    #[cfg(test)]
    if PLACEHOLDER_LOCK_FAILS.with(|p| p.borrow_mut().take_if(|p| names(p, placeholder)).is_some()) {
        return Err(std::fs::TryLockError::Error(std::io::Error::from_raw_os_error(libc::ENOLCK)));
    }
    placeholder.try_lock()
}

/// `path`'s file when it is an empty regular file no process holds locked, opened (never
/// through a link) and locked by this one: a placeholder a run killed during
/// [`rename_over_placeholder`] left, whose name may be taken (nothing is in it to lose). None
/// otherwise: anything else there is someone's.
fn empty_unheld(path: &Path) -> Option<File> {
    let empty = |m: std::fs::Metadata| m.is_file() && m.len() == 0;
    if !std::fs::symlink_metadata(path).is_ok_and(empty) {
        return None;
    }
    let f = open_unfollowed(path).ok()?;
    (f.try_lock().is_ok() && f.metadata().is_ok_and(empty) && names(path, &f)).then_some(f)
}

/// Clear `O_NONBLOCK` on `file` (a FIFO or a device opened non-blocking): the run's writes
/// wait for a slow reader as they would on any pipe rather than fail with `EAGAIN`.
fn blocking(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this File owns and keeps open across both calls.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// This process's stdout or stderr, shared (its descriptor duplicated, so one offset), when it
/// is the regular file `meta` is: `--hgrm /dev/stdout > run.txt`, or the file named itself.
/// Such a file is written as a stream, as when stdout is a pipe: where the descriptor is, once,
/// never locked, emptied or renamed over. Claimed as a file, a `--hgrm` rewrite renamed a new
/// file over it, and all the process printed after (the report) went to the unlinked old one;
/// before that, the spectrum was written at the file's start by a second description, and the
/// report then printed over it.
fn standard_stream_of(meta: &std::fs::Metadata) -> Option<Arc<Mutex<File>>> {
    use std::os::unix::fs::MetadataExt as _;
    let same = |f: &File| f.metadata().is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == (meta.dev(), meta.ino()));
    crate::diag::standard_stream_fds()
        .into_iter()
        .filter_map(|fd| fd.ok().map(File::from))
        .find(same)
        .map(|f| Arc::new(Mutex::new(f)))
}

fn io<'a>(flag: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutFileError + 'a {
    move |source| OutFileError::Io { flag: flag.to_string(), path: path.to_path_buf(), source }
}

/// `path`, or what it names when it is a symlink (followed to the end; `path` itself when that
/// fails).
fn link_target(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

/// Claim every output of one run (`(flag, path)` pairs) or none: [`lock_all`], then empty them
/// all, so a run refused for one busy file leaves every other file as it was.
pub fn claim_all(outputs: &[(&str, &Path)]) -> Result<Vec<Claimed>, OutFileError> {
    lock_all(outputs)?.into_iter().map(Locked::empty).collect()
}

/// Open and lock every output of one run or none, emptying none: refuse two that are one file
/// ([`distinct`] by name, then by the opened files' identity, which sees a link to another
/// output, made or not), then lock them all (`lock_opened`). What each held is still there,
/// for the caller to keep ([`Locked::keep_as`]) or drop ([`Locked::empty`]).
pub fn lock_all(outputs: &[(&str, &Path)]) -> Result<Vec<Locked>, OutFileError> {
    distinct(outputs)?;
    let opened = outputs.iter().map(|&(flag, path)| Claimed::open(flag, path)).collect::<Result<Vec<_>, _>>()?;
    lock_opened(opened)
}

/// Lock the opened outputs of one run, refusing two that are one file, and a regular file the
/// path no longer names once it is locked ([`Locked::check_named`]): another run renamed a new,
/// locked file over it ([`Claimed::replace`], a rotation) between this open and this lock. Every
/// claim checks this, not only one that keeps an earlier run's content (bench's
/// `--outputs-dir` files went on to write an unlinked file).
fn lock_opened(opened: Vec<Claimed>) -> Result<Vec<Locked>, OutFileError> {
    for (i, later) in opened.iter().enumerate() {
        if let Some(first) = opened[..i].iter().find(|c| c.identity().is_some() && c.identity() == later.identity()) {
            return Err(OutFileError::Same {
                first: first.flag.clone(),
                second: later.flag.clone(),
                path: later.path.clone(),
            });
        }
    }
    for c in &opened {
        c.lock()?;
    }
    let locked: Vec<Locked> = opened.into_iter().map(Locked).collect();
    for l in locked.iter().filter(|l| l.is_regular()) {
        l.check_named()?;
    }
    // The path is this run's now: a new file a killed run left beside it is nobody's.
    for l in locked.iter().filter(|l| l.is_regular()) {
        l.0.remove_stale_next();
    }
    Ok(locked)
}

/// `.NAME.next` beside `path`.
fn next_path_of(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.next"))
}

/// Give `fresh` (a new file that replaces `old` at its path) `old`'s permission bits (`0777`:
/// not setuid, setgid or sticky, which mean nothing on an output and would only carry a mistake
/// on; docs/COMMANDS.md and `--help` say so), and its owner and group where this process may:
/// root gives any; another user keeps its own uid and gives the group when it is in it. An
/// owner or group it may not give is left as made (the run's), not an error: the file is still
/// written, and its permission bits still kept.
fn same_owner_and_mode(old: &File, fresh: &File) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let (was, is) = (old.metadata()?, fresh.metadata()?);
    if (was.uid(), was.gid()) != (is.uid(), is.gid())
        && std::os::unix::fs::fchown(fresh, Some(was.uid()), Some(was.gid())).is_err()
    {
        let _ = std::os::unix::fs::fchown(fresh, None, Some(was.gid()));
    }
    // After the owner: a chown may clear bits.
    fresh.set_permissions(std::fs::Permissions::from_mode(was.mode() & 0o777))
}

/// `fsync` the folder `path` is in, so a rename in it outlives a power loss.
fn sync_folder(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// An output opened and locked for a run ([`lock_all`]) but not emptied yet: it still holds what
/// an earlier run left in it.
#[derive(Debug)]
pub struct Locked(Claimed);

impl Locked {
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// `FLAG PATH`, as an error about the file starts.
    pub fn named(&self) -> String {
        self.0.named()
    }

    /// A regular file (one that holds an earlier run's content and can be renamed).
    pub fn is_regular(&self) -> bool {
        self.0.regular
    }

    /// The file's metadata (its length and time: what an earlier run left).
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.0.file().metadata()
    }

    /// Refuse as [`OutFileError::Busy`] when the path names another file now: another run
    /// locked this file, kept it under a closed name and put its own, locked, at the path, all
    /// between this run's open and its lock (a second engine started at once on one `--hlog`).
    pub fn check_named(&self) -> Result<(), OutFileError> {
        match self.0.still_named() {
            Ok(true) => Ok(()),
            // The file now at the path is the other run's, locked: that run is named.
            Ok(false) => Err(self.0.busy(held_at(&self.0.path))),
            Err(e) => Err(io(&self.0.flag, &self.0.path)(e)),
        }
    }

    /// A handle that reads what the file holds (opened by its path, checked to be this file).
    pub fn read(&self) -> std::io::Result<File> {
        let f = File::open(&self.0.path)?;
        if !self.0.is_this(&f.metadata()?) {
            return Err(std::io::Error::other("the file was replaced while it was being claimed"));
        }
        Ok(f)
    }

    /// Empty it (a regular file): the run's claim.
    pub fn empty(self) -> Result<Claimed, OutFileError> {
        let c = self.0;
        if c.regular {
            c.file().set_len(0).map_err(io(&c.flag, &c.path))?;
        }
        Ok(c)
    }

    /// Keep what it holds under `closed` and claim a new, empty file at its path, as
    /// [`Claimed::rotate`] does (never replacing a file at `closed`).
    pub fn keep_as(self, closed: &Path) -> Result<(Claimed, Closing), OutFileError> {
        self.0.rotate(closed)
    }
}

/// What an earlier run left in an output, as the output's own format judges it
/// ([`claim_keeping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earlier {
    /// Nothing to lose (an empty file, a header alone, blank lines): the file is started over.
    Nothing,
    /// Something to keep, with its start (wall ns) when it says one; without, the file's
    /// modification time names it.
    Keep(Option<u64>),
}

/// How much of an earlier run's file is read to judge it ([`claim_keeping`]).
pub const HEAD_BYTES: u64 = 64 * 1024;

/// Why an output could not be claimed with what an earlier run left in it ([`claim_keeping`]).
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    /// The file holds something other than this output's format: refused, left as it was.
    #[error(
        "{named}: holds {len} byte(s) that are not {what} ({why}), which this run would write over; move the \
         file away or give another path"
    )]
    NotOurs { named: String, len: u64, what: &'static str, why: String },
    /// The file could not be read.
    #[error("{named}: reading what an earlier run left in it: {source}")]
    Read { named: String, source: std::io::Error },
    /// The earlier run's file could not be kept under its closed name (that name is taken).
    #[error("{named}: keeping an earlier run's file as {}: {why}; move that file or this one away", closed.display())]
    Keep { named: String, closed: PathBuf, why: String },
    /// Emptying or claiming the file failed.
    #[error(transparent)]
    File(#[from] OutFileError),
}

/// Claim a locked output without losing what an earlier run left in it: the one way `--hlog`,
/// `--hgrm` and tap `--record` keep an earlier run's file ([`judge_earlier`], then
/// [`Judged::claim`]).
pub fn claim_keeping(
    locked: Locked,
    what: &'static str,
    judge: impl FnOnce(&[u8], bool) -> Result<Earlier, String>,
) -> Result<(Claimed, Option<String>), KeepError> {
    judge_earlier(locked, what, judge)?.claim()
}

/// Judge what an earlier run left in a locked output, changing nothing yet (so a run with two
/// outputs judges both before it keeps or empties either). `judge` reads the file's first
/// [`HEAD_BYTES`] (and whether that is all of it) as its format: [`Earlier::Keep`] is to be kept
/// by its start (the one `judge` found, else the file's modification time), [`Earlier::Nothing`]
/// emptied, and `Err(why)` refuses it ([`KeepError::NotOurs`], saying it is not `what`), left as
/// it was: it is someone else's file or a path mistyped. A device or FIFO is written as it is.
pub fn judge_earlier(
    locked: Locked,
    what: &'static str,
    judge: impl FnOnce(&[u8], bool) -> Result<Earlier, String>,
) -> Result<Judged, KeepError> {
    use std::io::Read as _;
    if !locked.is_regular() {
        return Ok(Judged { locked, keep: None });
    }
    let named = locked.named();
    let read = |source| KeepError::Read { named: named.clone(), source };
    locked.check_named()?;
    let meta = locked.metadata().map_err(read)?;
    let len = meta.len();
    if len == 0 {
        return Ok(Judged { locked, keep: None });
    }
    let mut head = Vec::new();
    locked.read().and_then(|f| f.take(HEAD_BYTES).read_to_end(&mut head)).map_err(read)?;
    let start_ns = match judge(&head, len <= HEAD_BYTES) {
        Err(why) => return Err(KeepError::NotOurs { named, len, what, why }),
        Ok(Earlier::Nothing) => return Ok(Judged { locked, keep: None }),
        Ok(Earlier::Keep(Some(ns))) => ns,
        Ok(Earlier::Keep(None)) => meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    };
    Ok(Judged { locked, keep: Some((start_ns, len)) })
}

/// A locked output whose earlier content was judged ([`judge_earlier`]): to be kept (its start
/// and length) or emptied.
#[derive(Debug)]
pub struct Judged {
    locked: Locked,
    keep: Option<(u64, u64)>,
}

impl Judged {
    /// Keep the earlier content under [`closed_name`] by its start, never over a file already
    /// there (refused, naming both, all left as it was), and claim a new, empty file at its path,
    /// said in the line returned; or, with nothing to keep, empty the file.
    pub fn claim(self) -> Result<(Claimed, Option<String>), KeepError> {
        let Some((start_ns, len)) = self.keep else { return Ok((self.locked.empty()?, None)) };
        let path = self.locked.path().to_path_buf();
        let named = self.locked.named();
        let closed = closed_name(&path, start_ns);
        let (claimed, _) = self.locked.keep_as(&closed).map_err(|e| match e {
            OutFileError::Io { source, .. } => keep_error(named, &closed, &source),
            // Said as it is: what to do is not to move a file away.
            e @ OutFileError::NextBusy { .. } => KeepError::File(e),
            e => keep_error(named, &closed, &e),
        })?;
        let said = format!(
            "kept an earlier run's {} ({len} bytes, from {}) as {}",
            path.display(),
            crate::clock::utc_iso8601(start_ns),
            closed.display()
        );
        Ok((claimed, Some(said)))
    }

    /// Refuse, as [`claim`](Self::claim) would, an earlier content whose closed name is another
    /// file's, changing nothing: a run with two outputs checks both before it keeps or empties
    /// either, so a refused run leaves every file as it was (a file made there after the check
    /// is still never replaced: [`claim`](Self::claim) refuses it then).
    pub fn check(&self) -> Result<(), KeepError> {
        let Some((start_ns, _)) = self.keep else { return Ok(()) };
        let closed = closed_name(self.locked.path(), start_ns);
        match std::fs::symlink_metadata(&closed) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // This very file, linked there by a run that ended between a keep's two steps.
            Ok(_) if self.locked.0.is_named(&closed) => Ok(()),
            // An empty file nobody holds: a placeholder a killed run left, taken
            // ([`Claimed::rotate`]).
            Ok(_) if empty_unheld(&closed).is_some() => Ok(()),
            Ok(_) => Err(keep_error(self.locked.named(), &closed, &std::io::Error::from_raw_os_error(libc::EEXIST))),
            Err(e) => Err(keep_error(self.locked.named(), &closed, &e)),
        }
    }

    pub fn path(&self) -> &Path {
        self.locked.path()
    }
}

/// [`KeepError::Keep`]: keeping `named`'s earlier content as `closed` failed with `e`.
fn keep_error(named: String, closed: &Path, e: &dyn std::fmt::Display) -> KeepError {
    KeepError::Keep { named, closed: closed.to_path_buf(), why: e.to_string() }
}

/// `NAME.STAMP.EXT` beside `path` (`NAME.STAMP` when it has no extension): STAMP is `start_ns`
/// in UTC, `20261206T170000.002Z`, so `ls` lists a file's closed ones oldest first, before it.
pub fn closed_name(path: &Path, start_ns: u64) -> PathBuf {
    let stamp: String = crate::clock::utc_iso8601(start_ns).chars().filter(|c| !matches!(c, '-' | ':')).collect();
    let (stem, ext) = split_name(path);
    path.with_file_name(match ext {
        Some(ext) => format!("{stem}.{stamp}.{ext}"),
        None => format!("{stem}.{stamp}"),
    })
}

/// A file name's stem and extension, as [`closed_name`] puts the stamp between them.
fn split_name(path: &Path) -> (String, Option<String>) {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    (stem, path.extension().map(|e| e.to_string_lossy().into_owned()))
}

/// Whether `s` is a stamp [`closed_name`] writes: `YYYYMMDDTHHMMSS.mmmZ`.
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 20 && digits(0..8) && b[8] == b'T' && digits(9..15) && b[15] == b'.' && digits(16..19) && b[19] == b'Z'
}

/// The closed files of `path` in its folder (names [`closed_name`] makes), oldest first.
pub fn closed_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (stem, ext) = split_name(path);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let rest = match &ext {
            Some(ext) => name.strip_suffix(ext.as_str()).and_then(|r| r.strip_suffix('.')),
            None => Some(name),
        };
        let stamp = rest.and_then(|r| r.strip_prefix(stem.as_str())).and_then(|r| r.strip_prefix('.'));
        if stamp.is_some_and(is_stamp) {
            found.push(path.with_file_name(name));
        }
    }
    found.sort();
    Ok(found)
}

/// Refuse two outputs of one run that name the same file: `(flag, path)` pairs, compared
/// canonicalised (a file not made yet by its folder's canonical path). Paths that are not
/// regular files (`/dev/null` for two outputs) may repeat.
pub fn distinct(outputs: &[(&str, &Path)]) -> Result<(), OutFileError> {
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    for &(flag, path) in outputs {
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        let key = canonical(path);
        if let Some((first, _)) = seen.iter().find(|(_, k)| *k == key) {
            return Err(OutFileError::Same {
                first: first.to_string(),
                second: flag.to_string(),
                path: path.to_path_buf(),
            });
        }
        seen.push((flag, key));
    }
    Ok(())
}

/// `path` canonicalised; one that does not exist yet by its parent's canonical path and its
/// name (as given when the parent is not there either: creating it will say why).
fn canonical(path: &Path) -> PathBuf {
    if let Ok(c) = path.canonicalize() {
        return c;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (parent.canonicalize(), path.file_name()) {
        (Ok(p), Some(name)) => p.join(name),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_forks::no_fork;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    fn dir(name: &str) -> PathBuf {
        crate::test_dir(&format!("outfile-{name}"))
    }

    /// On this thread, act (or stop acting) as a file system with neither hard links nor
    /// `RENAME_NOREPLACE`: a rotation by renames over placeholders.
    fn renames_only(on: bool) {
        NO_HARD_LINKS.with(|n| n.set(on));
        NO_RENAME_NOREPLACE.with(|n| n.set(on));
    }

    /// A run refused for one busy output leaves its other outputs as they were (the first was
    /// emptied before the second's lock was tried), and a link to another output is that output.
    #[test]
    fn a_run_refused_for_one_busy_file_empties_none_and_a_link_is_its_target() {
        let _no_fork = no_fork();
        let d = dir("all");
        let (hlog, hgrm) = (d.join("p.hlog"), d.join("h.hgrm"));
        std::fs::write(&hlog, b"keep").expect("write");
        let holder = Claimed::claim("--hgrm", &hgrm).expect("another run's claim");
        let e = claim_all(&[("--hlog", &hlog), ("--hgrm", &hgrm)]).expect_err("refused");
        assert!(matches!(e, OutFileError::Busy { ref flag, .. } if flag == "--hgrm"), "{e}");
        assert_eq!(std::fs::read(&hlog).expect("read"), b"keep", "the other output left as it was");
        drop(holder);
        // y.hlog -> x.hlog, x not made yet: one file, not "another process".
        let (x, y) = (d.join("x.hlog"), d.join("y.hlog"));
        std::os::unix::fs::symlink(&x, &y).expect("symlink");
        let e = claim_all(&[("--hlog", &x), ("--hgrm", &y)]).expect_err("one file");
        assert!(matches!(e, OutFileError::Same { .. }), "{e}");
        let both = claim_all(&[("--hlog", &hlog), ("--hgrm", &hgrm)]).expect("claimed");
        assert_eq!(std::fs::metadata(&hlog).expect("meta").len(), 0, "emptied once all are locked");
        drop(both);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A symlinked FILE stays a symlink: the earlier file is kept and rotated beside its target,
    /// and the link names the new file. Before, the rename put a regular file in the link's place
    /// and the "closed" file was a second link to the target.
    #[test]
    fn a_symlinked_file_is_kept_and_rotated_beside_its_target_and_stays_a_link() {
        let _no_fork = no_fork();
        let d = dir("symlink");
        let sub = d.join("data");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let (target, link) = (sub.join("t.hlog"), d.join("s.hlog"));
        std::fs::write(&target, b"the earlier run").expect("write");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let locked = lock_all(&[("--hlog", &link)]).expect("locked").remove(0);
        let target = target.canonicalize().expect("canonical");
        assert_eq!(locked.path(), target, "the claim is the target's");
        let closed = closed_name(&target, 1_000_000_000);
        let (fresh, _) = locked.keep_as(&closed).expect("kept");
        assert_eq!(std::fs::read(&closed).expect("kept beside the target"), b"the earlier run");
        assert!(!std::fs::symlink_metadata(&closed).expect("meta").file_type().is_symlink());
        assert!(std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink(), "still a link");
        fresh.rewrite().and_then(|mut f| f.write_all(b"this run")).expect("write");
        assert_eq!(std::fs::read(&link).expect("through the link"), b"this run");
        let rotated = closed_name(&target, 2_000_000_000);
        let (_next, _) = fresh.rotate(&rotated).expect("rotated");
        assert_eq!(std::fs::read(&rotated).expect("rotated beside the target"), b"this run");
        assert!(std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink(), "still a link");
        assert_eq!(std::fs::read(&link).expect("through the link"), b"", "the link names the new file");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_claim_is_refused_and_leaves_the_file_as_the_first_wrote_it() {
        let _no_fork = no_fork();
        let d = dir("busy");
        let path = d.join("x.hlog");
        let first = Claimed::claim("--hlog", &path).expect("the first claim");
        first.rewrite().and_then(|mut f| f.write_all(b"the first run's header\n")).expect("write");
        // A second open file description, as another process would have (flock locks are per
        // open file description, so this is the same test within one process).
        let second = Claimed::claim("--hlog", &path).expect_err("the second claim");
        assert!(matches!(second, OutFileError::Busy { .. }), "{second}");
        // The holder is this process (its first claim).
        let me = std::fs::read_to_string("/proc/self/comm").expect("comm");
        assert_eq!(
            second.to_string(),
            format!(
                "--hlog {}: process {} ({}) is writing this file (it holds the file's lock); give another path or \
                 let that run end",
                path.display(),
                std::process::id(),
                me.trim()
            )
        );
        assert_eq!(std::fs::read(&path).expect("read"), b"the first run's header\n", "not truncated");
        drop(first);
        let third = Claimed::claim("--hlog", &path).expect("claimed again once the first is gone");
        assert_eq!(std::fs::metadata(third.path()).expect("meta").len(), 0, "emptied by the new claim");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_fifo_nobody_reads_is_refused_at_once_and_one_with_a_reader_is_written() {
        let _no_fork = no_fork();
        let d = dir("fifo");
        let fifo = d.join("f.hlog");
        // mkfifo(3), not the mkfifo command: a fork here would hold a copy of every handle the
        // tests running beside this one have open (a lock among them) until its exec.
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: a valid NUL-terminated path; mkfifo reads it only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
        // Before: the open waited for a reader for ever.
        let e = Claimed::claim("--hlog", &fifo).expect_err("no reader");
        assert!(matches!(e, OutFileError::NoReader { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("--hlog {}: a FIFO no process is reading; start its reader first, or give a file", fifo.display())
        );
        let mut reader =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("a reader");
        let c = Claimed::claim("--hlog", &fifo).expect("a reader is there");
        c.rewrite().and_then(|mut f| f.write_all(b"line\n")).expect("write");
        drop(c);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut reader, &mut got).expect("read to the writer's end");
        assert_eq!(got, "line\n");
        assert!(Claimed::claim("--hgrm", Path::new("/dev/null")).is_ok(), "a device is written as it is");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rewrite_starts_the_file_over() {
        let _no_fork = no_fork();
        let d = dir("rewrite");
        let c = Claimed::claim("--hgrm", &d.join("x.hgrm")).expect("claim");
        c.rewrite().and_then(|mut f| f.write_all(b"a long first run\n")).expect("write");
        c.rewrite().and_then(|mut f| f.write_all(b"short\n")).expect("write");
        assert_eq!(std::fs::read(c.path()).expect("read"), b"short\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// `replace` puts a whole new file at the path and the run's lock with it: before it locked
    /// the new file, a second claim of the path after a rename was taken (the lock stayed on the
    /// old, unlinked file). Every clone holds the new file; a run that opened the old file just
    /// before the rename gets its lock once it is released, and is refused by the name check; a
    /// symlink stays a link; a device is written as it is.
    #[test]
    fn replace_writes_a_whole_new_file_that_keeps_the_lock_and_the_link() {
        let _no_fork = no_fork();
        let d = dir("replace");
        let (target, link) = (d.join("t.hgrm"), d.join("l.hgrm"));
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        std::fs::write(&target, b"").expect("make it");
        let c = Claimed::claim("--hgrm", &link).expect("claim");
        let kept = c.clone();
        let racing = Claimed::open("--hgrm", &link).expect("the old file, opened by another run");
        c.replace(|mut f| f.write_all(b"first\n")).expect("replaced");
        c.replace(|mut f| f.write_all(b"second\n")).expect("replaced again");
        assert_eq!(std::fs::read(&link).expect("through the link"), b"second\n");
        assert!(std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink(), "still a link");
        assert!(!d.join(".t.hgrm.next").exists(), "the new file was renamed");
        drop(c);
        let e = Claimed::claim("--hgrm", &link).expect_err("the clone holds the new file's lock");
        assert!(matches!(e, OutFileError::Busy { .. }), "{e}");
        racing.lock().expect("the old file's lock is free: nothing holds it any more");
        let e = Locked(racing).check_named().expect_err("the path names another file");
        assert!(matches!(e, OutFileError::Busy { .. }), "{e}");
        assert_eq!(kept.file_len().expect("len"), 7, "the clone holds the file at the path");
        // A failed write changes nothing.
        let failed = kept.replace(|_| Err(std::io::Error::other("disk full")));
        assert!(matches!(failed, Err(ReplaceError::Write(_))), "{failed:?}");
        assert_eq!(std::fs::read(&target).expect("read"), b"second\n");
        assert!(!d.join(".t.hgrm.next").exists(), "removed");
        drop(kept);
        Claimed::claim("--hgrm", &link).expect("claimed once the run is gone");
        let null = Claimed::claim("--hgrm", Path::new("/dev/null")).expect("a device");
        null.replace(|mut f| f.write_all(b"x")).expect("written as it is");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A claim that opened FILE just before another run renamed its new file over it (a
    /// `--hgrm` rewrite) and locked the old one once it was released is refused, whatever the
    /// claim is for: before, only a claim that kept an earlier run's content checked the name,
    /// so bench's `--outputs-dir` (`claim_all`) went on to write the unlinked old file.
    #[test]
    fn a_claim_of_a_file_renamed_over_between_its_open_and_its_lock_is_refused() {
        let _no_fork = no_fork();
        let d = dir("renamed-over");
        let path = d.join("bench.hgrm");
        let c = Claimed::claim("--outputs-dir", &path).expect("claim");
        let racing = Claimed::open("--outputs-dir", &path).expect("the old file, opened by another run");
        c.replace(|mut f| f.write_all(b"new\n")).expect("replaced");
        let e = lock_opened(vec![racing]).expect_err("the path names the new file, not the one locked");
        assert!(matches!(e, OutFileError::Busy { .. }), "{e}");
        // The new file's holder (this process's claim), named.
        assert!(e.to_string().contains(&format!(": process {} (", std::process::id())), "{e}");
        drop(c);
        claim_all(&[("--outputs-dir", &path)]).expect("claimed once the run is gone");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A rewrite (and a rotation's new file) keeps the mode, owner and group of the file it
    /// replaces: an operator's `chmod 604` for a dashboard user, or `chown`, survives it. Before,
    /// the new file was the run's, made under its umask (0644 here, root's).
    #[test]
    fn a_replaced_or_rotated_file_keeps_its_mode_owner_and_group() {
        let _no_fork = no_fork();
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let d = dir("mode");
        let path = d.join("m.hgrm");
        let c = Claimed::claim("--hgrm", &path).expect("claim");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).expect("chmod");
        // Root may give the file to anyone; another user keeps its own (then only the mode is
        // kept).
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&path, Some(4321), Some(8765)).expect("chown");
        }
        let owner = |p: &Path| {
            let m = std::fs::metadata(p).expect("meta");
            (m.mode() & 0o777, m.uid(), m.gid())
        };
        let before = owner(&path);
        c.replace(|mut f| f.write_all(b"spectrum\n")).expect("replaced");
        assert_eq!(owner(&path), before, "the rewritten file");
        assert_eq!(std::fs::read(&path).expect("read"), b"spectrum\n");
        let closed = closed_name(&path, 1_000_000_000);
        let (fresh, _) = c.rotate(&closed).expect("rotated");
        assert_eq!(owner(&path), before, "a rotation's new file");
        if root {
            assert_eq!((before.1, before.2), (4321, 8765));
        }
        drop(fresh);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A rotation whose `.NAME.next` is a link (another user's, in a shared folder) is refused:
    /// the link's target is left as it was. Before, the rotation claimed the target through the
    /// link: emptied it, gave it FILE's mode (and, as root, owner) and went on writing into it.
    #[test]
    fn a_rotation_never_writes_through_a_link_at_its_next_file() {
        let _no_fork = no_fork();
        use std::os::unix::fs::PermissionsExt as _;
        let d = dir("next-link");
        let (path, next, target) = (d.join("r.hlog"), d.join(".r.hlog.next"), d.join("precious"));
        std::fs::write(&target, b"precious").expect("write");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Claimed::claim("--hlog", &path).expect("claim");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::symlink(&target, &next).expect("a link where the new file goes");
        let err = c.rotate(&closed_name(&path, 1_000_000_000)).expect_err("refused");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(std::fs::read(&target).expect("read"), b"precious");
        let mode = std::fs::metadata(&target).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "its mode");
        assert!(std::fs::symlink_metadata(&path).expect("meta").is_file(), "FILE is still the run's file");
        drop(c);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// `--hlog` claimed on `r.hlog` in a new folder `name`, `this run` written in it, rotated
    /// (on this thread) by renames only ([`renames_only`]): the folder, FILE, `.r.hlog.next`
    /// and the claim.
    fn renaming_claim(name: &str) -> (PathBuf, PathBuf, PathBuf, Claimed) {
        let d = dir(name);
        let (path, next) = (d.join("r.hlog"), d.join(".r.hlog.next"));
        renames_only(true);
        let c = Claimed::claim("--hlog", &path).expect("claim");
        c.rewrite().and_then(|mut f| f.write_all(b"this run")).expect("write");
        (d, path, next, c)
    }

    /// Run `hook` as another process would act in each [`window`] of what `f` does, then clear it.
    fn in_windows<T>(hook: impl FnMut(&Path) + 'static, f: impl FnOnce() -> T) -> T {
        WINDOW.with(|w| *w.borrow_mut() = Some(Box::new(hook)));
        let r = f();
        WINDOW.with(|w| *w.borrow_mut() = None);
        r
    }

    /// A link another user makes at `.NAME.next` just before the rotation opens it is not
    /// followed: the one open refuses it (`O_NOFOLLOW`), its target keeps its content and mode,
    /// FILE stays the run's and nothing is left at the closed name. Before, the rotation looked
    /// at `.NAME.next` (nothing there), then opened it following the link made meanwhile: it
    /// emptied the target, gave it FILE's mode and wrote into it.
    #[test]
    fn a_link_made_at_the_next_file_just_before_its_open_is_not_followed() {
        let _no_fork = no_fork();
        use std::os::unix::fs::PermissionsExt as _;
        let d = dir("next-window");
        let (path, next, target) = (d.join("w.hlog"), d.join(".w.hlog.next"), d.join("precious"));
        std::fs::write(&target, b"precious").expect("write");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Claimed::claim("--hlog", &path).expect("claim");
        c.rewrite().and_then(|mut f| f.write_all(b"this run")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let closed = closed_name(&path, 1_000_000_000);
        let (n, t) = (next.clone(), target.clone());
        let link = move |p: &Path| {
            if p == n && std::fs::symlink_metadata(&n).is_err() {
                std::os::unix::fs::symlink(&t, &n).expect("a link made in the window");
            }
        };
        let err = in_windows(link, || c.rotate(&closed)).expect_err("refused");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(std::fs::read(&target).expect("read"), b"precious", "the link's target as it was");
        let mode = std::fs::metadata(&target).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "its mode");
        assert!(std::fs::symlink_metadata(&next).expect("meta").file_type().is_symlink(), "not ours: left");
        assert_eq!(std::fs::read(&path).expect("FILE"), b"this run", "FILE still the run's");
        assert!(!closed.exists(), "the closed name's link removed");
        // A rewrite (--hgrm) does the same one open.
        let err = c.replace(|mut f| f.write_all(b"spectrum")).expect_err("refused");
        assert!(matches!(err, ReplaceError::Temp { .. }) && err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(std::fs::read(&target).expect("read"), b"precious");
        drop(c);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Where the file system has neither hard links nor `RENAME_NOREPLACE`, a FILE another run
    /// makes between a rotation's two renames is kept, and so is one that takes the placeholder
    /// the second rename goes over: the rotation is refused, what this run wrote is under the
    /// closed name, said. Before, the second rename looked for FILE, then renamed over it: a FILE
    /// made between the look and the rename was replaced (lost; its run wrote an unlinked file).
    #[test]
    fn without_links_or_noreplace_a_file_made_between_a_rotations_renames_is_kept() {
        let _no_fork = no_fork();
        let (d, path, next, c) = renaming_claim("renames-window");
        // Unhindered, the placeholder way rotates.
        let first = closed_name(&path, 1_000_000_000);
        let (c, how) = c.rotate(&first).expect("rotated");
        assert_eq!((how, std::fs::read(&first).expect("closed")), (Closing::Renamed, b"this run".to_vec()));
        assert!(Claimed::claim("--hlog", &path).is_err(), "the new FILE is locked");
        c.rewrite().and_then(|mut f| f.write_all(b"this run")).expect("write");
        // Another run makes FILE while it is missing (between the two renames).
        let p = path.clone();
        let make = move |at: &Path| {
            if at == p && !p.exists() {
                std::fs::write(&p, b"another run's").expect("another run's FILE");
            }
        };
        let closed = closed_name(&path, 2_000_000_000);
        let err = in_windows(make, || c.rotate(&closed)).expect_err("refused");
        assert!(err.to_string().contains(&format!("what this run wrote is in {}", closed.display())), "{err}");
        assert_eq!(std::fs::read(&path).expect("FILE"), b"another run's", "kept, not replaced");
        assert_eq!(std::fs::read(&closed).expect("closed"), b"this run", "nothing written lost");
        assert!(!next.exists(), "nothing left half-made");
        std::fs::remove_file(&path).expect("rm");
        std::fs::rename(&closed, &path).expect("put back");
        // Another run opens the placeholder at FILE and takes its lock first: its file now.
        let (p, theirs) = (path.clone(), std::rc::Rc::new(std::cell::RefCell::new(None)));
        let held = theirs.clone();
        let take = move |at: &Path| {
            if at == p && p.exists() && held.borrow().is_none() {
                let f = File::options().write(true).open(&p).expect("open the placeholder");
                f.try_lock().expect("its lock, first");
                *held.borrow_mut() = Some(f);
            }
        };
        let closed = closed_name(&path, 3_000_000_000);
        let err = in_windows(take, || c.rotate(&closed)).expect_err("refused");
        assert!(err.to_string().contains("what this run wrote is in"), "{err}");
        let theirs = theirs.borrow_mut().take().expect("taken");
        assert!(names(&path, &theirs), "FILE is the other run's file, not replaced");
        assert_eq!(std::fs::read(&closed).expect("closed"), b"this run");
        renames_only(false);
        drop((c, theirs));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A live process holding `.NAME.next`'s lock (another run mid-rewrite or mid-rotation of
    /// FILE) makes keeping an earlier FILE refused, all left as it was, and the refusal names
    /// the process and what to do. Before, it said `--hlog .NAME.next: another process is
    /// writing this file`, wrapped in "keeping ... as CLOSED: ...; move that file or this one
    /// away", which names neither the process nor the way out.
    #[test]
    fn a_next_file_a_live_process_holds_refuses_the_keep_and_names_the_process() {
        let _no_fork = no_fork();
        let d = dir("next-busy");
        let (path, next) = (d.join("b.hlog"), d.join(".b.hlog.next"));
        std::fs::write(&path, b"an earlier run's").expect("write");
        std::fs::write(&next, b"another run's new file").expect("write");
        let live = File::options().write(true).open(&next).expect("open");
        live.try_lock().expect("the other run's lock");
        let locked = lock_all(&[("--hlog", &path)]).expect("locked").remove(0);
        let e = claim_keeping(locked, "a log", |_, _| Ok(Earlier::Keep(Some(1_000_000_000)))).expect_err("refused");
        let me = std::fs::read_to_string("/proc/self/comm").expect("comm");
        assert_eq!(
            e.to_string(),
            format!(
                "--hlog {}: process {} ({}) holds the lock of {}, the new file a rewrite or rotation of this file \
                 writes (another run is replacing this file now); let that run end (or end it), then start this one \
                 again, or give another path",
                path.display(),
                std::process::id(),
                me.trim(),
                next.display()
            )
        );
        assert_eq!(std::fs::read(&path).expect("FILE"), b"an earlier run's", "FILE as it was");
        assert_eq!(std::fs::read(&next).expect("next"), b"another run's new file", "theirs as it was");
        assert!(!closed_name(&path, 1_000_000_000).exists(), "nothing kept half-way");
        drop(live);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A rewrite's and a rotation's new file keeps FILE's permission bits (`0777`) and not its
    /// setuid, setgid or sticky bits, as docs/COMMANDS.md and `--help` say: those mean nothing
    /// on a metrics file but that an operator's mistake is carried on.
    #[test]
    fn a_new_file_keeps_the_permission_bits_and_not_setuid_setgid_or_sticky() {
        let _no_fork = no_fork();
        use std::os::unix::fs::PermissionsExt as _;
        let d = dir("mode-bits");
        let path = d.join("b.hgrm");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777;
        let c = Claimed::claim("--hgrm", &path).expect("claim");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o7640)).expect("chmod");
        assert_eq!(mode(&path), 0o7640, "set (as root, or its owner in its group)");
        c.replace(|mut f| f.write_all(b"spectrum\n")).expect("replaced");
        assert_eq!(mode(&path), 0o640, "the rewritten file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o6604)).expect("chmod");
        let (fresh, _) = c.rotate(&closed_name(&path, 1_000_000_000)).expect("rotated");
        assert_eq!(mode(&path), 0o604, "a rotation's new file");
        drop((c, fresh));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A `.NAME.next` a killed run left beside FILE (here: one whose lock nobody holds) is
    /// removed when the next run claims FILE, said; one a live writer holds locked is left as it
    /// is. Before, a stale one stayed for ever.
    #[test]
    fn a_stale_next_file_is_removed_at_the_claim_and_a_locked_one_is_not() {
        let _no_fork = no_fork();
        let d = dir("stale-next");
        let (path, next) = (d.join("s.hgrm"), d.join(".s.hgrm.next"));
        std::fs::write(&next, b"half a spectrum").expect("what a killed run left");
        let c = Claimed::claim("--hgrm", &path).expect("claim");
        assert!(!next.exists(), "removed at the claim");
        drop(c);
        std::fs::write(&next, b"a live writer's").expect("write");
        let live = File::options().write(true).open(&next).expect("open");
        live.try_lock().expect("the writer's lock");
        let c = Claimed::claim("--hgrm", &path).expect("claim");
        assert_eq!(std::fs::read(&next).expect("left"), b"a live writer's", "a locked one is left");
        drop((c, live));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The earlier FILE (`an earlier run's`) kept under `closed`, and a new, empty FILE at `path`.
    fn assert_kept_as(path: &Path, closed: &Path) {
        assert_eq!(std::fs::read(closed).expect("closed"), b"an earlier run's", "kept under its closed name");
        assert_eq!(std::fs::read(path).expect("FILE"), b"", "a new FILE");
    }

    /// The child of [`a_run_killed_with_its_placeholder_made_blocks_not_the_next_run`]: the
    /// folder it works in.
    const KILLED_CHILD: &str = "MDSUB_TEST_OUTFILE_KILLED_CHILD";

    /// A run killed (`kill -9`, a real process) just after it made the `O_EXCL` placeholder a
    /// rename without `RENAME_NOREPLACE` goes over (a file system without hard links, keeping an
    /// earlier run's FILE under its closed name) left an empty file at the closed name: the next
    /// run keeps the earlier FILE there all the same (the empty file is nobody's: it takes it as
    /// its own placeholder), nothing lost. Before, the next run and every one after was refused
    /// ("keeping ... as CLOSED: File exists; move that file or this one away").
    #[test]
    fn a_run_killed_with_its_placeholder_made_blocks_not_the_next_run() {
        let keep = |_: &[u8], _: bool| Ok(Earlier::Keep(Some(1_000_000_000)));
        if let Some(d) = std::env::var_os(KILLED_CHILD) {
            let d = PathBuf::from(d);
            let (path, closed) = (d.join("k.hlog"), closed_name(&d.join("k.hlog"), 1_000_000_000));
            renames_only(true);
            let (ready, c) = (d.join("ready"), closed.clone());
            let stop = move |at: &Path| {
                if at == c && c.exists() {
                    std::fs::write(&ready, b"").expect("say ready");
                    loop {
                        std::thread::park(); // killed here
                    }
                }
            };
            let locked = lock_all(&[("--hlog", &path)]).expect("locked").remove(0);
            let _ = in_windows(stop, || claim_keeping(locked, "a log", keep));
            panic!("the window was not reached");
        }
        let d = dir("killed-placeholder");
        let (path, closed) = (d.join("k.hlog"), closed_name(&d.join("k.hlog"), 1_000_000_000));
        std::fs::write(&path, b"an earlier run's").expect("write");
        let name = "outfile::tests::a_run_killed_with_its_placeholder_made_blocks_not_the_next_run";
        let mut child = child_ready(name, KILLED_CHILD, &d);
        child.kill().expect("kill -9"); // SIGKILL, by its pid
        let _ = child.wait();
        assert_eq!(std::fs::read(&closed).expect("the placeholder"), b"", "the killed run's placeholder");
        assert_eq!(std::fs::read(&path).expect("FILE"), b"an earlier run's");
        let locked = lock_all(&[("--hlog", &path)]).expect("locked").remove(0);
        let (c, said) = claim_keeping(locked, "a log", keep).expect("kept, not refused");
        assert!(said.is_some_and(|s| s.contains(&closed.display().to_string())));
        assert_kept_as(&path, &closed);
        drop(c);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Run the lib test `name` again in a child process, with `env` set to `d` (the test's child
    /// part), and wait until the child made `d/ready` (30 s at most, else killed and its stderr
    /// said): it is then where the test wants it, to be ended by its pid.
    fn child_ready(name: &str, env: &str, d: &Path) -> std::process::Child {
        use std::io::Read as _;
        let mut child = crate::test_forks::spawn(
            std::process::Command::new(std::env::current_exe().expect("the test binary"))
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env(env, d)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped()),
        )
        .expect("the child");
        let t0 = std::time::Instant::now();
        while !d.join("ready").exists() {
            if t0.elapsed() > std::time::Duration::from_secs(30) || child.try_wait().expect("wait").is_some() {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
                panic!("the child did not say ready in 30 s:\n{err}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10)); // polling for the child's file, bounded above
        }
        child
    }

    /// The child of [`a_file_another_process_holds_is_refused_naming_that_process`]: the folder
    /// it works in.
    const HOLDER_CHILD: &str = "MDSUB_TEST_OUTFILE_HOLDER_CHILD";

    /// A FILE another live run holds (a real process: its claim's lock) is refused naming that
    /// process, its pid and command from `/proc/locks`, as a busy `.NAME.next` is. Before, it
    /// said `another process is writing this file`, whichever process it was.
    #[test]
    fn a_file_another_process_holds_is_refused_naming_that_process() {
        if let Some(d) = std::env::var_os(HOLDER_CHILD) {
            let d = PathBuf::from(d);
            let _held = Claimed::claim("--hlog", &d.join("h.hlog")).expect("the child's claim");
            std::fs::write(d.join("ready"), b"").expect("say ready");
            loop {
                std::thread::park(); // ended by its pid
            }
        }
        let d = dir("busy-named");
        let path = d.join("h.hlog");
        let name = "outfile::tests::a_file_another_process_holds_is_refused_naming_that_process";
        let mut child = child_ready(name, HOLDER_CHILD, &d);
        let pid = child.id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("its comm");
        let refused = Claimed::claim("--hlog", &path);
        child.kill().expect("kill"); // by its pid
        let _ = child.wait();
        let e = refused.expect_err("the child holds it");
        assert_eq!(
            e.to_string(),
            format!(
                "--hlog {}: process {pid} ({}) is writing this file (it holds the file's lock); give another path \
                 or let that run end",
                path.display(),
                comm.trim()
            )
        );
        Claimed::claim("--hlog", &path).expect("claimed once the holder is gone");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Where a rotation renames without hard links or `RENAME_NOREPLACE`, the empty placeholder
    /// each rename goes over has FILE's permission bits (not setuid, setgid, sticky) and owner
    /// and group: a kill in the second rename's window leaves that placeholder as FILE, and FILE
    /// keeps its mode. Before, it was made `0600` (and the run's): a killed run left FILE
    /// closed to a dashboard's user.
    #[test]
    fn a_rotations_placeholder_has_files_mode_and_owner() {
        let _no_fork = no_fork();
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let d = dir("placeholder-mode");
        let path = d.join("m.hlog");
        renames_only(true);
        let c = Claimed::claim("--hlog", &path).expect("claim");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o2644)).expect("chmod");
        // Root may give the file to anyone; another user keeps its own.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(4321), Some(8765)).expect("chown");
        }
        let owner = |m: std::fs::Metadata| (m.mode() & 0o7777, m.uid(), m.gid());
        let file = std::fs::metadata(&path).map(owner).expect("meta");
        // What a kill would leave at each placeholder: looked at in the window before its lock.
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let saw = seen.clone();
        let look = move |at: &Path| {
            if let Some(m) = std::fs::symlink_metadata(at).ok().filter(|m| m.len() == 0) {
                saw.borrow_mut().push((at.to_path_buf(), owner(m)));
            }
        };
        let closed = closed_name(&path, 1_000_000_000);
        let (fresh, how) = in_windows(look, || c.rotate(&closed)).expect("rotated");
        renames_only(false);
        assert_eq!(how, Closing::Renamed);
        let want = (file.0 & 0o777, file.1, file.2);
        assert_eq!(*seen.borrow(), [(closed.clone(), want), (path.clone(), want)], "each placeholder");
        drop((c, fresh));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An empty placeholder a killed run left at the closed name, another user's (`0600`, and as
    /// root another owner), is replaced by one with FILE's mode, owner and group, as a placeholder
    /// made fresh has: what a kill before the rename would leave. Before, it was taken as it was.
    #[test]
    fn a_placeholder_another_run_left_is_made_anew_with_files_mode_and_owner() {
        let _no_fork = no_fork();
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let (d, path, _next, c) = renaming_claim("placeholder-left");
        let closed = closed_name(&path, 1_000_000_000);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::fs::write(&closed, b"").expect("the placeholder a killed run left");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // Root may give the files to anyone: FILE one owner, the placeholder left another's.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(4321), Some(8765)).expect("chown");
            std::os::unix::fs::chown(&closed, Some(1234), Some(5678)).expect("chown");
        }
        let owner = |m: std::fs::Metadata| (m.mode() & 0o7777, m.uid(), m.gid());
        let file = std::fs::metadata(&path).map(owner).expect("meta");
        // The placeholder at the closed name as a kill just before its rename would leave it:
        // looked at in the window before its lock, the last one there.
        let last = std::rc::Rc::new(std::cell::RefCell::new(None));
        let (saw, at_closed) = (last.clone(), closed.clone());
        let look = move |at: &Path| {
            if at == at_closed {
                *saw.borrow_mut() = std::fs::symlink_metadata(at).ok().map(owner);
            }
        };
        let (fresh, how) = in_windows(look, || c.rotate(&closed)).expect("rotated");
        renames_only(false);
        assert_eq!(how, Closing::Renamed);
        assert_eq!(*last.borrow(), Some(file), "FILE's mode, owner and group");
        assert_eq!(std::fs::read(&closed).expect("closed"), b"this run", "nothing written lost");
        drop((c, fresh));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Locking a placeholder this run made failing with an error (`ENOLCK`: a mount without
    /// locks), not another's lock, is said as that error and the placeholder removed, at the
    /// closed name (the first rename) and at FILE (the second: the first undone, FILE the run's
    /// as it was). Before, it said `File exists` and left the placeholder: at FILE, an empty
    /// file, and the run's file under the closed name.
    #[test]
    fn a_placeholder_lock_error_is_said_and_the_placeholder_removed() {
        let _no_fork = no_fork();
        let (d, path, next, c) = renaming_claim("placeholder-lock");
        let closed = closed_name(&path, 1_000_000_000);
        for at in [&closed, &path] {
            PLACEHOLDER_LOCK_FAILS.with(|p| *p.borrow_mut() = Some(at.clone()));
            let e = c.rotate(&closed).expect_err("refused");
            assert_eq!(
                e.to_string(),
                format!(
                    "--hlog {}: locking the empty file made there first, for a rename that never replaces: No locks \
                     available (os error 37)",
                    at.display()
                )
            );
            assert!(!closed.exists() && !next.exists(), "no placeholder left, nor a new file ({at:?})");
            assert_eq!(std::fs::read(&path).expect("FILE"), b"this run", "FILE the run's, as it was");
            assert!(c.still_named().expect("named"), "the claim holds FILE");
        }
        renames_only(false);
        drop(c);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Where a rotation by renames cannot put FILE back after its second rename failed, the error
    /// says why: `another process made this file` only when the name was taken (`EEXIST`), and
    /// any other cause (here `ENOLCK` at both the second rename and its undo) as it is, once.
    /// Before, every cause was said as another process's file.
    #[test]
    fn a_rotation_not_undone_says_why_and_blames_another_process_only_for_a_taken_name() {
        let _no_fork = no_fork();
        let (d, path, next, c) = renaming_claim("undo-fails");
        let closed = closed_name(&path, 1_000_000_000);
        // Every placeholder at FILE fails its lock: the second rename's, then the undo's.
        let p = path.clone();
        let no_locks = move |at: &Path| {
            if at == p {
                PLACEHOLDER_LOCK_FAILS.with(|f| *f.borrow_mut() = Some(p.clone()));
            }
        };
        let e = in_windows(no_locks, || c.rotate(&closed)).expect_err("refused");
        PLACEHOLDER_LOCK_FAILS.with(|f| *f.borrow_mut() = None);
        assert_eq!(
            e.to_string(),
            format!(
                "--hlog {}: locking the empty file made there first, for a rename that never replaces: No locks \
                 available (os error 37); renaming it back failed the same way; what this run wrote is in {}",
                path.display(),
                closed.display()
            )
        );
        assert_eq!(std::fs::read(&closed).expect("closed"), b"this run", "nothing written lost");
        assert!(!path.exists() && !next.exists(), "no placeholder left, nor a new file");
        // The second rename's lock fails, then another run makes FILE before the undo: its name
        // taken, said as another process's file.
        std::fs::rename(&closed, &path).expect("put back");
        PLACEHOLDER_LOCK_FAILS.with(|f| *f.borrow_mut() = Some(path.clone()));
        let p = path.clone();
        let make = move |at: &Path| {
            let failed = PLACEHOLDER_LOCK_FAILS.with(|f| f.borrow().is_none());
            if at == p && failed && !p.exists() {
                std::fs::write(&p, b"another run's").expect("another run's FILE");
            }
        };
        let e = in_windows(make, || c.rotate(&closed)).expect_err("refused");
        assert_eq!(
            e.to_string(),
            format!(
                "--hlog {}: locking the empty file made there first, for a rename that never replaces: No locks \
                 available (os error 37): another process made this file between the two renames of a rotation \
                 without hard links; what this run wrote is in {}",
                path.display(),
                closed.display()
            )
        );
        assert_eq!(std::fs::read(&path).expect("FILE"), b"another run's", "kept, not replaced");
        // The same errno is the same failure however each was worded; errors without an errno
        // (before: compared by their text) are each said.
        let lock = |os: std::io::Error| {
            let doing = "locking the empty file made there first, for a rename that never replaces";
            std::io::Error::new(os.kind(), Doing { doing, os })
        };
        let enolck = || std::io::Error::from_raw_os_error(libc::ENOLCK);
        assert!(same_os_error(&lock(enolck()), &enolck()));
        assert!(same_os_error(&lock(enolck()), &lock(enolck())));
        assert!(!same_os_error(&lock(enolck()), &lock(std::io::Error::from_raw_os_error(libc::EIO))));
        let text = || std::io::Error::other("a step failed");
        let e = not_undone(text(), &text(), &closed);
        let want = format!(
            "a step failed; renaming it back failed: a step failed; what this run wrote is in {}",
            closed.display()
        );
        assert_eq!(e.to_string(), want);
        // An undo that failed another way than the second rename: both causes said.
        let undo = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = not_undone(std::io::Error::from_raw_os_error(libc::EIO), &undo, &closed);
        assert_eq!(
            e.to_string(),
            format!(
                "Input/output error (os error 5); renaming it back failed: No space left on device (os error 28); \
                 what this run wrote is in {}",
                closed.display()
            )
        );
        renames_only(false);
        drop(c);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An empty file nobody holds at the closed name (what a run killed with its placeholder made
    /// leaves) is taken where hard links keep the earlier FILE too; one a process holds locked,
    /// or one with something in it, is refused and left as it was.
    #[test]
    fn an_empty_unheld_file_at_the_closed_name_is_taken_and_a_held_or_full_one_is_not() {
        let _no_fork = no_fork();
        let d = dir("closed-empty");
        let path = d.join("e.hlog");
        let closed = closed_name(&path, 1_000_000_000);
        let keep = |_: &[u8], _: bool| Ok(Earlier::Keep(Some(1_000_000_000)));
        let run = || claim_keeping(lock_all(&[("--hlog", &path)]).expect("locked").remove(0), "a log", keep);
        std::fs::write(&path, b"an earlier run's").expect("write");
        std::fs::write(&closed, b"").expect("write");
        let held = File::open(&closed).expect("open");
        held.try_lock().expect("a live process's lock");
        let e = run().expect_err("held: refused");
        assert!(e.to_string().contains("File exists"), "{e}");
        drop(held);
        std::fs::write(&closed, b"x").expect("write");
        let e = run().expect_err("not empty: refused");
        assert!(e.to_string().contains("File exists"), "{e}");
        assert_eq!(std::fs::read(&closed).expect("closed"), b"x", "left as it was");
        assert_eq!(std::fs::read(&path).expect("FILE"), b"an earlier run's", "left as it was");
        std::fs::write(&closed, b"").expect("write");
        let (c, _) = run().expect("an empty one nobody holds: taken");
        assert_kept_as(&path, &closed);
        drop(c);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn one_file_named_twice_is_refused_however_it_is_spelled() {
        let _no_fork = no_fork();
        let d = dir("same");
        let a = d.join("x.out");
        let b = d.join(".").join("x.out");
        let e = distinct(&[("--hlog", &a), ("--hgrm", &b)]).expect_err("the same file");
        assert_eq!(e.to_string(), format!("--hlog and --hgrm both name {}: give each its own file", b.display()));
        std::fs::write(&a, b"").expect("make it");
        assert!(distinct(&[("--hlog", &a), ("--hgrm", &b)]).is_err(), "once it exists too");
        assert!(distinct(&[("--hlog", &a), ("--hgrm", &d.join("y.out"))]).is_ok());
        let null = Path::new("/dev/null");
        assert!(distinct(&[("--hlog", null), ("--hgrm", null)]).is_ok(), "not a regular file");
        let _ = std::fs::remove_dir_all(&d);
    }
}
