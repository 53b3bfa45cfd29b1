//! Espresso tap sink agent (guide, chapter 5): prints, counts or records what the proxy captured.
//!
//! Takes captured messages off the bounded channel and prints them decoded
//! (a payload that is a Databento DBN record is decoded too; a frame the wire
//! decoder refuses is shown with why), counts them per topic, and/or records
//! them to a capture file.
//!
//! What is printed and recorded is counted when it has reached stdout or the
//! file, not when it went into a buffer: a [`Tally`] under each buffer counts
//! the bytes taken, a ledger turns them into whole lines and messages.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::Receiver;
use serde_json::{json, Map, Value};

use crate::agent::{Agent, AgentError, Inbox, Step};
use crate::clock;
use crate::diag::RefusalLog;
use crate::outfile::{KeepError, OutFileError};
use crate::tap::proxy::Captured;
use crate::tap::TapError;
use crate::wire::capture::{
    earlier_capture, CaptureError, CaptureWriter, FILE_HEADER_LEN, HEADER_FILTERED, MAX_RECORD_LEN, RECORD_HEADER_LEN,
};
use crate::wire::dbn::{get, AlignedRecord};
use crate::wire::{
    decode, frame_len, split_topic, DecodeError, FrameView, Kind, OneFrame, DROP_REASON_NAMES, FLAG_FROM_CACHE,
};

/// Bytes of a foreign message shown in hex.
pub const HEX_PREVIEW_BYTES: usize = 16;
/// Most distinct topics counted in `--stats`; the rest count under `(other)`.
pub const MAX_STATS_TOPICS: usize = 10_000;
/// Stats refresh interval, ns.
pub const STATS_INTERVAL_NS: u64 = 1_000_000_000;
/// Captured items handled per `do_work`.
pub const BATCH_ITEMS: usize = 1024;
/// Longest an item waits in the sink's buffers (the recording's, stdout's) before they are
/// flushed: a quiet feed still reaches the file and the screen within it, while a busy one is
/// written a buffer at a time. Before, every step that found less than a full batch flushed:
/// 6.9k write() calls a second at 5k msg/s.
pub const FLUSH_AFTER_NS: u64 = 5_000_000;

/// What the sink shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// One line per message and per (un)subscription.
    Lines,
    /// Counts per topic, refreshed once a second.
    Stats,
    /// Nothing (record only).
    Nothing,
}

/// Counters of the sink side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapSinkReport {
    /// Messages that passed `--filter` (all without one): shown unless `--quiet`/`--stats`,
    /// recorded with `--record`.
    pub messages: u64,
    pub subscriptions: u64,
    pub unsubscriptions: u64,
    /// Frames and messages that reached the capture file, whole (a torn tail is cut off).
    pub recorded_frames: u64,
    pub recorded_messages: u64,
    pub record_errors: u64,
    /// Messages not recorded because writing the file failed: those written into the
    /// buffer that did not reach the file whole (with the holes marked among them), and every
    /// one after (recording stops), the copies the tap dropped since among them.
    pub record_lost: u64,
    /// Messages not recorded because a frame exceeds the capture format's limit.
    pub record_skipped_too_large: u64,
    /// Messages the recording's hole marks say are missing from it: copies the tap dropped
    /// (`dropped_messages`) and those too large to record, each marked where it fell. The
    /// file's end record says the same total when the tap closes it.
    pub record_missed: u64,
    /// Captured items (with `--stats`, stats blocks) whose lines reached stdout.
    pub printed: u64,
    /// Items (stats blocks) not printed because writing stdout failed (`mdsub tap | head`):
    /// those in the buffer that stdout did not take, and every one after; printing stops,
    /// forwarding and recording go on. With one line per item, `printed + unprinted = captured`.
    pub unprinted: u64,
    /// One-frame messages with a topic NUL that the wire decoder refuses (shown as `msg bad`).
    pub bad_frames: u64,
}

/// The bytes a file or pipe took from a [`Tally`], and a switch that makes every later
/// write fail (so a buffer in front of it writes nothing more, not even when dropped).
#[derive(Debug, Default)]
pub struct Taken {
    bytes: AtomicU64,
    shut: AtomicBool,
}

/// A writer that counts in [`Taken`] the bytes its inner writer took.
pub struct Tally<W> {
    inner: W,
    taken: Arc<Taken>,
}

impl<W: Write> Tally<W> {
    /// `inner`, counted in the returned [`Taken`].
    pub fn new(inner: W) -> (Self, Arc<Taken>) {
        let taken = Arc::new(Taken::default());
        (Tally { inner, taken: taken.clone() }, taken)
    }

    fn check_open(&self) -> std::io::Result<()> {
        if self.taken.shut.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("output stopped after an earlier failure"));
        }
        Ok(())
    }
}

impl<W: Write> Write for Tally<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.check_open()?;
        let n = self.inner.write(buf)?;
        self.taken.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.check_open()?;
        self.inner.flush()
    }
}

/// Units written into a buffer (a printed item, a recorded message), each by where it ends
/// in the stream, until the file or pipe under the buffer has taken the bytes that end it (its
/// [`Tally`] counts them in [`Taken`]). The printer and the recording keep one each.
#[derive(Debug)]
struct Ledger {
    /// What the output took, and the switch that stops it.
    taken: Arc<Taken>,
    /// (end offset, things in the unit: frames of a message, 1 for a printed item), oldest first.
    ends: VecDeque<(u64, u64)>,
    /// Bytes written into the buffer so far (from the stream's start).
    written: u64,
    /// Where the last unit taken whole ends.
    whole: u64,
}

/// What an output holds when it is shut ([`Ledger::shut`]).
struct Shut {
    /// Units taken whole since the last count, and the things in them.
    units: u64,
    things: u64,
    /// Units written into the buffer that the output did not take whole.
    lost: u64,
    /// Bytes the output took, and those up to the end of its last whole unit.
    taken: u64,
    whole: u64,
}

impl Ledger {
    /// `inner` counted by a [`Tally`], and the ledger of what goes through it; its first
    /// `offset` bytes are not units (a file header).
    fn over<W: Write>(inner: W, offset: u64) -> (Tally<W>, Self) {
        let (tally, taken) = Tally::new(inner);
        (tally, Ledger { taken, ends: VecDeque::new(), written: offset, whole: offset })
    }

    /// `bytes` of the unit in progress went into the buffer.
    fn wrote(&mut self, bytes: u64) {
        self.written += bytes;
    }

    /// The unit in progress is complete; it holds `things`.
    fn close(&mut self, things: u64) {
        self.ends.push_back((self.written, things));
    }

    /// Units whose last byte the output has taken: `(units, things)`, forgotten here.
    fn confirm(&mut self) -> (u64, u64) {
        let taken = self.taken.bytes.load(Ordering::Relaxed);
        let (mut units, mut things) = (0, 0);
        while let Some(&(end, n)) = self.ends.front().filter(|(end, _)| *end <= taken) {
            self.ends.pop_front();
            self.whole = end;
            units += 1;
            things += n;
        }
        (units, things)
    }

    /// Units written into the buffer and not confirmed.
    fn waiting(&self) -> u64 {
        self.ends.len() as u64
    }

