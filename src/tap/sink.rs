//! Espresso tap sink agent (guide, chapter 5): prints, counts or records what the proxy captured.
//!
//! Takes captured messages off the bounded channel and prints them decoded
//! (a payload that is a Databento DBN record is decoded too), counts them per
//! topic, and/or records them to a capture file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::Receiver;
use serde_json::{json, Map, Value};

use crate::agent::{Agent, AgentError, Inbox, Step};
use crate::diag::RefusalLog;
use crate::feed::dbn_source::{get, AlignedRecord};
use crate::tap::proxy::Captured;
use crate::wire::capture::{CaptureWriter, MAX_RECORD_LEN};
use crate::wire::{decode, now_ns, Kind, FLAG_FROM_CACHE};

/// Bytes of a foreign message shown in hex.
pub const HEX_PREVIEW_BYTES: usize = 16;
/// Most distinct topics counted in `--stats`; the rest count under `(other)`.
pub const MAX_STATS_TOPICS: usize = 10_000;
/// Stats refresh interval, ns.
pub const STATS_INTERVAL_NS: u64 = 1_000_000_000;
/// Captured items handled per `do_work`.
pub const BATCH_ITEMS: usize = 1024;

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
    pub recorded_frames: u64,
    pub record_errors: u64,
    /// Messages not recorded because a frame exceeds the capture format's limit.
    pub record_skipped_too_large: u64,
    /// Lines and stats not printed because stdout was closed (`mdsub tap | head`):
    /// printing stops, forwarding and recording go on.
    pub unprinted: u64,
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

/// The JSON records of a captured item (`--json`): one per line, as [`format_line`] gives
/// lines (an LVC answer is one record per cached value).
pub fn json_records(item: &Captured) -> Vec<Value> {
    match item {
        Captured::Subscription { subscribe, prefix, .. } => {
            vec![json!({"type": if *subscribe { "subscribe" } else { "unsubscribe" }, "prefix": filter_text(prefix)})]
        }
        Captured::Message { frames, recv_ns } => {
            let size: usize = frames.iter().map(Vec::len).sum();
            if let [only] = &frames[..] {
                if let Ok(v) = decode(only) {
                    return vec![mdsub_json(&v, *recv_ns, size)];
                }
            }
            if is_lvc_answer(frames) {
                let n = frames.len();
                return frames
                    .iter()
                    .enumerate()
                    .filter_map(|(i, f)| {
                        let mut r = mdsub_json(&decode(f).ok()?, *recv_ns, f.len());
                        r["answer"] = (i + 1).into();
                        r["answer_of"] = n.into();
                        Some(r)
                    })
                    .collect();
            }
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
                "size": size,
                "hex": hex,
            })]
        }
    }
}

/// The JSON record of a decoded mdsub frame (the fields of a `msg topic=…` line).
fn mdsub_json(v: &crate::wire::FrameView<'_>, recv_ns: u64, size: usize) -> Value {
    let h = &v.header;
    let kind = match h.kind {
        Kind::Data => "data",
        Kind::Heartbeat => "heartbeat",
        Kind::EndOfStream => "end",
    };
    let mut r = json!({
        "type": "msg",
        "format": "mdsub",
        "topic": filter_text(v.topic),
        "kind": kind,
        "pub": h.publisher_id,
        "session": format!("{:x}", h.session_id),
        "seq": h.stream_seq,
        "topic_seq": h.topic_seq,
        "lag_us": ((recv_ns as i128 - h.send_time_ns as i128) / 1000) as i64,
        "size": size,
        "from_cache": h.flags & FLAG_FROM_CACHE != 0,
    });
    if h.kind == Kind::Data {
        if let Some(d) = dbn_json(v.payload) {
            r["dbn"] = d;
        }
    }
    r
}

