//! Databento DBN files as a replay source: detection (plain or zstd-compressed,
//! DBN versions 1–3), a k-way merge of several files by receive time
//! (`ts_recv`) and the instrument → topic map from each file's symbology.
//!
//! Decoding is the `dbn` crate's (its decoder is a state machine over a
//! reader); this module adds what a replay needs around it: the byte offset
//! and reason of damage (the crate ends a file quietly at a partial record,
//! so consumed bytes are counted here against bytes read; it frames a record
//! by its length byte alone, so a length wrong for the record's type is
//! checked here against [`record_len`]), and counted skips of record types
//! that are not market data. What a record is on the wire (its lengths, an
//! aligned view of one in a frame's payload) is [`crate::wire::dbn`]'s.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use dbn::decode::dbn::Decoder;
use dbn::decode::DbnMetadata;
use dbn::{rtype, Metadata, VersionUpgradePolicy};

use crate::wire::dbn::record_len;

/// The first bytes of a zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// The first bytes of an uncompressed DBN stream (then the version byte).
pub const DBN_MAGIC: &[u8; 3] = b"DBN";
/// Undefined timestamp in DBN records.
const UNDEF_TS: u64 = u64::MAX;

/// What a replay input file holds, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// An mdsub capture (`mdsub tap --record`).
    Capture,
    /// Uncompressed DBN.
    Dbn,
    /// zstd-compressed DBN (`.dbn.zst`).
    DbnZstd,
}

/// Detect a replay file's kind; `None` when it is none of them.
pub fn detect(path: &Path) -> io::Result<Option<FileKind>> {
    let mut f = crate::infile::open(path, "a replay file is a capture or a DBN file")?;
    let mut head = [0u8; 8];
    let n = crate::infile::read_full(&mut f, &mut head)?;
    let h = &head[..n];
    // A zstd skippable frame (0x184D2A50..5F, little endian) may lead too.
    let skippable = n >= 4 && h[0] & 0xF0 == 0x50 && h[1..4] == [0x2A, 0x4D, 0x18];
    Ok(if h.starts_with(crate::wire::capture::MAGIC) {
        Some(FileKind::Capture)
    } else if h.starts_with(DBN_MAGIC) {
        Some(FileKind::Dbn)
    } else if h.starts_with(&ZSTD_MAGIC) || skippable {
        Some(FileKind::DbnZstd)
    } else {
        None
    })
}

impl DbnSourceError {
    /// The refusal reason damage is counted under: `truncated_tail` (the file ends inside a
    /// record) or `bad_record` (a record the decoder cannot read); `None` for other errors.
    pub fn damage_reason(&self) -> Option<&'static str> {
        match self {
            DbnSourceError::Damaged { reason, .. } if reason.starts_with("truncated") => Some("truncated_tail"),
            DbnSourceError::Damaged { .. } => Some("bad_record"),
            _ => None,
        }
    }
}

/// Errors of a DBN source. Each names the file; damage also names the byte
/// offset (of the decompressed stream for zstd files) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum DbnSourceError {
    #[error("{path}: {cause}")]
    Open { path: PathBuf, cause: String },
    #[error("{path}: damaged at byte {offset}{}: {reason} (record {}; the {records} records before it were read)",
        if *.compressed { " of the decompressed stream" } else { "" }, *.records + 1)]
    Damaged { path: PathBuf, offset: u64, compressed: bool, reason: String, records: u64 },
}

/// Counts the (decompressed) bytes handed to the decoder and keeps the first
/// read error, which the decoder would otherwise turn into a quiet end.
struct Counting {
    inner: Box<dyn Read + Send>,
    read: u64,
    head: [u8; 8],
    error: Option<String>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let have = self.read.min(8) as usize;
                let take = (8 - have).min(n);
                self.head[have..have + take].copy_from_slice(&buf[..take]);
                self.read += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                // Only a decompressor reports an early end (a file read just returns 0): the
                // compressed file ends inside a zstd frame, a cut-off `.dbn.zst`.
                self.error.get_or_insert_with(|| match e.kind() {
                    io::ErrorKind::UnexpectedEof => format!("truncated: the file ends inside a zstd frame ({e})"),
                    _ => e.to_string(),
                });
                Err(e)
            }
        }
    }
}

/// The largest DBN metadata mdsub reads, in bytes (the prelude's length field): 256 MiB. The
/// metadata is the file's symbology, 71 bytes per requested symbol and 154 per instrument
/// mapped for one interval (a day) in DBN versions 2 and 3, so 256 MiB holds some 1.7 million
/// such mappings. The bound is for a `.dbn.zst`, whose decompressed size is not known before it
/// is read: a length field is four bytes anyone can write, and zstd stores a run of one byte at
/// over 30 000 to 1, so without it a few kilobytes could make mdsub hold gigabytes. It applies to
/// a plain file as well (which its size bounds too), so a file replays the same compressed or not.
pub const MAX_METADATA_LEN: u32 = 256 << 20;

/// Read a DBN stream's 8-byte prelude (`DBN`, version, metadata length) and the metadata it
/// declares from `inner`, as far as the bytes exist: the buffer grows with what is read, never
/// from the length field, which is first checked against `file_size` (a plain file) and
/// [`MAX_METADATA_LEN`]. A stream too short for a prelude, or without the `DBN` magic, is
/// handed back as read, for the `dbn` crate to refuse in its words.
fn read_metadata(inner: &mut dyn Read, file_size: Option<u64>, compressed: bool) -> Result<Vec<u8>, String> {
    let read_err = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof if compressed => {
            format!("not a readable DBN file: the file ends inside a zstd frame, in its metadata ({e})")
        }
        _ => format!("not a readable DBN file: {e} while reading its metadata"),
    };
    let mut head = Vec::with_capacity(8);
    read_up_to(inner, &mut head, 8).map_err(read_err)?;
    if head.len() < 8 || !head.starts_with(DBN_MAGIC) {
        return Ok(head);
    }
    let declared = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if let Some(size) = file_size.filter(|size| 8 + u64::from(declared) > *size) {
        return Err(format!(
            "its metadata length ({declared} bytes, at bytes 4-7) is larger than the file ({size} bytes): the \
             file is cut off inside its metadata, or its length field is damaged"
        ));
    }
    if declared > MAX_METADATA_LEN {
        return Err(format!(
            "its metadata length ({declared} bytes, at bytes 4-7) is over mdsub's limit of {MAX_METADATA_LEN} \
             bytes (256 MiB, some 1.7 million symbol mappings): a damaged length field, or a file to split \
             into fewer symbols or days"
        ));
    }
    read_up_to(inner, &mut head, 8 + declared as usize).map_err(read_err)?;
    if head.len() < 8 + declared as usize {
        return Err(format!(
            "the {} ends inside its metadata: {} of the {declared} bytes its length field declares",
            if compressed { "decompressed stream" } else { "file" },
            head.len() - 8
        ));
    }
    Ok(head)
}