    /// Writing failed: every later write to the output fails; count what it took whole and
    /// what it did not.
    fn shut(&mut self) -> Shut {
        self.taken.shut.store(true, Ordering::Relaxed);
        let (units, things) = self.confirm();
        let lost = self.waiting();
        self.ends = VecDeque::new();
        Shut { units, things, lost, taken: self.taken.bytes.load(Ordering::Relaxed), whole: self.whole }
    }
}

/// Stdout, buffered, counted by what it took: a failed write stops printing.
struct Printer {
    out: BufWriter<Tally<Box<dyn Write + Send>>>,
    ledger: Ledger,
    stopped: bool,
    printed: u64,
    unprinted: u64,
}

impl Printer {
    fn stdout() -> Self {
        // A handle of its own on fd 1, not std's line-buffered `Stdout`, so what the
        // pipe took is what the count says (std's buffer would take a tail it has not
        // written yet). Without a free descriptor, std's handle it is.
        let raw: Box<dyn Write + Send> = match std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned() {
            Ok(fd) => Box::new(File::from(fd)),
            Err(_) => Box::new(std::io::stdout()),
        };
        Printer::over(raw)
    }

    /// A printer writing to `raw`, counted by what it took.
    fn over(raw: Box<dyn Write + Send>) -> Self {
        let (tally, ledger) = Ledger::over(raw, 0);
        Printer { out: BufWriter::new(tally), ledger, stopped: false, printed: 0, unprinted: 0 }
    }

    /// Print one unit (an item's lines, a stats block), or count it as not printed.
    fn print(&mut self, unit: &[u8]) {
        if self.stopped {
            self.unprinted += 1;
            return;
        }
        match self.out.write_all(unit) {
            Ok(()) => {
                self.ledger.wrote(unit.len() as u64);
                self.ledger.close(1);
            }
            Err(e) => self.stop(&e, 1),
        }
    }

    fn flush(&mut self) {
        if self.stopped {
            return;
        }
        match self.out.flush() {
            Ok(()) => self.printed += self.ledger.confirm().0,
            Err(e) => self.stop(&e, 0),
        }
    }

    /// Count what stdout took so far without flushing (the buffer writes whenever it fills):
    /// with items always waiting there is no flush, and the ledger must not grow meanwhile.
    fn settle(&mut self) {
        if !self.stopped {
            self.printed += self.ledger.confirm().0;
        }
    }

    /// Writing failed (`current` units were being written): say it once and stop printing;
    /// what stdout did not take is counted as not printed.
    fn stop(&mut self, e: &std::io::Error, current: u64) {
        let shut = self.ledger.shut();
        self.printed += shut.units;
        let lost = shut.lost + current;
        self.unprinted += lost;
        self.stopped = true;
        crate::diag!(
            "tap: printing stopped: stdout: {e}; {} item(s) printed, the {lost} written after them were not taken \
             (counted in unprinted=, with every later one); forwarding and recording go on (Ctrl-C ends the tap)",
            self.printed
        );
    }
}

/// The `--record` file: the capture writer over a counted file, and what reached the file.
pub struct Recording {
    path: PathBuf,
    writer: CaptureWriter<BufWriter<Tally<File>>>,
    /// A second handle on the file, to cut a torn tail off.
    file: File,
    ledger: Ledger,
    /// Messages missing since the last one written: marked before the next, or at the end.
    missed: u64,
}

/// What a recording holds after writing it failed.
struct Stopped {
    /// Whole messages and their frames that reached the file and were not counted before.
    msgs: u64,
    frames: u64,
    /// Bytes of the file up to the end of its last whole message.
    whole: u64,
    /// Messages written into the buffer that did not reach the file whole.
    lost: u64,
    /// Bytes of a torn message after the last whole one, and whether cutting them off worked.
    torn: u64,
    cut: std::io::Result<()>,
}

impl Recording {
    /// Claim `path` (locked for the run, so a second tap recording it is refused; a capture an
    /// earlier tap left there kept under its start's name, [`earlier_capture`], said in the line
    /// returned; a file that is not a capture refused, left as it was) and write the capture
    /// file's header, flagged [`HEADER_FILTERED`] when `filtered` (`--filter`: the messages it
    /// leaves out are missing, so a replay must renumber what it sends).
    pub fn create(path: &Path, filtered: bool) -> Result<(Self, Option<String>), TapError> {
        let record = |error| TapError::Record { path: path.to_path_buf(), error };
        let io = |source| record(CaptureError::Io { context: "creating the capture file", source });
        let claim = |e| match e {
            OutFileError::Io { source, .. } => io(source),
            e => TapError::Claim(e),
        };
        let locked = crate::outfile::lock_all(&[("--record", path)]).map_err(claim)?.into_iter().next();
        let locked = locked.ok_or_else(|| io(std::io::Error::other("no file claimed")))?;
        let (claimed, kept) = match crate::outfile::claim_keeping(locked, "an mdsub capture", earlier_capture) {
            Ok(c) => c,
            Err(KeepError::File(e)) => return Err(claim(e)),
            Err(e) => return Err(TapError::Keep(e)),
        };
        let f = claimed.rewrite().map_err(io)?;
        let file = f.try_clone().map_err(io)?;
        let (tally, ledger) = Ledger::over(f, FILE_HEADER_LEN as u64);
        let flags = if filtered { HEADER_FILTERED } else { 0 };
        let writer = CaptureWriter::with_flags(BufWriter::with_capacity(1 << 20, tally), flags).map_err(record)?;
        Ok((Recording { path: path.to_path_buf(), writer, file, ledger, missed: 0 }, kept))
    }

    /// `n` messages that passed the tap here are not recorded: the hole is marked before the
    /// next message written, or at the end.
    fn miss(&mut self, n: u64) {
        self.missed += n;
    }

    /// Mark the hole the messages missed since the last one written leave (into the buffer,
    /// as part of what follows); returns the messages it marks.
    fn mark(&mut self, recv_ns: u64) -> Result<u64, CaptureError> {
        let n = std::mem::take(&mut self.missed);
        let bytes = self.writer.write_hole(n, recv_ns)?;
        self.ledger.wrote(bytes);
        Ok(n)
    }

    /// Write one message's frames (into the buffer), after the mark of the hole before it;
    /// returns the messages that mark says are missing.
    fn write(&mut self, frames: &[Vec<u8>], recv_ns: u64) -> Result<u64, CaptureError> {
        let marked = self.mark(recv_ns)?;
        let n = frames.len();
        for (i, f) in frames.iter().enumerate() {
            self.writer.write_frame(f, i + 1 < n, recv_ns)?;
            self.ledger.wrote((RECORD_HEADER_LEN + f.len()) as u64);
        }
        self.ledger.close(n as u64);
        Ok(marked)
    }

    /// Close the capture: mark the last hole and write the end record, flushed (the file then
    /// reads as closed, with the marks' total). Returns the messages the last mark says are
    /// missing.
    fn close(&mut self) -> Result<u64, CaptureError> {
        let now = clock::realtime_ns();
        let marked = self.mark(now)?;
        self.writer.write_end(now)?;
        Ok(marked)
    }

    /// Flush the buffer to the file; returns the messages and frames it completed.
    fn flush(&mut self) -> Result<(u64, u64), CaptureError> {
        self.writer.flush()?;
        Ok(self.settle())
    }

    /// The messages and frames the file took so far, without flushing (see [`Printer::settle`]).
    fn settle(&mut self) -> (u64, u64) {
        self.ledger.confirm()
    }