/// One line for a captured item (no newline).
pub fn format_line(out: &mut String, item: &Captured) {
    out.clear();
    match item {
        Captured::Subscription { subscribe, prefix, .. } => {
            out.push_str(if *subscribe { "subscribe prefix=" } else { "unsubscribe prefix=" });
            escape_into(out, prefix);
        }
        Captured::Message { frames, recv_ns } => {
            let size: usize = frames.iter().map(Vec::len).sum();
            let decoded = match &frames[..] {
                [only] => decode(only).ok(),
                _ => None,
            };
            if let Some(v) = decoded {
                mdsub_line_into(out, &v, *recv_ns, size);
            } else if is_lvc_answer(frames) {
                // An LVC answer: cached mdsub frames back to back in one
                // message (docs/LVC-TAP.md); one line per cached value.
                let n = frames.len();
                for (i, f) in frames.iter().enumerate() {
                    if let Ok(v) = decode(f) {
                        if i > 0 {
                            out.push('\n');
                        }
                        mdsub_line_into(out, &v, *recv_ns, f.len());
                        let _ = write!(out, " answer={}/{n}", i + 1);
                    }
                }
            } else {
                let (first, rest) = match &frames[..] {
                    [first, rest @ ..] => (&first[..], rest),
                    [] => (&[][..], &[][..]),
                };
                out.push_str("msg foreign topic=");
                escape_into(out, &first[..first.len().min(64)]);
                let _ = write!(out, " frames={} size={size} hex=", frames.len());
                match rest.first() {
                    Some(body) => hex_into(out, body),
                    None => hex_into(out, first),
                }
            }
        }
    }
}

/// One `msg topic=…` line for a decoded mdsub frame.
fn mdsub_line_into(out: &mut String, v: &crate::wire::FrameView<'_>, recv_ns: u64, size: usize) {
    let h = &v.header;
    let lag_us = (recv_ns as i128 - h.send_time_ns as i128) / 1000;
    let kind = match h.kind {
        Kind::Data => "data",
        Kind::Heartbeat => "heartbeat",
        Kind::EndOfStream => "end",
    };
    let _ = write!(
        out,
        "msg topic={} kind={kind} pub={} session={:x} seq={} topic_seq={} lag_us={lag_us} size={size}",
        v.topic_str(),
        h.publisher_id,
        h.session_id,
        h.stream_seq,
        h.topic_seq
    );
    if h.flags & FLAG_FROM_CACHE != 0 {
        out.push_str(" from_cache");
    }
    if h.kind == Kind::Data {
        dbn_into(out, v.payload);
    }
}

/// Whether a multipart message is an LVC answer: two or more frames, each a
/// whole mdsub frame marked FROM_CACHE.
pub fn is_lvc_answer(frames: &[Vec<u8>]) -> bool {
    frames.len() > 1 && frames.iter().all(|f| decode(f).is_ok_and(|v| v.header.flags & FLAG_FROM_CACHE != 0))
}

/// The stats key of a message: the mdsub topic, or the foreign first frame (≤ 64 bytes).
fn stats_key(frames: &[Vec<u8>]) -> Vec<u8> {
    match frames {
        [only] => match decode(only) {
            Ok(v) => v.topic.to_vec(),
            Err(_) => only[..only.len().min(64)].to_vec(),
        },
        [first, ..] => first[..first.len().min(64)].to_vec(),
        [] => Vec::new(),
    }
}

/// The sink agent.
pub struct TapSink {
    inbox: Inbox<Captured>,
    show: Show,
    /// `--json`: what is shown goes out as JSON records, one a line (JSON Lines).
    json: bool,
    recorder: Option<CaptureWriter<BufWriter<File>>>,
    out: BufWriter<std::io::Stdout>,
    line: String,
    stats: BTreeMap<Vec<u8>, u64>,
    stats_other: u64,
    stats_start_ns: u64,
    last_stats_ns: u64,
    dirty: bool,
    report: TapSinkReport,
    /// Messages not recorded, counted by reason and said (rate-limited).
    refusals: RefusalLog,
    /// Stdout failed: nothing more is printed (see `check_out`).
    printing_stopped: bool,
    shared: Arc<Mutex<TapSinkReport>>,
}

impl TapSink {
    /// With `json`, what `show` says is written as JSON records, one a line.
    pub fn new(
        rx: Receiver<Captured>,
        show: Show,
        json: bool,
        recorder: Option<CaptureWriter<BufWriter<File>>>,
        shared: Arc<Mutex<TapSinkReport>>,
    ) -> Self {
        let now = now_ns();
        TapSink {
            inbox: Inbox::new(rx),
            show,
            json,
            recorder,
            out: BufWriter::new(std::io::stdout()),
            line: String::with_capacity(256),
            stats: BTreeMap::new(),
            stats_other: 0,
            stats_start_ns: now,
            last_stats_ns: now,
            dirty: false,
            report: TapSinkReport::default(),
            refusals: RefusalLog::new("tap"),
            printing_stopped: false,
            shared,
        }
    }

