//! The capture file: an append-only log of received frames with their receive
//! time, written by `mdsub tap --record` and read by `mdsub replay --from`.
//!
//! Layout (little-endian, see `docs/WIRE.md`): a 24-byte file header
//! (`MDSUBCAP`, version, flags, reserved, created time) then records of
//! `len u32 · flags u8 · 3 reserved · recv_ns u64 · crc32 u32 · frame bytes`.
//! Flag bit 0 (`MORE`) says the next record is the next frame of the same
//! multipart message. A reader yields every intact record and then reports the
//! first damage (truncation, bad length, bad checksum) with its byte offset.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// File magic.
pub const MAGIC: &[u8; 8] = b"MDSUBCAP";
/// Capture format version this build writes and reads.
pub const CAPTURE_VERSION: u16 = 1;
/// File header length.
pub const FILE_HEADER_LEN: usize = 24;
/// Record header length.
pub const RECORD_HEADER_LEN: usize = 20;
/// Largest frame a record may hold; a larger length means a corrupt file.
pub const MAX_RECORD_LEN: u32 = 64 << 20;
/// Record flag: another frame of the same message follows.
pub const RECORD_MORE: u8 = 1;
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
    #[error("capture format version {0} is not supported (this build reads {CAPTURE_VERSION})")]
    UnsupportedVersion(u16),
    #[error("truncated at byte offset {offset}: {what}")]
    Truncated { offset: u64, what: &'static str },
    #[error("damaged record at byte offset {offset}: length {len} exceeds {MAX_RECORD_LEN}")]
    TooLarge { offset: u64, len: u32 },
    #[error("damaged record at byte offset {offset}: its checksum does not match")]
    Checksum { offset: u64 },
    #[error("damaged record at byte offset {offset}: unknown flags {flags:#x}")]
    BadFlags { offset: u64, flags: u8 },
}

impl CaptureError {
    /// The refusal reason a reader's damage is counted under: `truncated_tail` (the file ends
    /// inside a record) or `bad_record` (a record whose length, flags or checksum are wrong);
    /// `None` for errors that are not damage after the header (I/O, the file header).
    pub fn damage_reason(&self) -> Option<&'static str> {
        match self {
            CaptureError::Truncated { what, .. } if *what != "file header" => Some("truncated_tail"),
            CaptureError::TooLarge { .. } | CaptureError::Checksum { .. } | CaptureError::BadFlags { .. } => {
                Some("bad_record")
            }
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

/// Appends records to a capture file.
pub struct CaptureWriter<W: Write> {
    out: W,
    records: u64,
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
        h[16..24].copy_from_slice(&crate::clock::realtime_ns().to_le_bytes());
        out.write_all(&h).map_err(CaptureError::io("writing the file header"))?;
        Ok(CaptureWriter { out, records: 0 })
    }

    /// Append one frame. `more` marks that the next frame belongs to the same message.
    pub fn write_frame(&mut self, frame: &[u8], more: bool, recv_ns: u64) -> Result<(), CaptureError> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l <= MAX_RECORD_LEN)
            .ok_or(CaptureError::TooLarge { offset: 0, len: u32::MAX })?;
        let flags = if more { RECORD_MORE } else { 0 };
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4] = flags;
        h[8..16].copy_from_slice(&recv_ns.to_le_bytes());
        h[16..20].copy_from_slice(&checksum(flags, recv_ns, frame).to_le_bytes());
        self.out.write_all(&h).map_err(CaptureError::io("writing a record"))?;
        self.out.write_all(frame).map_err(CaptureError::io("writing a record"))?;
        self.records += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flush buffered records to the OS.
    pub fn flush(&mut self) -> Result<(), CaptureError> {
        self.out.flush().map_err(CaptureError::io("flushing the capture file"))
    }

    /// Flush and return the inner writer.
    pub fn into_inner(mut self) -> Result<W, CaptureError> {
        self.flush()?;
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
        if version != CAPTURE_VERSION {
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

    /// Intact records read so far (the damaged one, if any, is record `records() + 1`).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The next record, `Ok(None)` at a clean end of file, or the damage that
    /// stops reading (after which it keeps returning `Ok(None)`).
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, CaptureError> {
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
        if got < RECORD_HEADER_LEN {
            return fail(self, CaptureError::Truncated { offset: at, what: "record header" });
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let flags = h[4];
        if len > MAX_RECORD_LEN {
            return fail(self, CaptureError::TooLarge { offset: at, len });
        }
        if flags & !RECORD_MORE != 0 || h[5..8] != [0, 0, 0] {
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
        self.offset = at + RECORD_HEADER_LEN as u64 + len as u64;
        self.records += 1;
        Ok(Some(Record { frame: &self.buf, more: flags & RECORD_MORE != 0, recv_ns, offset: at }))
    }
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
        v[8] = 2;
        assert!(matches!(CaptureReader::new(&v[..]), Err(CaptureError::UnsupportedVersion(2))));
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