    /// Writing failed: keep what reached the file whole, cut a torn message off its end,
    /// and write nothing more.
    fn stop(mut self) -> Stopped {
        let shut = self.ledger.shut();
        let torn = shut.taken.saturating_sub(shut.whole);
        let cut = if torn > 0 { self.file.set_len(shut.whole) } else { Ok(()) };
        Stopped { msgs: shut.units, frames: shut.things, whole: shut.whole, lost: shut.lost, torn, cut }
    }
}

/// Write `bytes` as a quoted string, escaping what is not printable ASCII.
pub fn escape_into(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
}

fn hex_into(out: &mut String, bytes: &[u8]) {
    for (i, b) in bytes.iter().take(HEX_PREVIEW_BYTES).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{b:02x}");
    }
    if bytes.len() > HEX_PREVIEW_BYTES {
        out.push_str(" …");
    }
}

fn px_into(out: &mut String, px: i64) {
    if px == dbn::UNDEF_PRICE {
        out.push('-');
    } else {
        out.push_str(&dbn::pretty::fmt_px(px));
    }
}

fn char_of(c: std::ffi::c_char) -> char {
    match c as u8 {
        b @ 0x21..=0x7e => b as char,
        _ => '?',
    }
}

/// What the tap shows of one DBN record: its type and instrument; action, side, price and size
/// for MBO, MBP-1/MBP-10 and trades; the order id for MBO; the top level for MBP-1/MBP-10.
struct DbnFields {
    rtype: &'static str,
    instrument: u32,
    /// action, side, price, size
    order_fields: Option<(char, char, i64, u32)>,
    order_id: Option<u64>,
    /// bid price, bid size, ask price, ask size
    top: Option<(i64, u32, i64, u32)>,
}

fn dbn_fields(payload: &[u8]) -> Option<DbnFields> {
    let mut buf = AlignedRecord::default();
    let rec = buf.load(payload)?;
    let hd = rec.header();
    let mut f = DbnFields {
        rtype: dbn::RType::try_from(hd.rtype).map(|r| r.as_str()).unwrap_or("?"),
        instrument: hd.instrument_id,
        order_fields: None,
        order_id: None,
        top: None,
    };
    let fields = |action, side, price, size| Some((char_of(action), char_of(side), price, size));
    let top = |l: &dbn::BidAskPair| Some((l.bid_px, l.bid_sz, l.ask_px, l.ask_sz));
    if let Some(m) = get::<dbn::MboMsg>(&rec) {
        f.order_fields = fields(m.action, m.side, m.price, m.size);
        f.order_id = Some(m.order_id);
    } else if let Some(m) = get::<dbn::TradeMsg>(&rec) {
        f.order_fields = fields(m.action, m.side, m.price, m.size);
    } else if let Some(m) = get::<dbn::Mbp1Msg>(&rec) {
        f.order_fields = fields(m.action, m.side, m.price, m.size);
        f.top = top(&m.levels[0]);
    } else if let Some(m) = get::<dbn::Mbp10Msg>(&rec) {
        f.order_fields = fields(m.action, m.side, m.price, m.size);
        f.top = top(&m.levels[0]);
    }
    Some(f)
}

/// Append ` dbn=TYPE instrument=ID …` when `payload` is one DBN record:
/// action, side, price and size for MBO, MBP-1/MBP-10 (with the top level)
/// and trades; the type and instrument for any other record.
pub fn dbn_into(out: &mut String, payload: &[u8]) {
    let Some(f) = dbn_fields(payload) else { return };
    let _ = write!(out, " dbn={} instrument={}", f.rtype, f.instrument);
    if let Some((action, side, price, size)) = f.order_fields {
        let _ = write!(out, " action={action} side={side} price=");
        px_into(out, price);
        let _ = write!(out, " size={size}");
    }
    if let Some(order) = f.order_id {
        let _ = write!(out, " order={order}");
    }
    if let Some((bid_px, bid_sz, ask_px, ask_sz)) = f.top {
        out.push_str(" bid=");
        px_into(out, bid_px);
        let _ = write!(out, " x {bid_sz} ask=");
        px_into(out, ask_px);
        let _ = write!(out, " x {ask_sz}");
    }
}

/// A DBN price for JSON: the decimal text (exact, 9 places), null when undefined.
fn px_json(px: i64) -> Value {
    if px == dbn::UNDEF_PRICE {
        Value::Null
    } else {
        dbn::pretty::fmt_px(px).into()
    }
}

/// The `dbn` object of a JSON record, when `payload` is one DBN record (the fields of [`dbn_into`]).
fn dbn_json(payload: &[u8]) -> Option<Value> {
    let f = dbn_fields(payload)?;
    let mut m = Map::new();
    m.insert("rtype".into(), f.rtype.into());
    m.insert("instrument".into(), f.instrument.into());
    if let Some((action, side, price, size)) = f.order_fields {
        m.insert("action".into(), action.to_string().into());
        m.insert("side".into(), side.to_string().into());
        m.insert("price".into(), px_json(price));
        m.insert("size".into(), size.into());
    }
    if let Some(order) = f.order_id {
        m.insert("order".into(), order.into());
    }
    if let Some((bid_px, bid_sz, ask_px, ask_sz)) = f.top {
        m.insert("bid".into(), px_json(bid_px));
        m.insert("bid_size".into(), bid_sz.into());
        m.insert("ask".into(), px_json(ask_px));
        m.insert("ask_size".into(), ask_sz.into());
    }
    Some(Value::Object(m))
}

