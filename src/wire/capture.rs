//! The capture file: an append-only log of received frames with their receive
//! time, written by `mdsub tap --record` and read by `mdsub replay --from`.
//!
//! Layout (little-endian, see `docs/WIRE.md`): a 24-byte file header
//! (`MDSUBCAP`, version, flags, reserved, created time) then records of
//! `len u32 · flags u8 · 3 reserved · recv_ns u64 · crc32 u32 · frame bytes`.
//! Flag bit 0 (`MORE`) says the next record is the next frame of the same
//! multipart message. Version 2 adds two records that hold no frame: a hole mark
//! (bit 1, `HOLE`: this many messages passed the tap here and are not in the file)
//! and the end record (bit 2, `END`: the tap closed the file, with the marks' total),
//! so a capture says how much it misses and where, and one whose tap was killed
//! does not read as whole. A reader yields every intact frame record (taking the
//! marks in) and then reports the first damage (truncation, bad length, bad
//! checksum) with its byte offset.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// File magic.
pub const MAGIC: &[u8; 8] = b"MDSUBCAP";
/// Capture format version this build writes (it reads this one and version 1). Version 2 added
/// the hole marks and the end record ([`RECORD_HOLE`], [`RECORD_END`]); a version 1 reader
/// refuses a version 2 file by its version, with a clear error, rather than misreading a mark.
pub const CAPTURE_VERSION: u16 = 2;
/// The oldest capture format version this build reads (no marks, no end record).
pub const OLDEST_READ_VERSION: u16 = 1;
/// File header length.
pub const FILE_HEADER_LEN: usize = 24;
/// Record header length.
pub const RECORD_HEADER_LEN: usize = 20;
/// Largest frame a record may hold; a larger length means a corrupt file.
pub const MAX_RECORD_LEN: u32 = 64 << 20;
/// Record flag: another frame of the same message follows.
pub const RECORD_MORE: u8 = 1;
/// Record flag (version 2): a hole mark, not a frame. Its 8-byte body is a count (u64): the
/// messages that passed the tap at this point and are not in the file (the recorder fell
/// behind and the tap dropped their copies, or a frame was too large to record).
pub const RECORD_HOLE: u8 = 2;
/// Record flag (version 2): the end record, the last of a capture its tap closed. Its 32-byte
/// body is the hole marks' total (u64), the frame records before it (u64), its own byte offset
/// in the file (u64), and the file's id from its header (u32, then 4 zero bytes). A version 2
/// file without one was not closed (its tap was killed, or its writing failed): messages
/// after its last record may be missing too. The offset and the id make the end record one no
/// publisher can forge: a frame's payload that ends a killed tap's file with the bytes of an end
/// record (checksum and all) does not know the file's id, which is not on the wire.
pub const RECORD_END: u8 = 4;
/// A hole mark's body: the count.
pub const HOLE_BODY_LEN: usize = 8;
/// The end record's body: the marks' total, the frame records, its offset, the file's id.
pub const END_BODY_LEN: usize = 32;
/// The end record, header and body: the last bytes of a closed capture.
pub const END_RECORD_LEN: usize = RECORD_HEADER_LEN + END_BODY_LEN;
/// File header flag: recorded through a filter (`mdsub tap --record --filter`), so the
/// messages it left out are missing from the file: an mdsub publisher's stream sequences skip
/// them, which a subscriber taking every topic would count as gaps. Readers that do not know it
/// read the file as before (the header's flags were always written 0 and never checked).
pub const HEADER_FILTERED: u16 = 1;

/// What went wrong reading or writing a capture file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("i/o error while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("not a capture file: bad magic at offset 0")]
    BadMagic,
    #[error(
        "capture format version {0} is not supported (this build reads versions {OLDEST_READ_VERSION} to \
         {CAPTURE_VERSION}; a newer mdsub wrote it)"
    )]
    UnsupportedVersion(u16),
    #[error("truncated at byte offset {offset}: {what}")]
    Truncated { offset: u64, what: &'static str },
    #[error("damaged record at byte offset {offset}: length {len} exceeds {MAX_RECORD_LEN}")]
    TooLarge { offset: u64, len: u32 },
    #[error("damaged record at byte offset {offset}: its checksum does not match")]
    Checksum { offset: u64 },
    #[error("damaged record at byte offset {offset}: unknown flags {flags:#x}")]
    BadFlags { offset: u64, flags: u8 },
    /// A hole mark or end record that is not one (wrong length, flags together, a record after
    /// the end, an end whose total is not its marks').
    #[error("damaged record at byte offset {offset}: {what}")]
    BadMark { offset: u64, what: &'static str },
}

impl CaptureError {
    /// The refusal reason a reader's damage is counted under: `truncated_tail` (the file ends
    /// inside a record) or `bad_record` (a record whose length, flags or checksum are wrong);
    /// `None` for errors that are not damage after the header (I/O, the file header).
    pub fn damage_reason(&self) -> Option<&'static str> {
        match self {
            CaptureError::Truncated { what, .. } if *what != "file header" => Some("truncated_tail"),
            CaptureError::TooLarge { .. }
            | CaptureError::Checksum { .. }
            | CaptureError::BadFlags { .. }
            | CaptureError::BadMark { .. } => Some("bad_record"),
            _ => None,
        }
    }

    fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> CaptureError {
        move |source| CaptureError::Io { context, source }
    }
}

fn checksum(flags: u8, recv_ns: u64, frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[flags]);
    h.update(&recv_ns.to_le_bytes());
    h.update(frame);
    h.finalize()
}