/// Read from `r` into `buf` until it holds `len` bytes or the stream ends, growing `buf` by
/// what arrives (at most 64 KiB at a time).
fn read_up_to(r: &mut dyn Read, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let mut chunk = [0u8; 1 << 16];
    while buf.len() < len {
        let want = (len - buf.len()).min(chunk.len());
        match r.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A compressed file as read by its decompressor, counting the (compressed) bytes read: a
/// `.dbn.zst`'s position, loaded by its [`DbnFile`] (an add per read of the decompressor's
/// buffer, not per record).
struct CountingFile {
    file: std::fs::File,
    read: Arc<AtomicU64>,
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

/// `head` (the prelude and metadata [`read_metadata`] took), then the rest of the stream;
/// `head` is freed once it has been read.
struct Prefixed {
    head: Vec<u8>,
    at: usize,
    rest: Box<dyn Read + Send>,
}

impl Read for Prefixed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
            self.at += n;
            if self.at == self.head.len() {
                (self.head, self.at) = (Vec::new(), 0);
            }
            return Ok(n);
        }
        self.rest.read(buf)
    }
}

/// Receive time of a record: `ts_recv` where the layout has one (read from
/// the bytes, so any DBN version works), else `ts_event`.
pub fn index_ts(bytes: &[u8]) -> u64 {
    let field = |off: usize| {
        bytes.get(off..off + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0xff; 8]))).unwrap_or(UNDEF_TS)
    };
    let ts_event = field(8);
    let rt = bytes.get(1).copied().unwrap_or(0);
    let ts_recv = match rt {
        rtype::MBO => field(40),
        rtype::MBP_0
        | rtype::MBP_1
        | rtype::MBP_10
        | rtype::CMBP_1
        | rtype::CBBO_1S
        | rtype::CBBO_1M
        | rtype::TCBBO
        | rtype::BBO_1S
        | rtype::BBO_1M => field(32),
        rtype::STATUS | rtype::INSTRUMENT_DEF | rtype::IMBALANCE | rtype::STATISTICS => field(16),
        _ => UNDEF_TS,
    };
    if ts_recv == UNDEF_TS {
        ts_event
    } else {
        ts_recv
    }
}

/// Why a record of `len` bytes cannot be of type `rtype` in this file, if it cannot
/// ([`record_len`]).
fn wrong_length(version: u8, ts_out: bool, rtype: u8, len: usize) -> Option<String> {
    let want = record_len(version, rtype, ts_out)?;
    (len != want).then(|| {
        let name = dbn::RType::try_from(rtype).map_or("?", |t| t.as_str());
        format!(
            "its length byte 0x{:02x} ({len} bytes) is wrong for its type: {name} records (rtype 0x{rtype:02x}) are \
             {want} bytes in DBN version {version}{}",
            len / 4,
            if ts_out { " with ts_out" } else { "" }
        )
    })
}

/// Why a replayed record's receive time `ts` (its index time, [`index_ts`]) cannot be in a file
/// whose metadata gives `span` (`start`, and `end` when it says one), if it cannot: Databento's
/// historical files hold the records of their query's `[start, end)`, so one outside it (or with
/// no time at all) is damage, most often a `.dbn.zst` corrupted where no zstd checksum could tell.
/// A live recording's metadata has no end, and its `start` does not bound what an intraday replay
/// sends before it, so there only a time after `recorded_by` (the replay's own clock when it opened
/// the file, a day ahead for clocks that differ) is damage: nothing recorded was received later.
fn outside_span(ts: u64, (start, end): (u64, Option<u64>), recorded_by: u64) -> Option<String> {
    let human = crate::clock::utc_iso8601;
    if ts == UNDEF_TS {
        return Some("its receive time and event time are both undefined".into());
    }
    let why = match end {
        Some(end) if ts < start || ts > end => {
            format!("is outside the span the file's metadata gives its data ({} to {})", human(start), human(end))
        }
        None if ts > recorded_by => format!(
            "is more than a day after this replay began ({}): no record of a file could have been \
             received then",
            human(recorded_by.saturating_sub(DAY_NS))
        ),
        _ => return None,
    };
    Some(format!(
        "its receive time {} ({ts} ns) {why}: the record is corrupted (a .dbn.zst written without a zstd \
         checksum cannot tell otherwise)",
        human(ts)
    ))
}

/// One day, ns: how far a live recording's receive times may be ahead of this host's clock.
const DAY_NS: u64 = 86_400_000_000_000;

/// Is this record type replayed? Market data is; the stream's own control
/// records (errors, system messages, live symbol mappings) and types the
/// `dbn` crate does not know are skipped and counted.
pub fn is_replayed(rtype: u8) -> bool {
    !matches!(rtype, rtype::ERROR | rtype::SYSTEM | rtype::SYMBOL_MAPPING) && dbn::RType::try_from(rtype).is_ok()
}

/// The most compressed bytes a `.dbn.zst`'s decompressor has read past the record taken last:
/// the zstd reader's input buffer and a block it may hold decompressed (each
/// `ZSTD_DStreamInSize`, a block's most, 128 KiB and 3 bytes), and the `dbn` decoder's own
/// buffer of decompressed bytes (64 KiB, no more compressed: zstd stores a block it cannot
/// shrink as it is, 3 bytes of header more).
pub const ZSTD_READ_AHEAD: u64 = 2 * ((128 << 10) + 3) + (64 << 10) + 3;