/// Bytes as text the way `--filter` takes them: printable ASCII as it is, `\\` for a
/// backslash, `\xNN` for any other byte (so a topic or prefix read from a record can be
/// given back to `--filter`).
pub fn filter_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// A captured item read once: what the sink counts, records, shows and prints of it comes
/// from here (a message's frames are decoded once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen<'a> {
    /// A subscribe (`true`) or unsubscribe, and its prefix.
    Subscription { subscribe: bool, prefix: &'a [u8] },
    /// One mdsub frame.
    Mdsub { view: FrameView<'a>, recv_ns: u64 },
    /// One frame with a topic NUL that the wire decoder refuses: the frame, its topic and why.
    Bad { frame: &'a [u8], topic: &'a [u8], why: DecodeError },
    /// An LVC answer: two or more whole mdsub frames marked FROM_CACHE, back to back.
    Answer { frames: &'a [Vec<u8>], views: Vec<FrameView<'a>>, recv_ns: u64 },
    /// Anything else: a multipart message, or one frame without a topic NUL.
    Foreign { frames: &'a [Vec<u8>] },
}

impl<'a> Seen<'a> {
    /// Read `item` (decode a message's frames).
    pub fn of(item: &'a Captured) -> Self {
        let (frames, recv_ns) = match item {
            Captured::Subscription { subscribe, prefix, .. } => {
                return Seen::Subscription { subscribe: *subscribe, prefix };
            }
            Captured::Message { frames, recv_ns, .. } => (frames, *recv_ns),
        };
        if let [only] = &frames[..] {
            return match OneFrame::of(only) {
                OneFrame::Mdsub(view) => Seen::Mdsub { view, recv_ns },
                OneFrame::Bad(why) => {
                    Seen::Bad { frame: only, topic: split_topic(only).map_or(&only[..0], |(t, _)| t), why }
                }
                OneFrame::Foreign => Seen::Foreign { frames },
            };
        }
        match lvc_answer(frames) {
            Some(views) => Seen::Answer { frames, views, recv_ns },
            None => Seen::Foreign { frames },
        }
    }

    /// The stats key of a message: the mdsub topic, or the first frame (≤ 64 bytes) of
    /// anything else; empty for a subscription.
    fn stats_key(&self) -> &'a [u8] {
        match self {
            Seen::Subscription { .. } => &[],
            Seen::Mdsub { view, .. } => view.topic,
            Seen::Bad { topic, .. } => topic,
            Seen::Answer { frames, .. } | Seen::Foreign { frames } => {
                frames.first().map_or(&[][..], |f| &f[..f.len().min(64)])
            }
        }
    }
}

/// The JSON records of a captured item (`--json`): one per line, as [`format_line`] gives
/// lines (an LVC answer is one record per cached value).
pub fn json_records(seen: &Seen<'_>) -> Vec<Value> {
    match seen {
        Seen::Subscription { subscribe, prefix } => {
            vec![json!({"type": if *subscribe { "subscribe" } else { "unsubscribe" }, "prefix": filter_text(prefix)})]
        }
        Seen::Mdsub { view, recv_ns } => vec![mdsub_json(view, *recv_ns)],
        Seen::Bad { frame, topic, why } => {
            let mut hex = String::new();
            hex_into(&mut hex, after_nul(frame));
            vec![json!({
                "type": "msg",
                "format": "bad",
                "topic": filter_text(&topic[..topic.len().min(64)]),
                "reason": DROP_REASON_NAMES[why.reason()],
                "error": why.to_string(),
                "size": frame.len(),
                "hex": hex,
            })]
        }
        Seen::Answer { views, recv_ns, .. } => views
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut r = mdsub_json(v, *recv_ns);
                r["answer"] = (i + 1).into();
                r["answer_of"] = views.len().into();
                r
            })
            .collect(),
        Seen::Foreign { frames } => {
            let (first, body) = match &frames[..] {
                [first, body, ..] => (&first[..], &body[..]),
                [only] => (&only[..], &only[..]),
                [] => (&[][..], &[][..]),
            };
            let mut hex = String::new();
            hex_into(&mut hex, body);
            vec![json!({
                "type": "msg",
                "format": "foreign",
                "topic": filter_text(&first[..first.len().min(64)]),
                "frames": frames.len(),
                "size": frames.iter().map(Vec::len).sum::<usize>(),
                "hex": hex,
            })]
        }
    }
}

/// The JSON record of a decoded mdsub frame (the fields of a `msg topic=…` line).
fn mdsub_json(v: &FrameView<'_>, recv_ns: u64) -> Value {
    let h = &v.header;
    let mut r = json!({
        "type": "msg",
        "format": "mdsub",
        "topic": filter_text(v.topic),
        "kind": kind_name(h.kind),
        "pub": h.publisher_id,
        "session": format!("{:x}", h.session_id),
        "seq": h.stream_seq,
        "topic_seq": h.topic_seq,
        "lag_us": ((recv_ns as i128 - h.send_time_ns as i128) / 1000) as i64,
        "size": frame_len(v.topic, v.payload.len()),
        "from_cache": h.flags & FLAG_FROM_CACHE != 0,
    });
    if h.kind == Kind::Data {
        if let Some(d) = dbn_json(v.payload) {
            r["dbn"] = d;
        }
    }
    r
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Data => "data",
        Kind::Heartbeat => "heartbeat",
        Kind::EndOfStream => "end",
    }
}

/// One line for a captured item (no newline; an LVC answer is one line per cached value).
pub fn format_line(out: &mut String, seen: &Seen<'_>) {
    out.clear();
    match seen {
        Seen::Subscription { subscribe, prefix } => {
            out.push_str(if *subscribe { "subscribe prefix=" } else { "unsubscribe prefix=" });
            escape_into(out, prefix);
        }
        Seen::Mdsub { view, recv_ns } => mdsub_line_into(out, view, *recv_ns),
        Seen::Bad { frame, topic, why } => {
            out.push_str("msg bad topic=");
            escape_into(out, &topic[..topic.len().min(64)]);
            let _ = write!(out, " reason={} size={} hex=", DROP_REASON_NAMES[why.reason()], frame.len());
            hex_into(out, after_nul(frame));
            let _ = write!(out, " (bad frame: {why})");
        }
        Seen::Answer { views, recv_ns, .. } => {
            // Cached mdsub frames back to back in one message (docs/LVC-TAP.md).
            for (i, v) in views.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                mdsub_line_into(out, v, *recv_ns);
                let _ = write!(out, " answer={}/{}", i + 1, views.len());
            }
        }
        Seen::Foreign { frames } => {
            let (first, rest) = match &frames[..] {
                [first, rest @ ..] => (&first[..], rest),
                [] => (&[][..], &[][..]),
            };
            out.push_str("msg foreign topic=");
            escape_into(out, &first[..first.len().min(64)]);
            let size: usize = frames.iter().map(Vec::len).sum();
            let _ = write!(out, " frames={} size={size} hex=", frames.len());
            match rest.first() {
                Some(body) => hex_into(out, body),
                None => hex_into(out, first),
            }
        }
    }
}

/// One `msg topic=…` line for a decoded mdsub frame.
fn mdsub_line_into(out: &mut String, v: &FrameView<'_>, recv_ns: u64) {
    let h = &v.header;
    let lag_us = (recv_ns as i128 - h.send_time_ns as i128) / 1000;
    let _ = write!(
        out,
        "msg topic={} kind={} pub={} session={:x} seq={} topic_seq={} lag_us={lag_us} size={}",
        v.topic_str(),
        kind_name(h.kind),
        h.publisher_id,
        h.session_id,
        h.stream_seq,
        h.topic_seq,
        frame_len(v.topic, v.payload.len())
    );
    if h.flags & FLAG_FROM_CACHE != 0 {
        out.push_str(" from_cache");
    }
    if h.kind == Kind::Data {
        dbn_into(out, v.payload);
    }
}

/// What follows a frame's topic NUL (the header, where a bad frame is wrong), or the frame.
fn after_nul(frame: &[u8]) -> &[u8] {
    split_topic(frame).map_or(frame, |(_, rest)| rest)
}

/// A multipart message's frames decoded when it is an LVC answer: two or more frames, each a
/// whole mdsub frame marked FROM_CACHE.
pub fn lvc_answer(frames: &[Vec<u8>]) -> Option<Vec<FrameView<'_>>> {
    if frames.len() < 2 {
        return None;
    }
    frames.iter().map(|f| decode(f).ok().filter(|v| v.header.flags & FLAG_FROM_CACHE != 0)).collect()
}

/// The sink agent.
pub struct TapSink {
    inbox: Inbox<Captured>,
    show: Show,
    /// `--json`: what is shown goes out as JSON records, one a line (JSON Lines).
    json: bool,
    /// The recording, until writing it fails (`report.record_errors`; later messages are then
    /// counted as lost).
    recording: Option<Recording>,
    printer: Printer,
    line: String,
    /// The unit being printed (an item's lines, a stats block).
    unit: Vec<u8>,
    stats: BTreeMap<Vec<u8>, u64>,
    stats_other: u64,
    stats_start_ns: u64,
    last_stats_ns: u64,
    /// Something went into the buffers since the last flush, and when the first of it did
    /// (monotonic ns): they are flushed [`FLUSH_AFTER_NS`] after.
    dirty: bool,
    dirty_since_ns: u64,
    report: TapSinkReport,
    /// Messages not recorded, counted by reason and said (rate-limited).
    refusals: RefusalLog,
    /// Bad frames by the wire decoder's reason, said by the same rule.
    bad_frames: RefusalLog,
    shared: Arc<Mutex<TapSinkReport>>,
    /// The proxy's count of message copies it dropped ([`crate::tap::proxy::TapHooks`]), and
    /// how many of them the messages taken said came before them: at the end, the rest fell
    /// after the last one, the recording's last hole.
    dropped_messages: Option<Arc<AtomicU64>>,
    missed_said: u64,
}