    fn handle(&mut self, item: Captured) {
        match &item {
            Captured::Subscription { subscribe: true, .. } => self.report.subscriptions += 1,
            Captured::Subscription { subscribe: false, .. } => self.report.unsubscriptions += 1,
            Captured::Message { frames, recv_ns } => {
                self.report.messages += 1;
                let fits = frames.iter().all(|f| f.len() <= MAX_RECORD_LEN as usize);
                if self.recorder.is_some() && !fits {
                    self.report.record_skipped_too_large += 1;
                    let detail = format_args!(
                        "a frame over the capture format's {MAX_RECORD_LEN}-byte record limit is not recorded"
                    );
                    self.refusals.refuse("too_large_to_record", &detail, *recv_ns);
                } else if let Some(w) = self.recorder.as_mut() {
                    let n = frames.len();
                    for (i, f) in frames.iter().enumerate() {
                        if let Err(e) = w.write_frame(f, i + 1 < n, *recv_ns) {
                            crate::diag!("tap: recording stopped: {e}");
                            self.report.record_errors += 1;
                            self.recorder = None;
                            break;
                        }
                        self.report.recorded_frames += 1;
                    }
                }
                if self.show == Show::Stats {
                    let key = stats_key(frames);
                    if let Some(c) = self.stats.get_mut(&key) {
                        *c += 1;
                    } else if self.stats.len() < MAX_STATS_TOPICS {
                        self.stats.insert(key, 1);
                    } else {
                        self.stats_other += 1;
                    }
                }
            }
        }
        if self.printing_stopped {
            self.report.unprinted += 1;
        } else if self.show == Show::Lines && self.json {
            let mut r = Ok(());
            for record in json_records(&item) {
                r = r.and_then(|()| serde_json::to_writer(&mut self.out, &record).map_err(std::io::Error::from));
                r = r.and_then(|()| self.out.write_all(b"\n"));
            }
            self.check_out(r);
        } else if self.show == Show::Lines {
            format_line(&mut self.line, &item);
            let r = writeln!(self.out, "{}", self.line);
            self.check_out(r);
        }
        self.dirty = true;
    }