/// A record's header: the body's length, the flags (three zero bytes after them), the receive
/// time and the checksum of flags, time and body.
fn record_header(len: u32, flags: u8, recv_ns: u64, body: &[u8]) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = flags;
    h[8..16].copy_from_slice(&recv_ns.to_le_bytes());
    h[16..20].copy_from_slice(&checksum(flags, recv_ns, body).to_le_bytes());
    h
}

/// The little-endian u64 at `at` in `b`, if `b` holds it.
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).and_then(|x| x.try_into().ok()).map(u64::from_le_bytes)
}

/// A new file's id (version 2 header bytes 12..16): random, from the OS's keys for hashing,
/// mixed with the file's creation time; never 0, which marks a file of the earlier version 2
/// layout ([`LEGACY_END_BODY_LEN`]). Its end record repeats it.
fn new_file_id(created_ns: u64) -> u32 {
    use std::hash::BuildHasher as _;
    let h = std::collections::hash_map::RandomState::new().hash_one(created_ns);
    ((h ^ (h >> 32)) as u32).max(1)
}

/// The end record's body in the version 2 layout of builds before this one's release: the marks'
/// total and the frame records (16 bytes), in a file whose header bytes 12..16 are 0 (no id).
/// Such a file's end is read, and its totals checked, only when the file is read through: its
/// last bytes alone could be a frame's payload.
pub const LEGACY_END_BODY_LEN: usize = 16;

/// The end record's body: the marks' total, the frame records, its own offset, the file's id.
fn end_body(missing: u64, records: u64, offset: u64, file_id: u32) -> [u8; END_BODY_LEN] {
    let mut body = [0u8; END_BODY_LEN];
    body[..8].copy_from_slice(&missing.to_le_bytes());
    body[8..16].copy_from_slice(&records.to_le_bytes());
    body[16..24].copy_from_slice(&offset.to_le_bytes());
    body[24..28].copy_from_slice(&file_id.to_le_bytes());
    body
}

/// Appends records to a capture file.
pub struct CaptureWriter<W: Write> {
    out: W,
    records: u64,
    /// The hole marks' total so far.
    missing: u64,
    /// Bytes written so far: the next record's offset.
    offset: u64,
    /// The file's id, from its header.
    file_id: u32,
}

impl CaptureWriter<BufWriter<File>> {
    /// Create (or truncate) `path` and write the file header.
    pub fn create(path: &Path) -> Result<Self, CaptureError> {
        let f = File::create(path).map_err(CaptureError::io("creating the capture file"))?;
        CaptureWriter::new(BufWriter::with_capacity(1 << 20, f))
    }
}

impl<W: Write> CaptureWriter<W> {
    /// Write the file header to `out` (no header flags).
    pub fn new(out: W) -> Result<Self, CaptureError> {
        CaptureWriter::with_flags(out, 0)
    }

    /// Write the file header to `out` with these header flags ([`HEADER_FILTERED`]).
    pub fn with_flags(mut out: W, flags: u16) -> Result<Self, CaptureError> {
        let mut h = [0u8; FILE_HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&CAPTURE_VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&flags.to_le_bytes());
        let created_ns = crate::clock::realtime_ns();
        let file_id = new_file_id(created_ns);
        h[12..16].copy_from_slice(&file_id.to_le_bytes());
        h[16..24].copy_from_slice(&created_ns.to_le_bytes());
        out.write_all(&h).map_err(CaptureError::io("writing the file header"))?;
        Ok(CaptureWriter { out, records: 0, missing: 0, offset: FILE_HEADER_LEN as u64, file_id })
    }

    /// Append one frame. `more` marks that the next frame belongs to the same message.
    pub fn write_frame(&mut self, frame: &[u8], more: bool, recv_ns: u64) -> Result<(), CaptureError> {
        self.write_record(frame, if more { RECORD_MORE } else { 0 }, recv_ns)?;
        self.records += 1;
        Ok(())
    }

    /// Mark a hole here: `count` messages passed the tap between the message before and the next
    /// and are not in the file. Written between messages, never inside one; a count of 0 writes
    /// nothing. Returns the bytes written ([`RECORD_HEADER_LEN`] + [`HOLE_BODY_LEN`], or 0).
    pub fn write_hole(&mut self, count: u64, recv_ns: u64) -> Result<u64, CaptureError> {
        if count == 0 {
            return Ok(0);
        }
        self.write_record(&count.to_le_bytes(), RECORD_HOLE, recv_ns)?;
        self.missing = self.missing.saturating_add(count);
        Ok((RECORD_HEADER_LEN + HOLE_BODY_LEN) as u64)
    }

    /// Close the capture: write its end record (the hole marks' total, the frame records, its
    /// own offset and the file's id) and flush. Nothing may be written after it; a capture
    /// without one reads as not closed.
    pub fn write_end(&mut self, recv_ns: u64) -> Result<(), CaptureError> {
        let body = end_body(self.missing, self.records, self.offset, self.file_id);
        self.write_record(&body, RECORD_END, recv_ns)?;
        self.flush()
    }

    /// The hole marks' total written so far.
    pub fn missing(&self) -> u64 {
        self.missing
    }