impl TapSink {
    /// With `json`, what `show` says is written as JSON records, one a line.
    pub fn new(
        rx: Receiver<Captured>,
        show: Show,
        json: bool,
        recording: Option<Recording>,
        shared: Arc<Mutex<TapSinkReport>>,
    ) -> Self {
        let now = clock::monotonic_ns();
        TapSink {
            inbox: Inbox::new(rx),
            show,
            json,
            recording,
            printer: Printer::stdout(),
            line: String::with_capacity(256),
            unit: Vec::with_capacity(256),
            stats: BTreeMap::new(),
            stats_other: 0,
            stats_start_ns: now,
            last_stats_ns: now,
            dirty: false,
            dirty_since_ns: 0,
            report: TapSinkReport::default(),
            refusals: RefusalLog::new("tap"),
            bad_frames: RefusalLog::new("tap").said_as("tap: bad frame"),
            shared,
            dropped_messages: None,
            missed_said: 0,
        }
    }

    /// Read the proxy's count of message copies it dropped at the end: those after the last
    /// message taken are the recording's last hole.
    pub fn missing_after(mut self, dropped_messages: Arc<AtomicU64>) -> Self {
        self.dropped_messages = Some(dropped_messages);
        self
    }

    /// One captured item, at `now_ns` (the monotonic clock, read once per step).
    fn handle(&mut self, item: Captured, now_ns: u64) {
        let seen = Seen::of(&item);
        match &item {
            Captured::Subscription { subscribe: true, .. } => self.report.subscriptions += 1,
            Captured::Subscription { subscribe: false, .. } => self.report.unsubscriptions += 1,
            Captured::Message { frames, recv_ns, missed_before } => {
                self.report.messages += 1;
                self.missed_said += missed_before;
                if let Seen::Bad { topic, why, .. } = &seen {
                    self.report.bad_frames += 1;
                    let detail = format_args!(
                        "topic \"{}\": {why}: forwarded as it is (an mdsub engine drops it; counted in bad_frames=)",
                        topic.escape_ascii()
                    );
                    self.bad_frames.refuse(DROP_REASON_NAMES[why.reason()], &detail, now_ns);
                }
                self.record(frames, *recv_ns, *missed_before, now_ns);
                if self.show == Show::Stats {
                    let key = seen.stats_key();
                    if let Some(c) = self.stats.get_mut(key) {
                        *c += 1;
                    } else if self.stats.len() < MAX_STATS_TOPICS {
                        self.stats.insert(key.to_vec(), 1);
                    } else {
                        self.stats_other += 1;
                    }
                }
            }
        }
        if self.show == Show::Lines {
            self.unit.clear();
            if self.json {
                for record in json_records(&seen) {
                    // Into a Vec: only a serializer error could fail, and a Value has none.
                    let _ = serde_json::to_writer(&mut self.unit, &record);
                    self.unit.push(b'\n');
                }
            } else {
                format_line(&mut self.line, &seen);
                self.unit.extend_from_slice(self.line.as_bytes());
                self.unit.push(b'\n');
            }
            self.printer.print(&self.unit);
        }
        if !self.dirty {
            self.dirty = true;
            self.dirty_since_ns = now_ns;
        }
    }

    /// Whether what waits in the buffers is due to be flushed at `now_ns`.
    fn flush_due(&self, now_ns: u64) -> bool {
        self.dirty && now_ns.saturating_sub(self.dirty_since_ns) >= FLUSH_AFTER_NS
    }

    /// The start of every step, with or without traffic (the sink steps after every idle
    /// wait): refusals counted since their last line are summarised when the interval is up,
    /// even when no more traffic comes to say them.
    fn tick(&mut self, now_ns: u64) {
        self.refusals.tick(now_ns);
        self.bad_frames.tick(now_ns);
    }

    /// Record a message that passed the filter (or count why not), after the hole the
    /// `missed_before` messages the tap dropped before it leave.
    fn record(&mut self, frames: &[Vec<u8>], recv_ns: u64, missed_before: u64, now_ns: u64) {
        let Some(r) = self.recording.as_mut() else {
            // No recording: none asked for, or its writing failed and stopped it (then this
            // message and the copies dropped before it are lost with it).
            if self.report.record_errors > 0 {
                self.report.record_lost += 1 + missed_before;
            }
            return;
        };
        r.miss(missed_before);
        if !frames.iter().all(|f| f.len() <= MAX_RECORD_LEN as usize) {
            r.miss(1);
            self.report.record_skipped_too_large += 1;
            let detail =
                format_args!("a frame over the capture format's {MAX_RECORD_LEN}-byte record limit is not recorded");
            self.refusals.refuse("too_large_to_record", &detail, now_ns);
        } else {
            // The hole before it is marked as part of it: a failed write loses both.
            let hole = r.missed;
            match r.write(frames, recv_ns) {
                Ok(marked) => self.report.record_missed += marked,
                Err(e) => self.stop_recording(&e, 1 + hole),
            }
        }
    }

    /// Writing the recording failed (`current` messages were being written): keep what
    /// reached the file whole, count the rest as lost, say it once.
    fn stop_recording(&mut self, e: &CaptureError, current: u64) {
        let Some(r) = self.recording.take() else { return };
        let path = r.path.clone();
        let s = r.stop();
        self.report.record_errors += 1;
        self.report.recorded_messages += s.msgs;
        self.report.recorded_frames += s.frames;
        let lost = s.lost + current;
        self.report.record_lost += lost;
        let tail = match (&s.cut, s.torn) {
            (_, 0) => String::new(),
            (Ok(()), torn) => format!(", a torn message's {torn} bytes after them cut off"),
            (Err(cut), torn) => format!(", then {torn} bytes of a torn message (cutting them off failed: {cut})"),
        };
        crate::diag!(
            "tap: recording stopped: {e}; {} holds {} whole messages ({} frames, {} bytes){tail}; the {lost} \
             written after them and every later one are not recorded (counted in record_lost=); forwarding goes on",
            path.display(),
            self.report.recorded_messages,
            self.report.recorded_frames,
            s.whole
        );
    }

    /// The end: mark the copies the proxy dropped after the last message taken, and close the
    /// capture with its end record.
    fn close_recording(&mut self) {
        let dropped = self.dropped_messages.as_ref().map_or(0, |d| d.load(Ordering::Acquire));
        let last_hole = dropped.saturating_sub(self.missed_said);
        let Some(r) = self.recording.as_mut() else {
            // Its writing failed and stopped it: the copies dropped since are lost with it.
            if self.report.record_errors > 0 {
                self.report.record_lost += last_hole;
                self.publish();
            }
            return;
        };
        r.miss(last_hole);
        let hole = r.missed;
        match r.close() {
            Ok(marked) => {
                self.report.record_missed += marked;
                let (msgs, frames) = r.settle();
                self.report.recorded_messages += msgs;
                self.report.recorded_frames += frames;
            }
            Err(e) => self.stop_recording(&e, hole),
        }
        self.publish();
    }