    /// After a failed write to stdout (closed by its reader, or full disk):
    /// say it once and stop printing; the proxy and the recording go on.
    fn check_out(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            if !self.printing_stopped {
                self.printing_stopped = true;
                crate::diag!(
                    "tap: printing stopped: stdout: {e}; forwarding and recording go on (Ctrl-C ends the tap)"
                );
            }
        }
    }

    fn print_stats(&mut self, now_ns: u64) {
        if self.printing_stopped {
            return;
        }
        let elapsed_s = now_ns.saturating_sub(self.stats_start_ns) as f64 / 1e9;
        let total: u64 = self.stats.values().sum::<u64>() + self.stats_other;
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
            let r = serde_json::to_writer(&mut self.out, &record)
                .map_err(std::io::Error::from)
                .and_then(|()| self.out.write_all(b"\n"))
                .and_then(|()| self.out.flush());
            self.check_out(r);
            return;
        }
        let _ = writeln!(
            self.out,
            "stats elapsed_s={elapsed_s:.1} topics={} messages={total} subscriptions={} unsubscriptions={}",
            self.stats.len(),
            self.report.subscriptions,
            self.report.unsubscriptions
        );
        for (topic, count) in &self.stats {
            self.line.clear();
            escape_into(&mut self.line, topic);
            let _ = writeln!(self.out, "  {} {count}", self.line);
        }
        if self.stats_other > 0 {
            let _ = writeln!(self.out, "  (other) {}", self.stats_other);
        }
        let r = self.out.flush();
        self.check_out(r);
    }

    fn flush(&mut self) {
        if self.dirty {
            // The recording first: a terminal that blocks (a pager, Ctrl-S)
            // must not hold back what is already captured.
            if let Some(w) = self.recorder.as_mut() {
                if let Err(e) = w.flush() {
                    crate::diag!("tap: recording stopped: {e}");
                    self.report.record_errors += 1;
                    self.recorder = None;
                }
            }
            if !self.printing_stopped {
                let r = self.out.flush();
                self.check_out(r);
            }
            self.dirty = false;
        }
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
        let mut done = 0;
        while done < BATCH_ITEMS {
            let Some(item) = self.inbox.next() else { break };
            self.handle(item);
            done += 1;
        }
        if self.show == Show::Stats {
            let now = now_ns();
            if now.saturating_sub(self.last_stats_ns) >= STATS_INTERVAL_NS {
                self.last_stats_ns = now;
                self.print_stats(now);
            }
        }
        if done < BATCH_ITEMS {
            self.flush();
        }
        if self.inbox.is_closed() {
            return Ok(Step::Finished(done));
        }
        Ok(Step::Worked(done))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        self.inbox.wait(timeout);
    }

    fn on_close(&mut self) {
        while let Some(item) = self.inbox.next() {
            self.handle(item);
        }
        if self.show == Show::Stats {
            self.print_stats(now_ns());
        }
        self.dirty = true;
        self.flush();
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
        let m = Captured::Message { frames: vec![encode(b"ESH6", &h, b"xy")], recv_ns: 3_000_000 };
        format_line(&mut line, &m);
        assert_eq!(line, "msg topic=ESH6 kind=data pub=3 session=ab seq=42 topic_seq=7 lag_us=2000 size=55 from_cache");
        let f = Captured::Message { frames: vec![b"001".to_vec(), b"Save Roger".to_vec()], recv_ns: 0 };
        format_line(&mut line, &f);
        assert_eq!(line, "msg foreign topic=\"001\" frames=2 size=13 hex=53 61 76 65 20 52 6f 67 65 72");
        let s = Captured::Subscription { subscribe: true, prefix: b"ESH6\0".to_vec(), recv_ns: 0 };
        format_line(&mut line, &s);
        assert_eq!(line, "subscribe prefix=\"ESH6\\x00\"");
        let empty = Captured::Message { frames: vec![], recv_ns: 0 };
        format_line(&mut line, &empty);
        assert!(line.starts_with("msg foreign"), "{line}");
        // An LVC answer: cached mdsub frames back to back, one line each.
        let two = vec![encode(b"ESH6", &h, b"xy"), encode(b"ESM6", &h, b"xy")];
        assert!(is_lvc_answer(&two));
        format_line(&mut line, &Captured::Message { frames: two, recv_ns: 3_000_000 });
        let lines: Vec<&str> = line.lines().collect();
        assert_eq!(lines.len(), 2, "{line}");
        assert!(lines[0].starts_with("msg topic=ESH6 ") && lines[0].ends_with("from_cache answer=1/2"), "{line}");
        assert!(lines[1].starts_with("msg topic=ESM6 ") && lines[1].ends_with("from_cache answer=2/2"), "{line}");
        // Live mdsub frames (not FROM_CACHE) in one message are not an answer.
        let live = Header { flags: 0, ..h };
        assert!(!is_lvc_answer(&[encode(b"ESH6", &live, b"xy"), encode(b"ESM6", &live, b"xy")]));
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
        let r = json_records(&Captured::Message { frames: answer, recv_ns: 3_000_000 });
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
        let r = json_records(&Captured::Subscription { subscribe: false, prefix: prefix.clone(), recv_ns: 0 });
        assert_eq!(r, vec![json!({"type": "unsubscribe", "prefix": "ES\\\\H6\\x00\\xff\""})]);
        let text = r[0]["prefix"].as_str().expect("text");
        assert_eq!(crate::tap::proxy::parse_prefix(text).as_deref(), Ok(&prefix[..]));
        let f = json_records(&Captured::Message { frames: vec![b"001".to_vec(), b"Save".to_vec()], recv_ns: 0 });
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
        let m = Captured::Message { frames: vec![encode(b"ESZ3", &h, &payload)], recv_ns: 0 };
        format_line(&mut line, &m);
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
        let m = Captured::Message { frames: vec![encode(b"ESZ3", &h, &payload)], recv_ns: 0 };
        format_line(&mut line, &m);
        assert!(line.ends_with("price=- size=0 bid=1.000000000 x 4 ask=2.000000000 x 5"), "{line}");
        let m = Captured::Message { frames: vec![encode(b"ESZ3", &h, b"plain bytes")], recv_ns: 0 };
        format_line(&mut line, &m);
        assert!(!line.contains("dbn="), "{line}");
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
        assert_eq!(stats_key(&[encode(b"ESH6", &h, b"")]), b"ESH6");
        assert_eq!(stats_key(&[b"001".to_vec(), b"x".to_vec()]), b"001");
        assert_eq!(stats_key(&[]), b"");
    }
}