/// One open DBN file, one record ahead.
struct DbnFile {
    path: PathBuf,
    compressed: bool,
    /// The file's DBN version and `ts_out`: what the length of each record type is.
    version: u8,
    ts_out: bool,
    /// The span its metadata says its data is in (`start`, and `end` when it says one), ns
    /// since the epoch: a record's receive time outside it is damage ([`outside_span`]).
    span: (u64, Option<u64>),
    /// A day past the realtime clock when the file was opened: a live recording's (no `end`)
    /// latest possible receive time ([`outside_span`]).
    recorded_by: u64,
    decoder: Decoder<Counting>,
    /// Metadata plus records taken so far, in bytes.
    consumed: u64,
    /// The file's size in bytes (compressed for zstd), and the compressed bytes its
    /// decompressor read (zstd only; a plain file's position is `consumed`).
    size: u64,
    compressed_read: Option<Arc<AtomicU64>>,
    records: u64,
    next: Vec<u8>,
    next_ts: u64,
    has_next: bool,
    /// Replayed records received before the one ahead of them in this file (DBN files are
    /// written in receive-time order), and what the first was: the file is corrupted, or was
    /// not written in order. Each is sent as it is.
    backwards: u64,
    first_backwards: Option<String>,
}

impl DbnFile {
    fn open(path: &Path, kind: FileKind) -> Result<(Self, Metadata), DbnSourceError> {
        let open_err = |cause: String| DbnSourceError::Open { path: path.to_path_buf(), cause };
        let file = crate::infile::open(path, "a replay file is a capture or a DBN file")
            .map_err(|e| open_err(e.to_string()))?;
        let compressed = kind == FileKind::DbnZstd;
        let size = file.metadata().map_err(|e| open_err(format!("reading its size: {e}")))?.len();
        // A plain file's size bounds its metadata; a compressed one's decompressed size is unknown.
        let file_size = (!compressed).then_some(size);
        let compressed_read = compressed.then(|| Arc::new(AtomicU64::new(0)));
        let mut inner: Box<dyn Read + Send> = if let Some(read) = &compressed_read {
            let file = CountingFile { file, read: read.clone() };
            Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| open_err(format!("starting zstd: {e}")))?)
        } else {
            Box::new(BufReader::with_capacity(1 << 16, file))
        };
        // The `dbn` crate sizes a buffer from the metadata length before reading it (0xFFFFFFF0
        // in a 5.7 KB file was a 4 GiB allocation and an abort): the prelude and metadata are
        // read here first, as far as their bytes exist, and handed on ahead of the rest.
        let head = read_metadata(&mut inner, file_size, compressed).map_err(open_err)?;
        let inner: Box<dyn Read + Send> = Box::new(Prefixed { head, at: 0, rest: inner });
        let reader = Counting { inner, read: 0, head: [0; 8], error: None };
        let decoder = Decoder::with_upgrade_policy(reader, VersionUpgradePolicy::AsIs)
            .map_err(|e| open_err(format!("not a readable DBN file: {}", dbn_error_text(&e))))?;
        let metadata = decoder.metadata().clone();
        let (version, ts_out) = (metadata.version, metadata.ts_out);
        let span = (metadata.start, DbnFile::end_ns(&metadata));
        let head = decoder.get_ref().head;
        let consumed = 8 + u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
        let f = DbnFile {
            path: path.to_path_buf(),
            compressed,
            version,
            ts_out,
            span,
            recorded_by: crate::clock::realtime_ns().saturating_add(DAY_NS),
            decoder,
            consumed,
            size,
            compressed_read,
            records: 0,
            next: Vec::with_capacity(dbn::MAX_RECORD_LEN),
            next_ts: 0,
            has_next: false,
            backwards: 0,
            first_backwards: None,
        };
        Ok((f, metadata))
    }

    /// Bytes of the file read so far, of its `size`: a plain file's metadata
    /// and the records taken (one ahead of the merge), a `.dbn.zst`'s compressed bytes its
    /// decompressor read (a buffer ahead of the records).
    #[inline]
    fn bytes_read(&self) -> u64 {
        match &self.compressed_read {
            Some(read) => read.load(Relaxed).min(self.size),
            None => self.consumed.min(self.size),
        }
    }

    /// The market time its metadata says the data ends at, if it says one.
    fn end_ns(meta: &Metadata) -> Option<u64> {
        meta.end.map(|e| e.get()).filter(|e| *e != UNDEF_TS)
    }

    fn damaged(&self, reason: String) -> DbnSourceError {
        DbnSourceError::Damaged {
            path: self.path.clone(),
            offset: self.consumed,
            compressed: self.compressed,
            reason,
            records: self.records,
        }
    }

    /// The record just taken (`next`, received at `next_ts`) is received before the replayed
    /// record ahead of it (at `ahead_ts`): counted, and the first described.
    #[cold]
    fn went_back(&mut self, ahead_ts: u64) {
        self.backwards += 1;
        if self.first_backwards.is_none() {
            let ts = self.next_ts;
            self.first_backwards = Some(format!(
                "{}: record {} (byte {}{}) is received at {} ({ts} ns), {} before the record ahead of it",
                self.path.display(),
                self.records,
                self.consumed - self.next.len() as u64,
                if self.compressed { " of the decompressed stream" } else { "" },
                crate::clock::utc_iso8601(ts),
                crate::diag::human_ns(ahead_ts - ts),
            ));
        }
    }

    /// Load the next replayed record; skipped types are counted in `skipped`, and the symbols
    /// that symbol mapping records (skipped too) give are added to `symbols`.
    /// At the end `has_next` is false, with an error when the file was damaged.
    fn advance(&mut self, skipped: &mut BTreeMap<u8, u64>, symbols: &mut Symbols) -> Result<(), DbnSourceError> {
        self.has_next = false;
        loop {
            let rec = match self.decoder.decode_ref() {
                Ok(Some(rec)) => rec,
                Ok(None) => {
                    let c = self.decoder.get_ref();
                    if let Some(e) = &c.error {
                        return Err(self.damaged(e.clone()));
                    }
                    if c.read > self.consumed {
                        let partial = c.read - self.consumed;
                        return Err(self.damaged(format!("truncated: {partial} bytes of a partial record at the end")));
                    }
                    return Ok(());
                }
                Err(e) => return Err(self.damaged(dbn_error_text(&e))),
            };
            let bytes: &[u8] = rec.as_ref();
            let rt = rec.header().rtype;
            // The decoder framed the record by its length byte: a length wrong for its type
            // (0xff made a 1020-byte MBO that was sent) is damage here, at the record's start.
            if let Some(why) = wrong_length(self.version, self.ts_out, rt, bytes.len()) {
                return Err(self.damaged(why));
            }
            if !is_replayed(rt) {
                if rt == rtype::SYMBOL_MAPPING {
                    let named = match self.version {
                        1 => mapping_of::<dbn::v1::SymbolMappingMsg>(&rec),
                        _ => mapping_of::<dbn::v2::SymbolMappingMsg>(&rec),
                    };
                    if let Some((id, from, to, symbol)) = named {
                        symbols.add(id, from, to, &symbol);
                    }
                }
                self.consumed += bytes.len() as u64;
                self.records += 1;
                *skipped.entry(rt).or_default() += 1;
                continue;
            }
            let ts = index_ts(bytes);
            // zstd without a checksum hands corrupted bytes on as data: a receive time outside
            // the file's own span is such damage (and a paced replay would wait for it for years).
            if let Some(why) = outside_span(ts, self.span, self.recorded_by) {
                return Err(self.damaged(why));
            }
            let ahead_ts = self.next_ts;
            self.consumed += bytes.len() as u64;
            self.records += 1;
            self.next_ts = ts;
            self.next.clear();
            self.next.extend_from_slice(bytes);
            self.has_next = true;
            if ts < ahead_ts {
                self.went_back(ahead_ts);
            }
            return Ok(());
        }
    }
}

