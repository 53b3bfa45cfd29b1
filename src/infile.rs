//! Input files a command reads (a `--profile`, a key or token file, `replay`/`bench --from`
//! captures and DBN files): regular files only, refused otherwise before anything is read.
//!
//! Opening a FIFO for reading waits until a writer opens it, so `--profile FIFO` or `replay
//! --from FIFO` blocked start-up past `--max-duration` and the first Ctrl-C; `/dev/zero` as a key
//! was read until memory ran out. The one rule for every input: the file is opened non-blocking
//! (a FIFO's open returns at once), then anything but a regular file is refused with what it is.
//! `O_NONBLOCK` is left on the handle: on a regular file it changes nothing.
//! (Outputs have their own rule: [`crate::outfile`].)

use std::fs::File;
use std::path::Path;

/// Open `path` for reading: a regular file, else an [`std::io::ErrorKind::InvalidInput`] error
/// saying what it is, followed by `expected` (`a profile is a TOML file`).
pub fn open(path: &Path, expected: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("it is {what}; {expected}")));
    }
    Ok(file)
}

/// Read into `buf` until it is full or `r` ends (a short read is no error): how many bytes were
/// read, fewer than `buf.len()` only at the end of the input.
pub fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn only_regular_files_are_opened_and_a_fifo_is_refused_at_once() {
        let d = crate::test_dir("infile");
        let fifo = d.join("f.toml");
        // mkfifo(3), not the command: a fork holds a copy of the handles (and locks) of the
        // tests beside this one until its exec (outfile's tests saw their locks held).
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: a valid NUL-terminated path; mkfifo reads it only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
        // No writer: a blocking open would wait here for ever.
        let e = open(&fifo, "a profile is a TOML file").expect_err("a FIFO");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "it is not a regular file (a FIFO, socket or device); a profile is a TOML file");
        let e = open(Path::new("/dev/zero"), "x").expect_err("a device");
        assert!(e.to_string().starts_with("it is not a regular file"), "{e}");
        assert_eq!(open(&d, "x").expect_err("a directory").to_string(), "it is a directory; x");
        let file = d.join("p.toml");
        std::fs::write(&file, b"name = \"p\"\n").expect("write");
        let mut text = String::new();
        open(&file, "x").expect("a regular file").read_to_string(&mut text).expect("read");
        assert_eq!(text, "name = \"p\"\n");
        let _ = std::fs::remove_dir_all(&d);
    }
}