    fn write_record(&mut self, frame: &[u8], flags: u8, recv_ns: u64) -> Result<(), CaptureError> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l <= MAX_RECORD_LEN)
            .ok_or(CaptureError::TooLarge { offset: 0, len: u32::MAX })?;
        let h = record_header(len, flags, recv_ns, frame);
        self.out.write_all(&h).map_err(CaptureError::io("writing a record"))?;
        self.out.write_all(frame).map_err(CaptureError::io("writing a record"))?;
        self.offset += (RECORD_HEADER_LEN + frame.len()) as u64;
        Ok(())
    }

    /// Frame records written so far (hole marks not counted).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flush buffered records to the OS.
    pub fn flush(&mut self) -> Result<(), CaptureError> {
        self.out.flush().map_err(CaptureError::io("flushing the capture file"))
    }

    /// Flush and return the inner writer (no end record: [`Self::finish`] closes the capture).
    pub fn into_inner(mut self) -> Result<W, CaptureError> {
        self.flush()?;
        Ok(self.out)
    }

    /// Close the capture ([`Self::write_end`]) and return the inner writer.
    pub fn finish(mut self, recv_ns: u64) -> Result<W, CaptureError> {
        self.write_end(recv_ns)?;
        Ok(self.out)
    }
}

/// One record as read back; `frame` borrows the reader's buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub frame: &'a [u8],
    pub more: bool,
    pub recv_ns: u64,
    /// Byte offset of this record's header in the file.
    pub offset: u64,
}

/// Reads records back; stops at the first damage and reports it.
pub struct CaptureReader<R: Read> {
    input: R,
    offset: u64,
    buf: Vec<u8>,
    failed: bool,
    /// Intact records read so far.
    records: u64,
    /// The file's size in bytes, when read from a file ([`CaptureReader::open`]).
    len: Option<u64>,
    /// File creation time from the header.
    pub created_ns: u64,
    /// The header's flags ([`HEADER_FILTERED`]); unknown bits are kept, not refused.
    pub header_flags: u16,
    /// The file's format version (1 or [`CAPTURE_VERSION`]).
    pub version: u16,
    /// The file's id (version 2 header bytes 12..16; 0 in version 1), which its end record repeats.
    file_id: u32,
    /// The hole marks read so far: how many, and the messages they say are missing.
    marks: u64,
    missing: u64,
    /// The end record, once read: the file was closed by its tap.
    ended: bool,
}

impl CaptureReader<BufReader<File>> {
    /// Open `path` and check its header.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let f = crate::infile::open(path, "a capture is a file `mdsub tap --record` wrote")
            .map_err(CaptureError::io("opening the capture file"))?;
        let len = f.metadata().map_err(CaptureError::io("reading the capture file's size"))?.len();
        let mut reader = CaptureReader::new(BufReader::with_capacity(1 << 20, f))?;
        reader.len = Some(len);
        Ok(reader)
    }
}

impl<R: Read> CaptureReader<R> {
    /// Check the file header of `input`.
    pub fn new(mut input: R) -> Result<Self, CaptureError> {
        let mut h = [0u8; FILE_HEADER_LEN];
        let got = crate::infile::read_full(&mut input, &mut h).map_err(CaptureError::io("reading the file header"))?;
        if got >= 8 && &h[..8] != MAGIC {
            return Err(CaptureError::BadMagic);
        }
        if got < FILE_HEADER_LEN {
            return Err(CaptureError::Truncated { offset: got as u64, what: "file header" });
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if !(OLDEST_READ_VERSION..=CAPTURE_VERSION).contains(&version) {
            return Err(CaptureError::UnsupportedVersion(version));
        }
        let mut created = [0u8; 8];
        created.copy_from_slice(&h[16..24]);
        Ok(CaptureReader {
            header_flags: u16::from_le_bytes([h[10], h[11]]),
            input,
            offset: FILE_HEADER_LEN as u64,
            buf: Vec::with_capacity(4096),
            failed: false,
            records: 0,
            len: None,
            created_ns: u64::from_le_bytes(created),
            file_id: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
            version,
            marks: 0,
            missing: 0,
            ended: false,
        })
    }

    /// Byte offset of the next record: the bytes read so far (the file header and the records
    /// yielded), the reader's position of [`Self::file_len`]. A field: no system call.
    #[inline]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file's size in bytes as opened ([`CaptureReader::open`]; None for another reader):
    /// [`Self::offset`] reaches it at a clean end of the file.
    pub fn file_len(&self) -> Option<u64> {
        self.len
    }

    /// Recorded through a filter ([`HEADER_FILTERED`]): the messages it left out are missing,
    /// and a publisher's stream sequences skip them.
    pub fn filtered(&self) -> bool {
        self.header_flags & HEADER_FILTERED != 0
    }

    /// Intact frame records read so far (the damaged one, if any, is record `records() + 1`;
    /// hole marks and the end record are not counted).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Messages the hole marks read so far say are missing ([`RECORD_HOLE`]).
    pub fn missing(&self) -> u64 {
        self.missing
    }

    /// Hole marks read so far.
    pub fn marks(&self) -> u64 {
        self.marks
    }

    /// Whether the end record was read: the tap closed the file ([`RECORD_END`]).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next record, `Ok(None)` at a clean end of file, or the damage that
    /// stops reading (after which it keeps returning `Ok(None)`).
    /// Hole marks are taken in on the way ([`Self::missing`]); the end record ends the file.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, CaptureError> {
        loop {
            match self.next_any()? {
                None => return Ok(None),
                Some((flags, recv_ns, at)) if flags & (RECORD_HOLE | RECORD_END) == 0 => {
                    let more = flags & RECORD_MORE != 0;
                    return Ok(Some(Record { frame: &self.buf, more, recv_ns, offset: at }));
                }
                Some(_) => {}
            }
        }
    }