/// A record of the merged stream.
#[derive(Debug, Clone, Copy)]
pub struct DbnRecord<'a> {
    /// The instrument's symbol when the record was received, from the files' symbology (the
    /// metadata's mapping intervals, a live recording's symbol mapping records), or its id in
    /// decimal when they name none.
    pub topic: &'a [u8],
    /// Receive time (`ts_recv`, else `ts_event`), ns since the epoch.
    pub ts_recv_ns: u64,
    pub instrument_id: u32,
    /// The record's bytes as in the file.
    pub bytes: &'a [u8],
}

/// Several DBN files merged in receive-time order (ties: the earlier file on
/// the command line first; within a file, file order). Damage in one file
/// ends that file; the others go on, and [`DbnMerge::damage`] reports it.
pub struct DbnMerge {
    files: Vec<DbnFile>,
    /// The latest `end` of the files' metadata, when every file has one.
    end_ns: Option<u64>,
    symbols: Symbols,
    refill: Option<usize>,
    damage: Vec<DbnSourceError>,
    skipped: BTreeMap<u8, u64>,
}

/// Metadata for writing a DBN file of `schema` whose records carry the
/// instrument ids of `symbols` (raw symbol, id), mapped for one day from
/// `start_ns` as Databento maps `stype_out = instrument_id` (for fixtures
/// and generated feeds).
pub fn symbology_metadata(dataset: &str, schema: dbn::Schema, start_ns: u64, symbols: &[(&str, u32)]) -> Metadata {
    let day =
        time::OffsetDateTime::from_unix_timestamp_nanos(start_ns as i128).map(|t| t.date()).unwrap_or(time::Date::MIN);
    let next = day.next_day().unwrap_or(day);
    Metadata::builder()
        .dataset(dataset.to_string())
        .schema(Some(schema))
        .start(start_ns)
        .stype_in(Some(dbn::SType::RawSymbol))
        .stype_out(dbn::SType::InstrumentId)
        .mappings(
            symbols
                .iter()
                .map(|(s, id)| dbn::SymbolMapping {
                    raw_symbol: s.to_string(),
                    intervals: vec![dbn::MappingInterval { start_date: day, end_date: next, symbol: id.to_string() }],
                })
                .collect(),
        )
        .build()
}

/// One symbol of an instrument for a span of receive times, `[from_ns, to_ns)`.
#[derive(Debug, Clone)]
struct Named {
    from_ns: u64,
    to_ns: u64,
    topic: Box<[u8]>,
}

impl Named {
    #[inline]
    fn covers(&self, ts: u64) -> bool {
        self.from_ns <= ts && ts < self.to_ns
    }
}

/// Instrument id → topic by receive time, from the files' symbology: the metadata's mapping
/// intervals (UTC dates: an id may be one symbol on one day and another the next, and a symbol
/// another id) and a live recording's symbol mapping records, which name the instruments as the
/// stream goes (its metadata maps none); a later record's interval wins where they overlap. A
/// record's topic is the symbol whose interval holds its receive time; outside every interval of
/// its id, the symbol of the nearest one before it (else after it); with none, the id in decimal.
/// Per id, the answer is kept with the span of times it holds for (no interval begins or ends
/// inside it), so a record costs a lookup and two comparisons.
///
/// An id keeps at most [`MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT`] intervals, and all ids together
/// [`MAX_SYMBOL_MAPPINGS`] (a mapping that only repeats or extends its id's last one, same
/// symbol and touching it, extends that one and counts for none): the later ones are dropped
/// and counted ([`Symbols::dropped`]), so a file with endless mapping records, for one id or for
/// ever new ones, holds bounded memory and a lookup outside the current span scans a bounded
/// list. Lookups answer from the intervals kept. The answers kept per id are a cache of at most
/// [`NAMED_IDS_CACHED`] ids, emptied when full, so a file of ever new ids is bounded too.
#[derive(Debug)]
struct Symbols {
    intervals: HashMap<u32, Vec<Named>>,
    current: HashMap<u32, Named>,
    /// Intervals held, over all ids.
    held: usize,
    /// Mappings dropped over a cap, and the first cap met.
    dropped: u64,
    first_full: Option<MappingsFull>,
    limits: SymbolLimits,
}

/// The caps of [`Symbols`] (the constants; smaller in tests).
#[derive(Debug, Clone, Copy)]
struct SymbolLimits {
    per_instrument: usize,
    in_all: usize,
    ids_cached: usize,
}

impl Default for Symbols {
    fn default() -> Self {
        let limits = SymbolLimits {
            per_instrument: MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT,
            in_all: MAX_SYMBOL_MAPPINGS,
            ids_cached: NAMED_IDS_CACHED,
        };
        Symbols::with_limits(limits)
    }
}

/// The first cap a dropped symbol mapping met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingsFull {
    /// This instrument id had [`MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT`] mappings.
    Instrument(u32),
    /// The files' ids had [`MAX_SYMBOL_MAPPINGS`] mappings in all.
    InAll,
}