    fn print_stats(&mut self, now_ns: u64) {
        let elapsed_s = now_ns.saturating_sub(self.stats_start_ns) as f64 / 1e9;
        let total: u64 = self.stats.values().sum::<u64>() + self.stats_other;
        self.unit.clear();
        if self.json {
            let counts: Map<String, Value> =
                self.stats.iter().map(|(topic, count)| (filter_text(topic), Value::from(*count))).collect();
            let record = json!({
                "type": "stats",
                "elapsed_s": (elapsed_s * 10.0).round() / 10.0,
                "topics": self.stats.len(),
                "messages": total,
                "subscriptions": self.report.subscriptions,
                "unsubscriptions": self.report.unsubscriptions,
                "counts": counts,
                "other": self.stats_other,
            });
            // Into a Vec: only a serializer error could fail, and a Value has none.
            let _ = serde_json::to_writer(&mut self.unit, &record);
            self.unit.push(b'\n');
        } else {
            let _ = writeln!(
                self.unit,
                "stats elapsed_s={elapsed_s:.1} topics={} messages={total} subscriptions={} unsubscriptions={}",
                self.stats.len(),
                self.report.subscriptions,
                self.report.unsubscriptions
            );
            for (topic, count) in &self.stats {
                self.line.clear();
                escape_into(&mut self.line, topic);
                let _ = writeln!(self.unit, "  {} {count}", self.line);
            }
            if self.stats_other > 0 {
                let _ = writeln!(self.unit, "  (other) {}", self.stats_other);
            }
        }
        self.printer.print(&self.unit);
        self.printer.flush();
    }

    fn flush(&mut self) {
        if self.dirty {
            // The recording first: a terminal that blocks (a pager, Ctrl-S)
            // must not hold back what is already captured.
            if let Some(r) = self.recording.as_mut() {
                match r.flush() {
                    Ok((msgs, frames)) => {
                        self.report.recorded_messages += msgs;
                        self.report.recorded_frames += frames;
                    }
                    Err(e) => self.stop_recording(&e, 0),
                }
            }
            self.printer.flush();
            self.dirty = false;
        }
        self.publish();
    }

    /// Between flushes (what waits in the buffers is younger than [`FLUSH_AFTER_NS`]; a full
    /// buffer writes itself): count what the file and stdout took so far, which keeps their
    /// ledgers as short as their buffers and the shared counters current under a feed faster
    /// than the output.
    fn settle(&mut self) {
        if let Some(r) = self.recording.as_mut() {
            let (msgs, frames) = r.settle();
            self.report.recorded_messages += msgs;
            self.report.recorded_frames += frames;
        }
        self.printer.settle();
        self.publish();
    }

    /// Put this sink's counters where the tap's report reads them.
    fn publish(&mut self) {
        self.report.printed = self.printer.printed;
        self.report.unprinted = self.printer.unprinted;
        if let Ok(mut s) = self.shared.lock() {
            *s = self.report;
        }
    }
}

impl Agent for TapSink {
    fn role(&self) -> &str {
        "tap-sink"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let now = clock::monotonic_ns();
        self.tick(now);
        let mut done = 0;
        while done < BATCH_ITEMS {
            let Some(item) = self.inbox.next() else { break };
            self.handle(item, now);
            done += 1;
        }
        if self.show == Show::Stats && now.saturating_sub(self.last_stats_ns) >= STATS_INTERVAL_NS {
            self.last_stats_ns = now;
            self.print_stats(now);
        }
        // Flushed when the oldest item waiting is FLUSH_AFTER_NS old, not at every step that
        // found the queue empty; the end flushes in on_close.
        if self.flush_due(now) {
            self.flush();
        } else {
            self.settle();
        }
        if self.inbox.is_closed() {
            return Ok(Step::Finished(done));
        }
        Ok(Step::Worked(done))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        // Wake for the flush at the latest (a blocking idle strategy waits up to 100 ms).
        let timeout = if self.dirty {
            let due = self.dirty_since_ns.saturating_add(FLUSH_AFTER_NS);
            timeout.min(Duration::from_nanos(due.saturating_sub(clock::monotonic_ns())))
        } else {
            timeout
        };
        self.inbox.wait(timeout);
    }

    fn on_close(&mut self) {
        let now = clock::monotonic_ns();
        while let Some(item) = self.inbox.next() {
            self.handle(item, now);
        }
        if self.show == Show::Stats {
            self.print_stats(now);
        }
        self.dirty = true;
        self.flush();
        self.close_recording();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode, Header};

    /// A data frame's header as an LVC re-sends it (FROM_CACHE), sent at 1 ms.
    fn cached_header() -> Header {
        Header {
            kind: Kind::Data,
            flags: FLAG_FROM_CACHE,
            publisher_id: 3,
            session_id: 0xab,
            stream_seq: 42,
            topic_seq: 7,
            send_time_ns: 1_000_000,
        }
    }

    #[test]
    fn lines_for_mdsub_foreign_and_subscriptions() {
        let h = cached_header();
        let mut line = String::new();
        let m = Captured::Message { frames: vec![encode(b"ESH6", &h, b"xy")], recv_ns: 3_000_000, missed_before: 0 };
        format_line(&mut line, &Seen::of(&m));
        assert_eq!(line, "msg topic=ESH6 kind=data pub=3 session=ab seq=42 topic_seq=7 lag_us=2000 size=55 from_cache");
        let f =
            Captured::Message { frames: vec![b"001".to_vec(), b"Save Roger".to_vec()], recv_ns: 0, missed_before: 0 };
        format_line(&mut line, &Seen::of(&f));
        assert_eq!(line, "msg foreign topic=\"001\" frames=2 size=13 hex=53 61 76 65 20 52 6f 67 65 72");
        let s = Captured::Subscription { subscribe: true, prefix: b"ESH6\0".to_vec(), recv_ns: 0 };
        format_line(&mut line, &Seen::of(&s));
        assert_eq!(line, "subscribe prefix=\"ESH6\\x00\"");
        let empty = Captured::Message { frames: vec![], recv_ns: 0, missed_before: 0 };
        format_line(&mut line, &Seen::of(&empty));
        assert!(line.starts_with("msg foreign"), "{line}");
        // An LVC answer: cached mdsub frames back to back, one line each.
        let two = vec![encode(b"ESH6", &h, b"xy"), encode(b"ESM6", &h, b"xy")];
        assert!(lvc_answer(&two).is_some());
        format_line(&mut line, &Seen::of(&Captured::Message { frames: two, recv_ns: 3_000_000, missed_before: 0 }));
        let lines: Vec<&str> = line.lines().collect();
        assert_eq!(lines.len(), 2, "{line}");
        assert!(lines[0].starts_with("msg topic=ESH6 ") && lines[0].ends_with("from_cache answer=1/2"), "{line}");
        assert!(lines[1].starts_with("msg topic=ESM6 ") && lines[1].ends_with("from_cache answer=2/2"), "{line}");
        // Live mdsub frames (not FROM_CACHE) in one message are not an answer.
        let live = Header { flags: 0, ..h };
        assert!(lvc_answer(&[encode(b"ESH6", &live, b"xy"), encode(b"ESM6", &live, b"xy")]).is_none());
    }