    /// The next record of any kind: its flags, receive time and offset (the frame in `buf`);
    /// a hole mark or end record taken in and checked.
    fn next_any(&mut self) -> Result<Option<(u8, u64, u64)>, CaptureError> {
        if self.failed {
            return Ok(None);
        }
        let at = self.offset;
        let mut h = [0u8; RECORD_HEADER_LEN];
        let got =
            crate::infile::read_full(&mut self.input, &mut h).map_err(CaptureError::io("reading a record header"))?;
        if got == 0 {
            return Ok(None);
        }
        let fail = |s: &mut Self, e: CaptureError| {
            s.failed = true;
            Err(e)
        };
        if self.ended {
            return fail(self, CaptureError::BadMark { offset: at, what: "a record after the end record" });
        }
        if got < RECORD_HEADER_LEN {
            return fail(self, CaptureError::Truncated { offset: at, what: "record header" });
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let flags = h[4];
        if len > MAX_RECORD_LEN {
            return fail(self, CaptureError::TooLarge { offset: at, len });
        }
        let known = if self.version >= 2 { RECORD_MORE | RECORD_HOLE | RECORD_END } else { RECORD_MORE };
        if flags & !known != 0 || h[5..8] != [0, 0, 0] {
            return fail(self, CaptureError::BadFlags { offset: at, flags });
        }
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&h[8..16]);
        let recv_ns = u64::from_le_bytes(ns);
        let crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
        self.buf.resize(len as usize, 0);
        let got =
            crate::infile::read_full(&mut self.input, &mut self.buf).map_err(CaptureError::io("reading a record"))?;
        if got < len as usize {
            return fail(self, CaptureError::Truncated { offset: at, what: "record body" });
        }
        if checksum(flags, recv_ns, &self.buf) != crc {
            return fail(self, CaptureError::Checksum { offset: at });
        }
        match flags {
            RECORD_HOLE if len as usize == HOLE_BODY_LEN => {
                // No tap drops 2^64 messages: a total past that is a damaged count, not a
                // number to wrap (or, in a debug build, to panic on).
                let Some(missing) = u64_at(&self.buf, 0).and_then(|n| self.missing.checked_add(n)) else {
                    let what = "a hole mark whose count takes the marks' total past 2^64";
                    return fail(self, CaptureError::BadMark { offset: at, what });
                };
                self.marks += 1;
                self.missing = missing;
            }
            RECORD_END
                if len as usize == END_BODY_LEN
                    || (len as usize == LEGACY_END_BODY_LEN && self.version == 2 && self.file_id == 0) =>
            {
                let want = end_body(self.missing, self.records, at, self.file_id);
                if self.buf[..] != want[..self.buf.len()] {
                    let what = "an end record whose totals, offset or file id are not those of the records before \
                                it and this file's header";
                    return fail(self, CaptureError::BadMark { offset: at, what });
                }
                self.ended = true;
            }
            RECORD_HOLE | RECORD_END => {
                return fail(
                    self,
                    CaptureError::BadMark { offset: at, what: "a hole mark or end record of the wrong length" },
                )
            }
            f if f & (RECORD_HOLE | RECORD_END) != 0 => {
                return fail(
                    self,
                    CaptureError::BadMark { offset: at, what: "a hole mark or end record with other flags" },
                )
            }
            _ => self.records += 1,
        }
        self.offset = at + RECORD_HEADER_LEN as u64 + len as u64;
        Ok(Some((flags, recv_ns, at)))
    }
}

/// What an earlier tap left at a `--record` path, judged by its first bytes
/// ([`crate::outfile::judge_earlier`]): a capture with anything after its file header (a record,
/// whole or cut short by a killed tap) is kept, named by its header's creation time (the file's
/// time when that is 0); a file header alone, or part of one, is nothing to lose; anything else
/// (not `MDSUBCAP`) is not a capture. A capture of a version this build does not read is kept too.
pub fn earlier_capture(head: &[u8], _whole: bool) -> Result<crate::outfile::Earlier, String> {
    let magic = &head[..head.len().min(MAGIC.len())];
    if magic != &MAGIC[..magic.len()] {
        return Err("bad magic at offset 0: it does not start with MDSUBCAP".into());
    }
    if head.len() <= FILE_HEADER_LEN {
        return Ok(crate::outfile::Earlier::Nothing);
    }
    Ok(crate::outfile::Earlier::Keep(u64_at(head, 16).filter(|&ns| ns > 0)))
}

/// What a capture says it misses, read before it is replayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holes {
    /// Messages its hole marks say are missing ([`RECORD_HOLE`]).
    pub missing: u64,
    /// Whether its tap closed it ([`RECORD_END`]); `None` for a version 1 file, which has
    /// neither marks nor an end record (what it misses is not known).
    pub closed: Option<bool>,
}

impl Holes {
    /// Read what the capture at `path` misses: a closed file's end record (its last bytes,
    /// read alone), else (its tap was killed, or its writing failed) its hole marks, read
    /// through to its end or its first damage.
    pub fn of(path: &Path) -> Result<Holes, CaptureError> {
        let mut r = CaptureReader::open(path)?;
        if r.version < 2 {
            return Ok(Holes { missing: 0, closed: None });
        }
        if let Some(missing) = end_total(path, r.file_len().unwrap_or(0), r.file_id)? {
            return Ok(Holes { missing, closed: Some(true) });
        }
        while let Ok(Some(_)) = r.next_record() {}
        Ok(Holes { missing: r.missing(), closed: Some(r.ended()) })
    }
}