impl MappingsFull {
    /// What was full, for the line that says the first drop: `instrument 7 has 4096 symbol
    /// mappings (the most kept per instrument id)`.
    pub fn text(self) -> String {
        match self {
            MappingsFull::Instrument(id) => format!(
                "instrument {id} has {MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT} symbol mappings (the most kept per \
                 instrument id)"
            ),
            MappingsFull::InAll => {
                format!("the files' instrument ids have {MAX_SYMBOL_MAPPINGS} symbol mappings (the most kept in all)")
            }
        }
    }
}

/// The caps, as the lines counting the drops say them: `over 4096 per instrument id or 16777216
/// in all`.
pub fn symbol_mapping_caps() -> String {
    format!("over {MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT} per instrument id or {MAX_SYMBOL_MAPPINGS} in all")
}

/// The most symbol mappings (metadata intervals and live symbol mapping records) mdsub keeps
/// per instrument id of the files replayed: 4096, some eleven years of daily intervals. A
/// mapping that repeats or extends the id's last one with the same symbol counts for none;
/// past the cap the later ones are dropped and counted (`symbol_mappings_dropped`, said once),
/// and the id's records are named from the ones kept.
pub const MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT: usize = 4096;

/// The most symbol mappings mdsub keeps over all instrument ids of the files replayed:
/// 16 777 216 (some 1 GiB), a week of daily intervals of every OPRA option. Past it, later
/// mappings are dropped and counted as over the per-id cap are.
pub const MAX_SYMBOL_MAPPINGS: usize = 1 << 24;

/// The most instrument ids whose current topic (with the span it holds for) is kept for the next
/// record: 4 194 304; past it the cache is emptied and filled again as records come.
pub const NAMED_IDS_CACHED: usize = 1 << 22;

impl Symbols {
    fn with_limits(limits: SymbolLimits) -> Self {
        Symbols { intervals: HashMap::new(), current: HashMap::new(), held: 0, dropped: 0, first_full: None, limits }
    }

    /// Name instrument `id` `symbol` for `[from_ns, to_ns)` (a symbol unusable as a topic is
    /// left out; one past [`MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT`] is dropped and counted).
    fn add(&mut self, id: u32, from_ns: u64, to_ns: u64, symbol: &str) {
        if !topic_ok(symbol) || from_ns >= to_ns {
            return;
        }
        let all = self.intervals.entry(id).or_default();
        let held = all.len();
        match all.last_mut() {
            // The same symbol again, from within or at the end of the last interval: the union
            // answers every time as the two would (the later wins where they overlap, and it is
            // the same symbol).
            Some(last) if *last.topic == *symbol.as_bytes() && last.from_ns <= from_ns && from_ns <= last.to_ns => {
                last.to_ns = last.to_ns.max(to_ns);
            }
            _ if held >= self.limits.per_instrument || self.held >= self.limits.in_all => {
                self.dropped += 1;
                self.first_full.get_or_insert(match held >= self.limits.per_instrument {
                    true => MappingsFull::Instrument(id),
                    false => MappingsFull::InAll,
                });
                return;
            }
            _ => {
                all.push(Named { from_ns, to_ns, topic: symbol.as_bytes().into() });
                self.held += 1;
            }
        }
        self.current.remove(&id);
    }

    /// Mappings dropped over a cap, and the first cap met.
    fn dropped(&self) -> (u64, Option<MappingsFull>) {
        (self.dropped, self.first_full)
    }

    /// The topic of instrument `id` for a record received at `ts`.
    #[inline]
    fn topic(&mut self, id: u32, ts: u64) -> &[u8] {
        use std::collections::hash_map::Entry;
        if self.current.len() >= self.limits.ids_cached {
            self.current.clear();
        }
        match self.current.entry(id) {
            Entry::Occupied(o) if o.get().covers(ts) => &o.into_mut().topic,
            Entry::Occupied(mut o) => {
                o.insert(Self::resolve(self.intervals.get(&id), id, ts));
                &o.into_mut().topic
            }
            Entry::Vacant(v) => &v.insert(Self::resolve(self.intervals.get(&id), id, ts)).topic,
        }
    }

    /// The topic for `ts` from `intervals` (see [`Symbols`]), with the span around `ts` that no
    /// interval begins or ends inside.
    #[cold]
    fn resolve(intervals: Option<&Vec<Named>>, id: u32, ts: u64) -> Named {
        let all = intervals.map_or(&[][..], Vec::as_slice);
        let (mut from_ns, mut to_ns) = (0, u64::MAX);
        for b in all.iter().flat_map(|n| [n.from_ns, n.to_ns]) {
            if b <= ts {
                from_ns = from_ns.max(b);
            } else {
                to_ns = to_ns.min(b);
            }
        }
        let holds = all.iter().rev().find(|n| n.covers(ts));
        let before = || all.iter().filter(|n| n.to_ns <= ts).max_by_key(|n| n.to_ns);
        let after = || all.iter().filter(|n| n.from_ns > ts).min_by_key(|n| n.from_ns);
        let topic = match holds.or_else(before).or_else(after) {
            Some(n) => n.topic.clone(),
            None => id.to_string().into_bytes().into(),
        };
        Named { from_ns, to_ns, topic }
    }
}

/// Midnight UTC of `date`, ns since the epoch (0 before it).
fn date_ns(date: time::Date) -> u64 {
    u64::try_from(date.midnight().assume_utc().unix_timestamp_nanos()).unwrap_or(0)
}

/// A symbol mapping record's instrument, span (`start_ts` to `end_ts`, either end open when
/// undefined) and output symbol (the instrument's own, as the `dbn` crate's live symbol map
/// takes it); `None` for a record that is not one of `T` or whose symbol is not UTF-8.
fn mapping_of<T: dbn::compat::SymbolMappingRec>(rec: &dbn::RecordRef) -> Option<(u32, u64, u64, String)> {
    let m = rec.try_get::<T>().ok()?;
    let ns = |t: Option<time::OffsetDateTime>| t.and_then(|t| u64::try_from(t.unix_timestamp_nanos()).ok());
    let (from, to) = (ns(m.start_ts()).unwrap_or(0), ns(m.end_ts()).unwrap_or(u64::MAX));
    Some((rec.header().instrument_id, from, to, m.stype_out_symbol().ok()?.to_string()))
}