    #[test]
    fn json_records_carry_the_fields_of_the_lines() {
        let h = cached_header();
        let mut mbo = dbn::MboMsg { order_id: 17, price: 4_500_250_000_000, size: 3, ..Default::default() };
        mbo.action = b'A' as std::ffi::c_char;
        mbo.side = b'B' as std::ffi::c_char;
        mbo.hd.instrument_id = 101;
        let payload = dbn::RecordRef::from(&mbo).as_ref().to_vec();
        let answer = vec![encode(b"ESH6", &h, &payload), encode(b"ESM6", &h, b"xy")];
        let r = json_records(&Seen::of(&Captured::Message { frames: answer, recv_ns: 3_000_000, missed_before: 0 }));
        assert_eq!(r.len(), 2, "an LVC answer: one record per value");
        assert_eq!(
            r[0],
            json!({"type": "msg", "format": "mdsub", "topic": "ESH6", "kind": "data", "pub": 3, "session": "ab",
                   "seq": 42, "topic_seq": 7, "lag_us": 2000, "size": 109, "from_cache": true,
                   "answer": 1, "answer_of": 2,
                   "dbn": {"rtype": "mbo", "instrument": 101, "action": "A", "side": "B",
                           "price": "4500.250000000", "size": 3, "order": 17}})
        );
        assert_eq!((&r[1]["topic"], &r[1]["answer"], r[1].get("dbn")), (&json!("ESM6"), &json!(2), None));
        // Prefixes and foreign topics as --filter takes them: they parse back to the bytes.
        let prefix = b"ES\\H6\0\xff\"".to_vec();
        let r =
            json_records(&Seen::of(&Captured::Subscription { subscribe: false, prefix: prefix.clone(), recv_ns: 0 }));
        assert_eq!(r, vec![json!({"type": "unsubscribe", "prefix": "ES\\\\H6\\x00\\xff\""})]);
        let text = r[0]["prefix"].as_str().expect("text");
        assert_eq!(crate::tap::proxy::parse_prefix(text).as_deref(), Ok(&prefix[..]));
        let f = json_records(&Seen::of(&Captured::Message {
            frames: vec![b"001".to_vec(), b"Save".to_vec()],
            recv_ns: 0,
            missed_before: 0,
        }));
        assert_eq!(
            f,
            vec![
                json!({"type": "msg", "format": "foreign", "topic": "001", "frames": 2, "size": 7, "hex": "53 61 76 65"})
            ]
        );
    }

    #[test]
    fn dbn_payloads_are_decoded() {
        let h = Header {
            kind: Kind::Data,
            flags: 0,
            publisher_id: 0,
            session_id: 1,
            stream_seq: 1,
            topic_seq: 1,
            send_time_ns: 0,
        };
        let mut mbo = dbn::MboMsg {
            order_id: 17,
            price: 4_500_250_000_000,
            size: 3,
            action: b'A' as std::ffi::c_char,
            side: b'B' as std::ffi::c_char,
            ..Default::default()
        };
        mbo.hd.instrument_id = 101;
        let payload = dbn::RecordRef::from(&mbo).as_ref().to_vec();
        let mut line = String::new();
        let m = Captured::Message { frames: vec![encode(b"ESZ3", &h, &payload)], recv_ns: 0, missed_before: 0 };
        format_line(&mut line, &Seen::of(&m));
        assert!(
            line.ends_with(" dbn=mbo instrument=101 action=A side=B price=4500.250000000 size=3 order=17"),
            "{line}"
        );
        let mut top = dbn::Mbp1Msg { price: dbn::UNDEF_PRICE, ..Default::default() };
        top.levels[0] = dbn::BidAskPair {
            bid_px: 1_000_000_000,
            ask_px: 2_000_000_000,
            bid_sz: 4,
            ask_sz: 5,
            bid_ct: 1,
            ask_ct: 1,
        };
        let payload = dbn::RecordRef::from(&top).as_ref().to_vec();
        let m = Captured::Message { frames: vec![encode(b"ESZ3", &h, &payload)], recv_ns: 0, missed_before: 0 };
        format_line(&mut line, &Seen::of(&m));
        assert!(line.ends_with("price=- size=0 bid=1.000000000 x 4 ask=2.000000000 x 5"), "{line}");
        let m = Captured::Message { frames: vec![encode(b"ESZ3", &h, b"plain bytes")], recv_ns: 0, missed_before: 0 };
        format_line(&mut line, &Seen::of(&m));
        assert!(!line.contains("dbn="), "{line}");
    }

    #[test]
    fn the_ledger_counts_units_whole_by_the_bytes_taken_and_a_shut_tally_writes_nothing() {
        let (_, mut l) = Ledger::over(Vec::new(), 24);
        for len in [10, 20, 30] {
            l.wrote(len);
            l.close(2);
        }
        l.taken.bytes.store(24 + 29, Ordering::Relaxed);
        assert_eq!(l.confirm(), (1, 2), "the second unit is torn: not counted");
        assert_eq!(l.whole, 34, "whole units end here: a torn tail is cut back to it");
        assert_eq!(l.waiting(), 2);
        l.taken.bytes.store(24 + 60, Ordering::Relaxed);
        assert_eq!(l.confirm(), (2, 4));
        assert_eq!((l.whole, l.waiting()), (84, 0));

        let (mut t, taken) = Tally::new(Vec::new());
        t.write_all(b"abc").expect("write");
        taken.shut.store(true, Ordering::Relaxed);
        assert!(t.write_all(b"def").is_err() && t.flush().is_err(), "nothing after a shut");
        assert_eq!((taken.bytes.load(Ordering::Relaxed), &t.inner[..]), (3, &b"abc"[..]));
    }

    #[test]
    fn a_shut_ledger_counts_what_its_output_took_whole_and_the_output_takes_nothing_more() {
        let (mut out, mut l) = Ledger::over(Vec::new(), 0);
        out.write_all(b"abc").expect("write");
        l.wrote(3);
        l.close(1);
        out.write_all(b"de").expect("write"); // the output took 2 bytes of a 4-byte unit
        l.wrote(4);
        l.close(1);
        let s = l.shut();
        assert_eq!((s.units, s.things, s.lost, s.taken, s.whole), (1, 1, 1, 5, 3));
        assert!(out.write_all(b"x").is_err(), "nothing after a shut");
        assert_eq!(l.waiting(), 0, "nothing left to confirm");
    }