/// The marks' total of the end record that ends the `len`-byte capture at `path` (whose header
/// gives `file_id`), if it ends with one: one that says it sits where it does and repeats the
/// file's id, which no frame's payload knows (a frame forged to look like an end record
/// at the tail of a killed tap's file is not one). The totals are checked when the file is read
/// through ([`CaptureReader`]).
fn end_total(path: &Path, len: u64, file_id: u32) -> Result<Option<u64>, CaptureError> {
    use std::io::{Seek, SeekFrom};
    // A file of the earlier layout (no id) is read through: nothing in its last bytes tells its
    // end record from a frame's payload.
    if file_id == 0 || len < (FILE_HEADER_LEN + END_RECORD_LEN) as u64 {
        return Ok(None);
    }
    let mut f = crate::infile::open(path, "a capture is a file `mdsub tap --record` wrote")
        .map_err(CaptureError::io("opening the capture file"))?;
    let mut tail = [0u8; END_RECORD_LEN];
    f.seek(SeekFrom::Start(len - END_RECORD_LEN as u64)).map_err(CaptureError::io("reading the end record"))?;
    let got = crate::infile::read_full(&mut f, &mut tail).map_err(CaptureError::io("reading the end record"))?;
    let (head, body) = tail.split_at(RECORD_HEADER_LEN);
    let (Some(recv_ns), Some(missing), Some(records)) = (u64_at(head, 8), u64_at(body, 0), u64_at(body, 8)) else {
        return Ok(None);
    };
    // Exactly the record the writer gives an end with these totals, here, in this file.
    let at = len - END_RECORD_LEN as u64;
    let whole = got == END_RECORD_LEN
        && body == end_body(missing, records, at, file_id)
        && head == record_header(END_BODY_LEN as u32, RECORD_END, recv_ns, body);
    Ok(whole.then_some(missing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut w = CaptureWriter::new(Vec::new()).expect("header");
        w.write_frame(b"first", false, 10).expect("write");
        w.write_frame(b"topic", true, 11).expect("write");
        w.write_frame(b"body", false, 11).expect("write");
        w.into_inner().expect("flush")
    }

    type Records = Vec<(Vec<u8>, bool, u64)>;

    fn read_all(bytes: &[u8]) -> (Records, Option<CaptureError>) {
        let mut r = match CaptureReader::new(bytes) {
            Ok(r) => r,
            Err(e) => return (vec![], Some(e)),
        };
        let mut out = vec![];
        loop {
            match r.next_record() {
                Ok(Some(rec)) => out.push((rec.frame.to_vec(), rec.more, rec.recv_ns)),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn round_trip_with_multipart() {
        let (recs, err) = read_all(&sample());
        assert!(err.is_none());
        assert_eq!(
            recs,
            vec![(b"first".to_vec(), false, 10), (b"topic".to_vec(), true, 11), (b"body".to_vec(), false, 11)]
        );
    }

    #[test]
    fn truncation_reports_offset_and_keeps_what_came_before() {
        let bytes = sample();
        let second = (FILE_HEADER_LEN + RECORD_HEADER_LEN + 5) as u64;
        let (recs, err) = read_all(&bytes[..bytes.len() - 2]);
        assert_eq!(recs.len(), 2);
        match err {
            Some(CaptureError::Truncated { offset, what }) => {
                assert_eq!(offset, second + RECORD_HEADER_LEN as u64 + 5);
                assert_eq!(what, "record body");
            }
            other => panic!("expected truncation, got {other:?}"),
        }
        let (recs, err) = read_all(&bytes[..second as usize + 3]);
        assert_eq!(recs.len(), 1);
        assert!(matches!(err, Some(CaptureError::Truncated { offset, what: "record header" }) if offset == second));
    }

    #[test]
    fn a_capture_file_is_read_from_its_header_to_its_size() {
        use crate::replay::progress::{estimate, Extent};
        let d = std::env::temp_dir().join(format!("mdsub-capture-offset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        let path = d.join("c.cap");
        let mut w = CaptureWriter::create(&path).expect("create");
        for k in 0..1000u64 {
            w.write_frame(&[b'x'; 100], false, 10 + k).expect("write");
        }
        drop(w.into_inner().expect("flush"));
        let mut r = CaptureReader::open(&path).expect("open");
        let size = std::fs::metadata(&path).expect("stat").len();
        assert_eq!(r.file_len(), Some(size));
        let at = |r: &CaptureReader<_>| {
            estimate(Extent::Bytes { read: r.offset(), from: 0, total: size }, 1.0, None).expect("a size").fraction
        };
        let mut seen = vec![at(&r)];
        while r.next_record().expect("intact").is_some() {
            seen.push(at(&r));
        }
        assert_eq!(seen.len(), 1001);
        assert!(seen[0] < 0.001, "the header only: {}", seen[0]);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "forward with each record");
        assert!((seen[500] - 0.5).abs() < 0.01, "half way: {}", seen[500]);
        assert_eq!(seen.last(), Some(&1.0), "the file's size at its end");
        assert_eq!(CaptureReader::new(&sample()[..]).expect("header").file_len(), None, "not a file");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corruption_is_found_by_checksum() {
        let mut bytes = sample();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let (recs, err) = read_all(&bytes);
        assert_eq!(recs.len(), 2);
        assert!(matches!(err, Some(CaptureError::Checksum { .. })), "{err:?}");
    }

    /// A capture recorded through a filter says so in its header's flags; one without (an older
    /// tap's, or unfiltered) reads as unfiltered, and the records read the same either way.
    #[test]
    fn the_header_says_a_capture_was_recorded_through_a_filter() {
        let plain = sample();
        assert_eq!(&plain[10..12], &[0, 0], "an unfiltered capture's header is as before");
        assert!(!CaptureReader::new(&plain[..]).expect("header").filtered());
        let mut w = CaptureWriter::with_flags(Vec::new(), HEADER_FILTERED).expect("header");
        w.write_frame(b"first", false, 10).expect("write");
        let bytes = w.into_inner().expect("flush");
        assert_eq!(&bytes[10..12], &[1, 0]);
        let r = CaptureReader::new(&bytes[..]).expect("header");
        assert!(r.filtered());
        let (recs, err) = read_all(&bytes);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(recs, vec![(b"first".to_vec(), false, 10)]);
        // A flag this build does not know is kept, not refused (the file still reads).
        let mut other = plain.clone();
        other[10] = 0x80;
        let r = CaptureReader::new(&other[..]).expect("header");
        assert!(!r.filtered() && r.header_flags == 0x80);
    }

    #[test]
    fn bad_header() {
        assert!(matches!(CaptureReader::new(&b"NOTACAPTUREFILE........."[..]), Err(CaptureError::BadMagic)));
        assert!(matches!(CaptureReader::new(&b"MDSUB"[..]), Err(CaptureError::Truncated { offset: 5, .. })));
        let mut v = sample();
        v[8] = 3;
        let e = CaptureReader::new(&v[..]).err();
        assert!(matches!(e, Some(CaptureError::UnsupportedVersion(3))), "{e:?}");
        let said = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(said.contains("this build reads versions 1 to 2; a newer mdsub wrote it"), "{said}");
    }

    /// The file at `name` in a fresh scratch directory ([`crate::test_dir`]), with `bytes`.
    fn file_of(name: &str, bytes: &[u8]) -> (std::path::PathBuf, std::path::PathBuf) {
        let d = crate::test_dir(&format!("capture-{name}"));
        let path = d.join("c.cap");
        std::fs::write(&path, bytes).expect("write");
        (d, path)
    }

    /// Frames, a hole of 5, a two-frame message, a hole of 2, a frame, closed.
    fn with_holes() -> CaptureWriter<Vec<u8>> {
        let mut w = CaptureWriter::new(Vec::new()).expect("header");
        w.write_frame(b"first", false, 10).expect("write");
        assert_eq!(w.write_hole(5, 11).expect("mark"), (RECORD_HEADER_LEN + HOLE_BODY_LEN) as u64);
        assert_eq!(w.write_hole(0, 11).expect("no mark"), 0, "a count of 0 writes nothing");
        w.write_frame(b"topic", true, 12).expect("write");
        w.write_frame(b"body", false, 12).expect("write");
        w.write_hole(2, 13).expect("mark");
        w.write_frame(b"last", false, 14).expect("write");
        w
    }

    /// Before, a capture could not say it missed anything: the tap's drops left holes nobody
    /// could tell from the publisher's. A hole mark says how many messages are missing where;
    /// the end record says the tap closed the file, with the marks' total, and is its last bytes.
    #[test]
    fn a_capture_marks_its_holes_where_they_are_and_its_end_says_their_total() {
        let w = with_holes();
        assert_eq!(w.missing(), 7);
        let bytes = w.finish(15).expect("closed");
        assert_eq!(&bytes[8..10], &[2, 0], "version 2: a version 1 reader refuses it by its version");
        // The marks and the end are no frames; each mark is taken in where it lies, between
        // the messages it falls between.
        let mut r = CaptureReader::new(&bytes[..]).expect("header");
        let mut missing_at = vec![];
        while let Some(rec) = r.next_record().expect("intact") {
            let f = rec.frame.to_vec();
            missing_at.push((f, r.missing()));
        }
        let names: Vec<(&[u8], u64)> = missing_at.iter().map(|(f, m)| (&f[..], *m)).collect();
        assert_eq!(names, vec![(&b"first"[..], 0), (b"topic", 5), (b"body", 5), (b"last", 7)]);
        assert_eq!((r.missing(), r.marks(), r.ended(), r.records()), (7, 2, true, 4));
        assert_eq!(r.offset(), bytes.len() as u64, "read to the end");
        // Read before a replay: the end record alone (its last bytes) gives the total.
        let (d, path) = file_of("holes-closed", &bytes);
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: 7, closed: Some(true) });
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A capture whose tap was killed has no end record: it does not read as whole. What its
    /// marks say is still known (read through), and a tail cut inside a record is the damage it
    /// was before.
    #[test]
    fn a_capture_without_its_end_record_reads_as_not_closed_with_the_holes_it_marked() {
        let bytes = with_holes().into_inner().expect("flushed, not closed");
        let (d, path) = file_of("holes-open", &bytes);
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: 7, closed: Some(false) });
        let closed = with_holes().finish(15).expect("closed");
        // Cut inside the end record: not closed, the frames and marks before it read.
        let cut = &closed[..closed.len() - 3];
        std::fs::write(&path, cut).expect("write");
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: 7, closed: Some(false) });
        let (recs, err) = read_all(cut);
        assert_eq!(recs.len(), 4);
        assert!(matches!(err, Some(CaptureError::Truncated { what: "record body", .. })), "{err:?}");
        assert_eq!(err.and_then(|e| e.damage_reason()), Some("truncated_tail"));
        // A version 1 file (an older tap's) has neither: what it misses is not known.
        let mut v1 = sample();
        v1[8] = 1;
        std::fs::write(&path, &v1).expect("write");
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: 0, closed: None });
        let (recs, err) = read_all(&v1);
        assert!(err.is_none() && recs.len() == 3, "a version 1 file reads as before: {err:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A mark or an end that is not one is damage, said with its offset (bad_record): in a
    /// version 1 file the flags are unknown; an end whose totals are not its records', a record
    /// after the end, a mark of the wrong length are refused.
    #[test]
    fn a_damaged_mark_or_end_is_refused_at_its_offset() {
        let closed = with_holes().finish(15).expect("closed");
        // A record after the end.
        let mut after = closed.clone();
        after.extend_from_slice(&sample()[FILE_HEADER_LEN..FILE_HEADER_LEN + RECORD_HEADER_LEN + 5]);
        let (recs, err) = read_all(&after);
        assert_eq!(recs.len(), 4);
        assert!(
            matches!(err, Some(CaptureError::BadMark { offset, what: "a record after the end record" }) if offset == closed.len() as u64),
            "{err:?}"
        );
        // An end whose total is not its marks' (a mark lost from the middle).
        let mut w = CaptureWriter::new(Vec::new()).expect("header");
        w.write_frame(b"first", false, 1).expect("write");
        w.missing = 3;
        let lying = w.finish(2).expect("closed");
        let (_, err) = read_all(&lying);
        assert!(matches!(err, Some(CaptureError::BadMark { .. })), "{err:?}");
        assert_eq!(err.and_then(|e| e.damage_reason()), Some("bad_record"));
        // A mark of the wrong length.
        let mut w = CaptureWriter::new(Vec::new()).expect("header");
        w.write_record(b"four", RECORD_HOLE, 1).expect("write");
        let (_, err) = read_all(&w.into_inner().expect("flush"));
        assert!(matches!(err, Some(CaptureError::BadMark { offset: 24, .. })), "{err:?}");
        // In a version 1 file a mark's flag is unknown, as it always was.
        let mut v1 = closed.clone();
        v1[8] = 1;
        let (recs, err) = read_all(&v1);
        assert_eq!(recs.len(), 1);
        assert!(matches!(err, Some(CaptureError::BadFlags { flags: RECORD_HOLE, .. })), "{err:?}");
    }

    /// Before, a reader added the marks' counts unchecked: two marks whose total passes 2^64
    /// panicked a debug build and wrapped in a release one (a file of damaged counts read as
    /// missing 1). Such a total is damage, said at the mark that passes it.
    #[test]
    fn marks_whose_total_passes_2_64_are_damage_not_a_wrapped_count() {
        let mut w = CaptureWriter::new(Vec::new()).expect("header");
        w.write_frame(b"first", false, 1).expect("write");
        w.write_hole(u64::MAX, 2).expect("mark");
        let second = (FILE_HEADER_LEN + 2 * RECORD_HEADER_LEN + 5 + HOLE_BODY_LEN) as u64;
        w.write_hole(2, 3).expect("mark");
        w.write_frame(b"last", false, 4).expect("write");
        assert_eq!(w.missing(), u64::MAX, "the writer's total stops at the top");
        let bytes = w.into_inner().expect("flush");
        let mut r = CaptureReader::new(&bytes[..]).expect("header");
        assert!(r.next_record().expect("first").is_some());
        let e = r.next_record().err();
        assert!(matches!(e, Some(CaptureError::BadMark { offset, .. }) if offset == second), "{e:?}");
        assert_eq!((r.missing(), r.marks()), (u64::MAX, 1), "the marks before it stand");
        let (d, path) = file_of("holes-overflow", &bytes);
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: u64::MAX, closed: Some(false) });
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A version 2 capture a build before this one's release closed (session 29's: header bytes
    /// 12..16 zero, an end record of 16 bytes, its marks' total and its frame records) still
    /// reads as closed with its total, read through (its end cannot be told from a frame's
    /// payload by its last bytes alone), where it read as damaged at its end record
    /// (`bad_record`, "of the wrong length") and as not closed. A 16-byte end record in a file
    /// with an id is still damage, and a file's id is never 0.
    #[test]
    fn a_capture_closed_by_the_earlier_version_2_layout_still_reads_as_closed() {
        let legacy = |id: u32| {
            let mut w = CaptureWriter::new(Vec::new()).expect("header");
            w.file_id = id;
            w.write_frame(b"first", false, 10).expect("write");
            w.write_hole(3, 11).expect("mark");
            w.write_frame(b"second", false, 12).expect("write");
            let mut body = [0u8; 16];
            body[..8].copy_from_slice(&3u64.to_le_bytes());
            body[8..].copy_from_slice(&2u64.to_le_bytes());
            w.write_record(&body, RECORD_END, 13).expect("end");
            let mut bytes = w.into_inner().expect("flushed");
            bytes[12..16].copy_from_slice(&id.to_le_bytes());
            bytes
        };
        let old = legacy(0);
        let (recs, err) = read_all(&old);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(recs.len(), 2);
        let (d, path) = file_of("legacy-end", &old);
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: 3, closed: Some(true) });
        // Its totals are still checked.
        let mut wrong = old.clone();
        let end = wrong.len() - 16;
        wrong[end..end + 8].copy_from_slice(&4u64.to_le_bytes());
        let crc = checksum(RECORD_END, 13, &wrong[end..]);
        wrong[end - 4..end].copy_from_slice(&crc.to_le_bytes());
        let (_, err) = read_all(&wrong);
        assert!(matches!(err, Some(CaptureError::BadMark { .. })), "{err:?}");
        // In a file with an id: damage at its offset, not closed.
        let new = legacy(7);
        let (_, err) = read_all(&new);
        let at = (new.len() - RECORD_HEADER_LEN - 16) as u64;
        assert!(matches!(err, Some(CaptureError::BadMark { offset, .. }) if offset == at), "{err:?}");
        std::fs::write(&path, &new).expect("write");
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: 3, closed: Some(false) });
        assert!((0..10_000u64).all(|t| new_file_id(t) != 0), "an id is never 0");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A killed tap's file whose last frame's payload is the bytes of an end record, checksum
    /// and all (a hostile publisher can send exactly that), with a total of its choosing and the
    /// offset it lands at. Before, the file's last bytes alone were trusted: it read as closed,
    /// missing 1000. The end record now repeats the file's id, which no publisher sees, and its
    /// own offset: the forgery reads as not closed, missing nothing, and every frame reads.
    #[test]
    fn a_frame_forged_as_an_end_record_does_not_close_a_killed_taps_capture() {
        let mut w = CaptureWriter::new(Vec::new()).expect("header");
        w.write_frame(b"first", false, 10).expect("write");
        let at = FILE_HEADER_LEN + RECORD_HEADER_LEN + 5 + RECORD_HEADER_LEN;
        // The forged end: where it lands in the file, a total of the forger's choosing, the
        // file's id guessed (0, as a header's reserved bytes were).
        let mut body = vec![0u8; END_BODY_LEN];
        body[..8].copy_from_slice(&1000u64.to_le_bytes());
        body[8..16].copy_from_slice(&1u64.to_le_bytes());
        body[16..24].copy_from_slice(&(at as u64).to_le_bytes());
        let mut forged = record_header(END_BODY_LEN as u32, RECORD_END, 11, &body).to_vec();
        forged.extend_from_slice(&body);
        w.write_frame(&forged, false, 11).expect("write");
        let bytes = w.into_inner().expect("flushed, not closed");
        assert_eq!(bytes.len(), at + END_RECORD_LEN, "the forgery is the file's last bytes");
        let (d, path) = file_of("forged-end", &bytes);
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: 0, closed: Some(false) });
        let (recs, err) = read_all(&bytes);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(recs.len(), 2, "the forgery is a frame like any other");

        // A real end record copied from another file (another id): damage at its offset,
        // said once, and the file not closed.
        let closed = |id: u32| {
            let mut w = CaptureWriter::new(Vec::new()).expect("header");
            w.file_id = id;
            w.write_frame(b"first", false, 10).expect("write");
            let mut bytes = w.finish(11).expect("closed");
            bytes[12..16].copy_from_slice(&id.to_le_bytes());
            bytes
        };
        let (mut one, other) = (closed(1), closed(2));
        let end = one.len() - END_RECORD_LEN;
        one[end..].copy_from_slice(&other[end..]);
        std::fs::write(&path, &one).expect("write");
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: 0, closed: Some(false) });
        let mut r = CaptureReader::new(&one[..]).expect("header");
        assert!(r.next_record().expect("the frame").is_some());
        let e = r.next_record().err();
        assert!(matches!(e, Some(CaptureError::BadMark { offset, .. }) if offset == end as u64), "{e:?}");
        assert!(matches!(r.next_record(), Ok(None)), "said once");
        // Its own end: closed.
        let own = closed(1);
        std::fs::write(&path, &own).expect("write");
        assert_eq!(Holes::of(&path).expect("holes"), Holes { missing: 0, closed: Some(true) });
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An earlier tap's capture at a `--record` path is kept (by its header's time) when it holds
    /// anything after its header; a header alone is nothing to lose; anything else is refused.
    #[test]
    fn an_earlier_capture_is_kept_by_its_start_and_anything_else_is_refused() {
        use crate::outfile::Earlier;
        let bytes = sample();
        let created = u64_at(&bytes, 16).expect("created");
        assert_eq!(earlier_capture(&bytes, true), Ok(Earlier::Keep(Some(created))));
        assert_eq!(earlier_capture(&bytes[..FILE_HEADER_LEN + 3], true), Ok(Earlier::Keep(Some(created))), "torn");
        assert_eq!(earlier_capture(&bytes[..FILE_HEADER_LEN], true), Ok(Earlier::Nothing));
        assert_eq!(earlier_capture(&bytes[..5], true), Ok(Earlier::Nothing), "a header cut short");
        let mut no_time = bytes.clone();
        no_time[16..24].fill(0);
        assert_eq!(earlier_capture(&no_time, true), Ok(Earlier::Keep(None)), "named by the file's time");
        let e = earlier_capture(b"meeting notes\n", true).expect_err("not a capture");
        assert!(e.contains("bad magic"), "{e}");
    }

    proptest! {
        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v = sample();
            v.truncate(FILE_HEADER_LEN);
            v.extend_from_slice(&bytes);
            let _ = read_all(&v);
        }

        #[test]
        fn damaged_file_yields_a_prefix(cut in 0usize..80, flip in 0usize..80, byte: u8) {
            let mut v = sample();
            if FILE_HEADER_LEN + flip < v.len() { v[FILE_HEADER_LEN + flip] = byte; }
            v.truncate(FILE_HEADER_LEN + cut);
            let (recs, _) = read_all(&v);
            let (good, _) = read_all(&sample());
            prop_assert!(recs.len() <= good.len());
            for (r, g) in recs.iter().zip(good.iter()) { prop_assert_eq!(r, g); }
        }
    }
}