/// Is `s` usable as an mdsub topic (printable ASCII, no spaces)?
fn topic_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// instrument id → symbol from a file's symbology (either direction of mapping), each for the
/// dates of its interval.
fn add_symbols(meta: &Metadata, symbols: &mut Symbols) {
    for m in &meta.mappings {
        for iv in &m.intervals {
            let (id, sym) = match (iv.symbol.parse::<u32>(), m.raw_symbol.parse::<u32>()) {
                (Ok(id), _) => (id, &m.raw_symbol),
                (_, Ok(id)) => (id, &iv.symbol),
                _ => continue,
            };
            symbols.add(id, date_ns(iv.start_date), date_ns(iv.end_date), sym);
        }
    }
}

impl DbnMerge {
    /// Open every file (each must be DBN, plain or zstd) and read its first record.
    pub fn open(paths: &[PathBuf]) -> Result<Self, DbnSourceError> {
        let mut m = DbnMerge {
            files: Vec::with_capacity(paths.len()),
            end_ns: Some(0),
            symbols: Symbols::default(),
            refill: None,
            damage: Vec::new(),
            skipped: BTreeMap::new(),
        };
        for p in paths {
            let kind = detect(p).map_err(|e| DbnSourceError::Open { path: p.clone(), cause: e.to_string() })?;
            let kind = match kind {
                Some(k @ (FileKind::Dbn | FileKind::DbnZstd)) => k,
                _ => {
                    return Err(DbnSourceError::Open {
                        path: p.clone(),
                        cause: "not a DBN file (no DBN or zstd magic)".into(),
                    })
                }
            };
            let (mut f, meta) = DbnFile::open(p, kind)?;
            add_symbols(&meta, &mut m.symbols);
            m.end_ns = m.end_ns.zip(DbnFile::end_ns(&meta)).map(|(a, b)| a.max(b));
            if let Err(e) = f.advance(&mut m.skipped, &mut m.symbols) {
                m.damage.push(e);
            }
            m.files.push(f);
        }
        Ok(m)
    }

    /// The next record in receive-time order, or None when every file is done.
    pub fn next_record(&mut self) -> Option<DbnRecord<'_>> {
        if let Some(i) = self.refill.take() {
            if let Err(e) = self.files[i].advance(&mut self.skipped, &mut self.symbols) {
                self.damage.push(e);
            }
        }
        let mut best: Option<usize> = None;
        for (i, f) in self.files.iter().enumerate() {
            if f.has_next && best.is_none_or(|b| f.next_ts < self.files[b].next_ts) {
                best = Some(i);
            }
        }
        let i = best?;
        self.refill = Some(i);
        let f = &self.files[i];
        let id = u32::from_le_bytes([f.next[4], f.next[5], f.next[6], f.next[7]]);
        let topic = self.symbols.topic(id, f.next_ts);
        Some(DbnRecord { topic, ts_recv_ns: f.next_ts, instrument_id: id, bytes: &f.next })
    }

    /// Where the files' data ends in market time: the latest `end` of their metadata (ns since
    /// the epoch), or None when a file's metadata has none (or no files were given).
    pub fn market_end_ns(&self) -> Option<u64> {
        self.end_ns.filter(|e| *e != 0)
    }

    /// The files' sizes in bytes (compressed sizes of `.dbn.zst`), as opened.
    pub fn bytes_total(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// How far [`Self::bytes_read`] may be past the record taken last: for each `.dbn.zst` with
    /// records still to come, [`ZSTD_READ_AHEAD`] (or what it read, if less); 0 for plain files
    /// and for files read to their end.
    pub fn bytes_ahead(&self) -> u64 {
        self.files.iter().filter(|f| f.compressed && f.has_next).map(|f| f.bytes_read().min(ZSTD_READ_AHEAD)).sum()
    }

    /// Bytes of the files read so far, of [`Self::bytes_total`]: of a plain file, its metadata
    /// and the records taken (each file is one record ahead of the merge); of a `.dbn.zst`, the
    /// compressed bytes its decompressor read (a buffer of some 128 KiB ahead). A sum of a
    /// field per file: no allocation, no system call.
    #[inline]
    pub fn bytes_read(&self) -> u64 {
        self.files.iter().map(DbnFile::bytes_read).sum()
    }

    /// How many files are merged.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Damage found so far (a file ends at its first damage).
    pub fn damage(&self) -> &[DbnSourceError] {
        &self.damage
    }

    /// Take the damage found so far.
    pub fn take_damage(&mut self) -> Vec<DbnSourceError> {
        std::mem::take(&mut self.damage)
    }

    /// Records received before the replayed record ahead of them in their file, in every file
    /// (DBN files are written in receive-time order: a corrupted file, or one not written in
    /// order; each was sent as it is), and the first of them described, if any.
    pub fn backwards(&self) -> (u64, Option<&str>) {
        let n = self.files.iter().map(|f| f.backwards).sum();
        (n, self.files.iter().find_map(|f| f.first_backwards.as_deref()))
    }

    /// Records skipped (not replayed), by record type.
    pub fn skipped(&self) -> &BTreeMap<u8, u64> {
        &self.skipped
    }

    /// Symbol mappings dropped so far because their instrument id had
    /// [`MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT`] already, or all ids [`MAX_SYMBOL_MAPPINGS`], and
    /// the first cap met.
    pub fn symbol_mappings_dropped(&self) -> (u64, Option<MappingsFull>) {
        self.symbols.dropped()
    }

    /// The topic of instrument `instrument_id` for a record received at `ts_ns`: its symbol from
    /// the files' symbology (see [`DbnRecord::topic`]).
    pub fn topic(&mut self, instrument_id: u32, ts_ns: u64) -> &[u8] {
        self.symbols.topic(instrument_id, ts_ns)
    }
}