    #[test]
    fn a_recording_is_flushed_when_its_oldest_record_is_due_not_at_every_step() {
        // Before: every step that found less than a full batch flushed, 6.9k write() calls a
        // second at 5k msg/s. Now a step flushes once its oldest unflushed item is
        // FLUSH_AFTER_NS old, and an idle sink wakes for that flush.
        let dir = crate::test_dir("sink-flush");
        let path = dir.join("flush.cap");
        let (rec, _) = Recording::create(&path, false).expect("recording");
        let (tx, rx) = crossbeam::channel::bounded(16);
        let shared = Arc::new(Mutex::new(TapSinkReport::default()));
        let mut sink = TapSink::new(rx, Show::Nothing, false, Some(rec), shared.clone());
        let on_disk = || std::fs::metadata(&path).expect("capture file").len();
        let header = on_disk();
        for i in 0..3u8 {
            tx.send(Captured::Message { frames: vec![vec![i; 10]], recv_ns: 1, missed_before: 0 }).expect("send");
        }
        assert_eq!(sink.do_work().expect("step"), Step::Worked(3));
        assert_eq!(on_disk(), header, "three records, just taken: still in the buffer");
        assert_eq!(sink.do_work().expect("step"), Step::Worked(0));
        let t0 = std::time::Instant::now();
        while !sink.flush_due(clock::monotonic_ns()) {
            sink.idle_wait(Duration::from_secs(5));
            assert!(t0.elapsed() < Duration::from_secs(4), "the idle wait ends by the flush's time");
        }
        assert_eq!(sink.do_work().expect("step"), Step::Worked(0));
        assert!(on_disk() > header, "flushed once due");
        assert_eq!(shared.lock().expect("report").recorded_messages, 3);
        assert!(!sink.dirty, "nothing waits");
        drop(tx);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_printer_that_is_never_flushed_keeps_its_ledger_as_short_as_its_buffer() {
        // Before: only a flush confirmed the ledger, and a sink that always found a full batch
        // waiting never flushed: 16 bytes more a printed item, `printed=0` all along.
        let mut p = Printer::over(Box::new(std::io::sink()));
        let unit = [b'x'; 40];
        for i in 1..=100_000u64 {
            p.print(&unit);
            if i % BATCH_ITEMS as u64 == 0 {
                p.settle();
                // The buffer (8 KiB) holds at most this many units not yet taken.
                assert!(p.ledger.waiting() <= 8 * 1024 / 40 + 1, "{} waiting", p.ledger.waiting());
            }
        }
        p.settle();
        assert_eq!(p.printed + p.ledger.waiting(), 100_000);
        assert!(p.printed > 99_000, "{}", p.printed);
    }

    #[test]
    fn bad_frames_are_told_from_foreign_ones() {
        let mut f = encode(b"VER9", &cached_header(), b"xy");
        f[5] = 9;
        let mut line = String::new();
        format_line(&mut line, &Seen::of(&Captured::Message { frames: vec![f.clone()], recv_ns: 0, missed_before: 0 }));
        assert!(line.starts_with("msg bad topic=\"VER9\" reason=unknown_version size=55 hex=09 01 01 00 "), "{line}");
        assert!(line.ends_with(" (bad frame: unknown wire version 9)"), "{line}");
        let r = json_records(&Seen::of(&Captured::Message { frames: vec![f], recv_ns: 0, missed_before: 0 }));
        assert_eq!((&r[0]["format"], &r[0]["reason"]), (&json!("bad"), &json!("unknown_version")));
        // No NUL: foreign, not bad.
        let foreign = Captured::Message { frames: vec![b"10001 23 45".to_vec()], recv_ns: 0, missed_before: 0 };
        assert!(matches!(Seen::of(&foreign), Seen::Foreign { .. }));
    }

    /// A sink recording to `/dev/full` (every write to the file fails) that reads `dropped` as
    /// the proxy's count of message copies it dropped.
    fn sink_on_a_full_device(dropped: &Arc<AtomicU64>) -> TapSink {
        let (rec, _) = Recording::create(Path::new("/dev/full"), false).expect("recording on /dev/full");
        let (_tx, rx) = crossbeam::channel::bounded(1);
        TapSink::new(rx, Show::Nothing, false, Some(rec), Arc::default()).missing_after(dropped.clone())
    }

    /// Before, once writing the recording failed, copies the tap dropped went uncounted: those a
    /// message carried after the failure, the last hole at the end, and the hole whose mark was
    /// being written when it failed; the exit line said the capture missed fewer messages than
    /// it did. Every message that passed the tap is counted once: recorded, in a hole mark
    /// (`record_missed`), or lost to the failure (`record_lost`).
    #[test]
    fn when_recording_fails_every_copy_the_tap_dropped_is_still_counted_as_missing() {
        let msg =
            |len: usize, missed_before| Captured::Message { frames: vec![vec![7; len]], recv_ns: 1, missed_before };
        let counted = |r: &TapSinkReport| r.recorded_messages + r.record_missed + r.record_lost;
        // The flush fails: 5 dropped before the first message, 3 before the second (taken after
        // the failure), 4 after the last.
        let dropped = Arc::new(AtomicU64::new(5));
        let mut sink = sink_on_a_full_device(&dropped);
        sink.handle(msg(10, 5), 1);
        sink.dirty = true;
        sink.flush();
        assert_eq!(sink.report.record_errors, 1, "/dev/full refuses the flush");
        dropped.store(8, Ordering::Release);
        sink.handle(msg(10, 3), 2);
        dropped.store(12, Ordering::Release);
        sink.close_recording();
        assert_eq!(counted(&sink.report), sink.report.messages + 12, "{:?}", sink.report);
        // The write fails (a frame larger than the buffer goes straight to the file) with the
        // mark of the 6 dropped before it taken.
        let dropped = Arc::new(AtomicU64::new(6));
        let mut sink = sink_on_a_full_device(&dropped);
        sink.handle(msg(2 << 20, 6), 1);
        assert_eq!(sink.report.record_errors, 1, "/dev/full refuses the write");
        sink.close_recording();
        assert_eq!(counted(&sink.report), sink.report.messages + 6, "{:?}", sink.report);
    }

    #[test]
    fn bad_frames_since_the_last_line_are_summarised_on_the_tick_with_no_more_traffic() {
        // Before, bad frames counted after the first were said only with the next one or at exit.
        use crate::clock::ManualClock;
        use crate::diag::SUMMARY_INTERVAL_NS;
        let clock = ManualClock::new(1_000 * SUMMARY_INTERVAL_NS);
        let (_tx, rx) = crossbeam::channel::bounded(1);
        let mut sink = TapSink::new(rx, Show::Nothing, false, None, Arc::default());
        let mut bad = encode(b"VER9", &cached_header(), b"xy");
        bad[5] = 9;
        for _ in 0..2 {
            sink.handle(
                Captured::Message { frames: vec![bad.clone()], recv_ns: 0, missed_before: 0 },
                clock.advance_ns(1),
            );
        }
        assert_eq!(sink.report.bad_frames, 2);
        assert!(sink.bad_frames.counts().unsaid(), "the first said at once, the second counted");
        sink.tick(clock.advance_ns(SUMMARY_INTERVAL_NS - 2));
        assert!(sink.bad_frames.counts().unsaid(), "not before the interval is up");
        sink.tick(clock.advance_ns(1));
        assert!(!sink.bad_frames.counts().unsaid(), "said on the tick, with no item since");
    }

    #[test]
    fn stats_keys() {
        let h = Header {
            kind: Kind::Data,
            flags: 0,
            publisher_id: 3,
            session_id: 1,
            stream_seq: 1,
            topic_seq: 1,
            send_time_ns: 0,
        };
        let stats_key = |frames: Vec<Vec<u8>>| {
            Seen::of(&Captured::Message { frames, recv_ns: 0, missed_before: 0 }).stats_key().to_vec()
        };
        assert_eq!(stats_key(vec![encode(b"ESH6", &h, b"")]), b"ESH6");
        assert_eq!(stats_key(vec![b"001".to_vec(), b"x".to_vec()]), b"001");
        assert_eq!(stats_key(vec![]), b"");
    }
}