/// A `dbn::Error` for a person: the crate prints its I/O errors Debug-formatted
/// (`IO error: Kind(UnexpectedEof) while decoding metadata`); this says them in words.
fn dbn_error_text(e: &dbn::Error) -> String {
    match e {
        dbn::Error::Io { source, context } if source.kind() == io::ErrorKind::UnexpectedEof => {
            format!("the file ends early while {context}")
        }
        dbn::Error::Io { source, context } => format!("{source} while {context}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbn::RecordRef;
    use dbn::{MboMsg, TradeMsg};

    /// A DBN file of `n` MBO records 1 ms apart from `t0` (zstd when `zstd`), its metadata
    /// ending at `end` when given.
    fn mbo_file(path: &Path, n: usize, t0: u64, end: Option<u64>, zstd: bool) {
        use dbn::encode::{dbn::Encoder, EncodeRecord};
        let mut meta = symbology_metadata("XNAS.ITCH", dbn::Schema::Mbo, t0, &[("AAA", 101), ("BBB", 102)]);
        meta.end = end.and_then(std::num::NonZeroU64::new);
        let records = crate::feed::mbo_synth::MboBooks::new(2, 101, 7).feed(n, t0, 1_000_000);
        let f = io::BufWriter::new(std::fs::File::create(path).expect("create"));
        if zstd {
            let mut e = Encoder::with_zstd(f, &meta).expect("encoder");
            records.iter().for_each(|r| e.encode_record(r).expect("encode"));
            e.flush().expect("flush");
        } else {
            let mut e = Encoder::new(f, &meta).expect("encoder");
            records.iter().for_each(|r| e.encode_record(r).expect("encode"));
            e.flush().expect("flush");
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mdsub-dbn-source-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    /// The fractions a progress display shows while the merge is read to its end, by bytes.
    fn byte_fractions(merge: &mut DbnMerge) -> Vec<f64> {
        use crate::replay::progress::{estimate, Extent};
        let total = merge.bytes_total();
        let at = |m: &DbnMerge| {
            estimate(Extent::Bytes { read: m.bytes_read(), from: 0, total }, 1.0, None).map(|e| e.fraction)
        };
        let mut seen = vec![at(merge).expect("a size")];
        while merge.next_record().is_some() {
            seen.push(at(merge).expect("a size"));
        }
        seen
    }

    #[test]
    fn the_bytes_read_of_dbn_files_go_from_their_start_to_their_sizes() {
        let d = temp("bytes");
        let t0 = 1_700_000_000_000_000_000;
        let (plain, zst) = (d.join("a.dbn"), d.join("b.dbn.zst"));
        mbo_file(&plain, 2000, t0, None, false);
        mbo_file(&zst, 50, t0, Some(t0 + 3_600_000_000_000), true);
        let size = |p: &Path| std::fs::metadata(p).expect("stat").len();
        // A plain file: its metadata and one record ahead read at open, then record by record.
        let mut m = DbnMerge::open(std::slice::from_ref(&plain)).expect("open");
        assert_eq!(m.market_end_ns(), None, "no end in its metadata");
        assert_eq!(m.bytes_total(), size(&plain));
        let seen = byte_fractions(&mut m);
        assert_eq!(seen.len(), 2001);
        assert!(seen[0] > 0.0 && seen[0] < 0.01, "at open: {}", seen[0]);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "never backwards");
        assert!(seen[1000] > 0.4 && seen[1000] < 0.6, "half way: {}", seen[1000]);
        assert_eq!(seen.last(), Some(&1.0), "whole at the end");
        assert_eq!(m.bytes_read(), size(&plain));
        // A compressed file: its compressed bytes, of its compressed size, whole at the end.
        let mut m = DbnMerge::open(std::slice::from_ref(&zst)).expect("open");
        assert_eq!(m.market_end_ns(), Some(t0 + 3_600_000_000_000));
        assert_eq!(m.bytes_total(), size(&zst));
        assert_eq!(byte_fractions(&mut m).last(), Some(&1.0));
        // Merged: the sizes of both; an end is known only when every file gives one.
        let mut m = DbnMerge::open(&[plain.clone(), zst.clone()]).expect("open");
        assert_eq!((m.market_end_ns(), m.bytes_total()), (None, size(&plain) + size(&zst)));
        assert_eq!(byte_fractions(&mut m).last(), Some(&1.0));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn merged_files_end_at_the_latest_end_of_their_metadata() {
        let d = temp("end");
        let t0 = 1_700_000_000_000_000_000;
        let (a, b) = (d.join("a.dbn"), d.join("b.dbn"));
        mbo_file(&a, 5, t0, Some(t0 + 60_000_000_000), false);
        mbo_file(&b, 5, t0, Some(t0 + 120_000_000_000), false);
        let m = DbnMerge::open(&[a, b]).expect("open");
        assert_eq!(m.market_end_ns(), Some(t0 + 120_000_000_000));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A historical file's records lie in its metadata's span; a live recording's (no end) may
    /// come before its start (an intraday replay), and only a time after the replay's own clock
    /// (a day ahead) is damage there.
    #[test]
    fn a_live_recordings_span_is_bounded_by_the_clock_not_its_start() {
        let (start, end, by) = (1_000, 2_000, 10_000);
        assert_eq!(outside_span(1_500, (start, Some(end)), by), None);
        assert!(outside_span(999, (start, Some(end)), by).is_some_and(|w| w.contains("outside the span")));
        assert!(outside_span(2_001, (start, Some(end)), by).is_some());
        assert_eq!(outside_span(5, (start, None), by), None, "before a live file's start is no damage");
        assert_eq!(outside_span(10_000, (start, None), by), None);
        let why = outside_span(DAY_NS + 10_001, (start, None), DAY_NS + 10_000);
        assert!(why.is_some_and(|w| w.contains("more than a day after this replay began")));
        assert!(outside_span(UNDEF_TS, (start, None), by).is_some_and(|w| w.contains("undefined")));
    }

    /// A topic by receive time: the interval holding it (a later one where they overlap), else
    /// the nearest before, else after, else the id; the answer kept for a span is dropped when
    /// an interval is added.
    #[test]
    fn a_topic_is_the_symbol_of_its_time() {
        let mut s = Symbols::default();
        assert_eq!(s.topic(7, 5), b"7", "no symbology: the id");
        s.add(7, 100, 200, "AAA");
        assert_eq!(s.topic(7, 5), b"AAA", "before every interval: the first after");
        s.add(7, 200, 300, "BBB");
        s.add(7, 250, 260, "CCC");
        let at = |s: &mut Symbols, ts| String::from_utf8(s.topic(7, ts).to_vec()).expect("utf8");
        assert_eq!(
            [at(&mut s, 150), at(&mut s, 200), at(&mut s, 255), at(&mut s, 260), at(&mut s, 999)],
            ["AAA", "BBB", "CCC", "BBB", "BBB"]
        );
        assert_eq!(at(&mut s, 150), "AAA", "back again");
        s.add(7, 0, 1000, "DDD");
        assert_eq!(at(&mut s, 150), "DDD", "a later interval wins");
        s.add(8, 5, 5, "EEE");
        assert_eq!(at(&mut s, 5), "DDD");
        assert_eq!(s.topic(8, 5), b"8", "an empty interval names nothing");
    }

    /// An id keeps at most [`MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT`] intervals: the rest are
    /// dropped and counted, and the kept ones still name their times. A mapping that repeats or
    /// extends the last counts for none. Before, every mapping was kept (no bound).
    #[test]
    fn an_ids_mappings_are_capped_and_the_rest_counted() {
        let mut s = Symbols::default();
        let cap = MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT as u64;
        for i in 0..cap + 10 {
            s.add(7, i * 10, i * 10 + 10, if i % 2 == 0 { "AAA" } else { "BBB" });
            // The same mapping again, and one extending it: no new interval.
            s.add(7, i * 10, i * 10 + 10, if i % 2 == 0 { "AAA" } else { "BBB" });
            s.add(7, i * 10 + 5, i * 10 + 10, if i % 2 == 0 { "AAA" } else { "BBB" });
        }
        assert_eq!(s.intervals[&7].len(), MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT);
        // Past the cap each of the 10 later mappings is dropped three times: its repeats repeat
        // no kept interval (the last kept is mapping cap - 1), so each call is a drop, counted.
        assert_eq!(s.dropped(), (30, Some(MappingsFull::Instrument(7))));
        let at = |s: &mut Symbols, ts| String::from_utf8(s.topic(7, ts).to_vec()).expect("utf8");
        assert_eq!([at(&mut s, 5), at(&mut s, 15), at(&mut s, cap * 10 - 5)], ["AAA", "BBB", "BBB"]);
        assert_eq!(at(&mut s, cap * 10 + 15), "BBB", "past the kept ones: the nearest kept before");
        s.add(8, 0, 10, "CCC");
        assert_eq!(s.topic(8, 5), b"CCC", "another id has its own room");
        assert_eq!(s.dropped().0, 30);
    }

    /// All ids together keep at most `in_all` intervals, and the current answers of at most
    /// `ids_cached` ids (emptied when full, the answers unchanged). Before, a file naming ever
    /// new ids grew both without bound.
    #[test]
    fn all_ids_mappings_are_capped_and_the_answers_cached_bounded() {
        let limits = SymbolLimits { per_instrument: 4, in_all: 10, ids_cached: 3 };
        let mut s = Symbols::with_limits(limits);
        for id in 0..20 {
            s.add(id, 0, 10, &format!("S{id}"));
        }
        assert_eq!(s.intervals.values().map(Vec::len).sum::<usize>(), 10);
        assert_eq!(s.dropped(), (10, Some(MappingsFull::InAll)));
        s.add(3, 10, 20, "S3");
        assert_eq!(s.dropped().0, 10, "extending a kept one takes no room");
        let names: Vec<Vec<u8>> = (0..12).map(|id| s.topic(id, 5).to_vec()).collect();
        assert!(s.current.len() <= 3, "{}", s.current.len());
        assert_eq!(names[9], b"S9");
        assert_eq!(names[11], b"11", "dropped: named by its id");
        assert_eq!(s.topic(9, 15), b"S9", "after the cache was emptied, the same answer");
        let mut s = Symbols::with_limits(limits);
        for i in 0..6 {
            s.add(7, i * 10, i * 10 + 10, if i % 2 == 0 { "A" } else { "B" });
        }
        assert_eq!(s.dropped(), (2, Some(MappingsFull::Instrument(7))), "the per-id cap said first");
    }

    #[test]
    fn index_ts_reads_ts_recv_or_falls_back() {
        let mut mbo = MboMsg { ts_recv: 7, ..Default::default() };
        mbo.hd.ts_event = 5;
        let bytes = RecordRef::from(&mbo).as_ref().to_vec();
        assert_eq!(index_ts(&bytes), 7);
        let mut t = TradeMsg::default();
        t.hd.ts_event = 9;
        let bytes = RecordRef::from(&t).as_ref().to_vec();
        assert_eq!(index_ts(&bytes), 9, "undefined ts_recv falls back to ts_event");
        assert_eq!(index_ts(&[1, 2]), UNDEF_TS);
    }

    /// One length per record type and DBN version, 8 bytes more with `ts_out`; any other is
    /// said with what it should be.
    #[test]
    fn a_record_type_has_one_length_per_version() {
        use std::mem::size_of;
        assert_eq!(record_len(3, rtype::MBO, false), Some(size_of::<MboMsg>()));
        assert_eq!(record_len(1, rtype::MBO, true), Some(size_of::<MboMsg>() + 8));
        let def = |v| record_len(v, rtype::INSTRUMENT_DEF, false);
        let want = [
            size_of::<dbn::v1::InstrumentDefMsg>(),
            size_of::<dbn::v2::InstrumentDefMsg>(),
            size_of::<dbn::v3::InstrumentDefMsg>(),
        ];
        assert_eq!([def(1), def(2), def(3)], want.map(Some));
        assert!(want[0] < want[1] && want[1] < want[2], "{want:?}");
        assert_eq!(record_len(2, rtype::STATISTICS, false), Some(size_of::<dbn::v1::StatMsg>()));
        assert_eq!(record_len(3, rtype::STATISTICS, false), Some(size_of::<dbn::v3::StatMsg>()));
        assert_eq!(record_len(1, rtype::SYSTEM, false), Some(size_of::<dbn::v1::SystemMsg>()));
        assert_eq!(record_len(3, 0xEE, false), None, "a type dbn does not know has no length");
        assert_eq!(wrong_length(3, false, rtype::MBO, size_of::<MboMsg>()), None);
        assert_eq!(wrong_length(3, true, rtype::MBO, size_of::<MboMsg>() + 8), None);
        let why = wrong_length(3, false, rtype::MBO, 1020).expect("damage");
        assert_eq!(
            why,
            "its length byte 0xff (1020 bytes) is wrong for its type: mbo records (rtype 0xa0) are 56 bytes in DBN version 3"
        );
        assert!(wrong_length(2, true, rtype::MBO, 56)
            .expect("damage")
            .ends_with("64 bytes in DBN version 2 with ts_out"));
    }

    #[test]
    fn control_records_are_not_replayed() {
        assert!(is_replayed(rtype::MBO));
        assert!(is_replayed(rtype::MBP_10));
        assert!(!is_replayed(rtype::SYSTEM));
        assert!(!is_replayed(rtype::SYMBOL_MAPPING));
        assert!(!is_replayed(0xEE));
    }
}
