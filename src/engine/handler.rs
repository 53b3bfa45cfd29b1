//! What a worker does with each message: the [`Handler`] trait and the
//! built-in handlers (latency only, synthetic work, order books from DBN
//! records, last value per topic, order check).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use dbn::{MboMsg, Mbp10Msg, Mbp1Msg, TradeMsg, UNDEF_PRICE};

use super::book::{Anomalies, MboEvent, OrderBook};
use super::sequence::WordHasher;
use crate::feed::dbn_source::{get, AlignedRecord};
use crate::wire::FrameView;

/// Application code run by a worker for every delivered data message.
/// Latency is recorded by the worker around this call.
pub trait Handler: Send {
    fn on_message(&mut self, msg: &FrameView<'_>);

    /// Named counters the handler keeps; summed over workers into the report.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// A few lines for the end report (e.g. the `book` handler's best bid and
    /// ask per instrument); called once, after the last message.
    fn summary(&self) -> Vec<String> {
        Vec::new()
    }

    /// False for a handler that does nothing per message: a worker then takes
    /// a message's end time to be the time it took the message's batch, and
    /// saves a clock read per message (the baseline does the same inline).
    fn takes_time(&self) -> bool {
        true
    }
}

/// Which built-in handler to run; parsed from `latency`, `work:NS`, `book`, `last`, `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HandlerSpec {
    /// Nothing beyond the worker's latency recording.
    Latency,
    /// Busy work of this many ns per message (models real processing cost).
    Work { ns: u64 },
    /// Order books from DBN payloads: per-instrument books from MBO records,
    /// top of book from MBP-1/MBP-10 and trades; anomalies counted.
    Book,
    /// Keep the last payload of every topic.
    Last,
    /// Check that every topic's sequence goes up by exactly one (a feed and
    /// routing check; counts `verified`, `out_of_order`, `skipped`).
    Verify,
}

impl std::str::FromStr for HandlerSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latency" => Ok(HandlerSpec::Latency),
            "book" => Ok(HandlerSpec::Book),
            "last" => Ok(HandlerSpec::Last),
            "verify" => Ok(HandlerSpec::Verify),
            _ => match s.strip_prefix("work:").map(str::parse::<u64>) {
                Some(Ok(ns)) if ns <= MAX_WORK_NS => Ok(HandlerSpec::Work { ns }),
                Some(Ok(ns)) => Err(format!("work:{ns}: at most work:{MAX_WORK_NS} (1 s of work per message)")),
                _ => Err(format!("unknown handler `{s}` (expected latency, book, last, verify or work:NANOS)")),
            },
        }
    }
}

impl TryFrom<String> for HandlerSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<HandlerSpec> for String {
    fn from(h: HandlerSpec) -> String {
        h.to_string()
    }
}

impl std::fmt::Display for HandlerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerSpec::Latency => write!(f, "latency"),
            HandlerSpec::Work { ns } => write!(f, "work:{ns}"),
            HandlerSpec::Book => write!(f, "book"),
            HandlerSpec::Last => write!(f, "last"),
            HandlerSpec::Verify => write!(f, "verify"),
        }
    }
}

impl HandlerSpec {
    pub fn build(&self) -> Box<dyn Handler> {
        match *self {
            HandlerSpec::Latency => Box::new(LatencyOnly),
            HandlerSpec::Work { ns } => Box::new(SyntheticWork { ns }),
            HandlerSpec::Book => Box::new(BookHandler::default()),
            HandlerSpec::Last => Box::new(LastValueBook::default()),
            HandlerSpec::Verify => Box::new(VerifyOrder::default()),
        }
    }
}

/// Does nothing: the worker's latency recording is the whole job.
pub struct LatencyOnly;

impl Handler for LatencyOnly {
    #[inline]
    fn on_message(&mut self, _msg: &FrameView<'_>) {}

    fn takes_time(&self) -> bool {
        false
    }
}

/// The most `work:NANOS` may ask for (1 s a message). `work:18446744073709551615` wrapped the
/// deadline and did no work at all.
pub const MAX_WORK_NS: u64 = 1_000_000_000;

/// Spins for `ns` nanoseconds per message.
pub struct SyntheticWork {
    pub ns: u64,
}

impl Handler for SyntheticWork {
    #[inline]
    fn on_message(&mut self, _msg: &FrameView<'_>) {
        let until = crate::wire::now_ns().saturating_add(self.ns);
        while crate::wire::now_ns() < until {
            std::hint::spin_loop();
        }
    }
}

/// The last payload of every topic; replacing a value reuses its buffer.
#[derive(Default)]
pub struct LastValueBook {
    book: HashMap<Box<[u8]>, Vec<u8>, BuildHasherDefault<WordHasher>>,
}

impl LastValueBook {
    pub fn get(&self, topic: &[u8]) -> Option<&[u8]> {
        self.book.get(topic).map(Vec::as_slice)
    }
    pub fn len(&self) -> usize {
        self.book.len()
    }
    pub fn is_empty(&self) -> bool {
        self.book.is_empty()
    }
}

impl Handler for LastValueBook {
    #[inline]
    fn on_message(&mut self, msg: &FrameView<'_>) {
        match self.book.get_mut(msg.topic) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(msg.payload);
            }
            None => {
                self.book.insert(msg.topic.into(), msg.payload.to_vec());
            }
        }
    }
}

/// Top of book as an MBP-1/MBP-10 feed or trades last reported it.
#[derive(Debug, Default, Clone, Copy)]
struct TopOfBook {
    bid: Option<(i64, u32)>,
    ask: Option<(i64, u32)>,
    /// Defined levels per side of the last MBP-10 record.
    depth: (u8, u8),
    last_trade: Option<(i64, u32)>,
}

/// What the book handler keeps per instrument.
#[derive(Default)]
struct Instrument {
    /// The topic (symbol) it arrived on, for the report (set once).
    topic: Box<[u8]>,
    book: Option<Box<OrderBook>>,
    tob: TopOfBook,
}

/// Events by MBO action, in the order of [`ACTIONS`].
const ACTIONS: [(u8, &str); 7] = [
    (b'A', "mbo_add"),
    (b'C', "mbo_cancel"),
    (b'M', "mbo_modify"),
    (b'R', "mbo_clear"),
    (b'T', "mbo_trade"),
    (b'F', "mbo_fill"),
    (b'N', "mbo_none"),
];
/// Instruments shown in the end report.
pub const SUMMARY_INSTRUMENTS: usize = 10;

/// Order books from DBN records: per-instrument books from MBO (add,
/// cancel, modify, clear, trade, fill), top of book from MBP-1/MBP-10 and
/// trades. A known instrument costs no allocation per message (its books
/// keep their capacity); payloads that are not DBN records, or of other
/// types, are counted.
pub struct BookHandler {
    instruments: HashMap<u32, Instrument, BuildHasherDefault<WordHasher>>,
    rec: Box<AlignedRecord>,
    events: [u64; ACTIONS.len()],
    mbp1: u64,
    mbp10: u64,
    trades: u64,
    other_records: u64,
    not_dbn: u64,
    anomalies: Anomalies,
}

impl Default for BookHandler {
    fn default() -> Self {
        BookHandler {
            instruments: HashMap::with_capacity_and_hasher(1024, Default::default()),
            rec: Box::default(),
            events: [0; ACTIONS.len()],
            mbp1: 0,
            mbp10: 0,
            trades: 0,
            other_records: 0,
            not_dbn: 0,
            anomalies: Anomalies::default(),
        }
    }
}

/// A price (units of 1e-9) and a size.
pub type PxSize = (i64, u64);

fn px(p: i64) -> Option<i64> {
    (p != UNDEF_PRICE).then_some(p)
}

fn fmt_level(out: &mut String, l: Option<(i64, u64)>) {
    use std::fmt::Write as _;
    match l {
        Some((p, s)) => {
            let _ = write!(out, "{} x {s}", dbn::pretty::fmt_px(p));
        }
        None => out.push('-'),
    }
}

impl BookHandler {
    /// Best bid and ask (price, size) of an instrument: from its MBO book
    /// when it has one, else from the last MBP record.
    pub fn bbo(&self, instrument_id: u32) -> Option<(Option<PxSize>, Option<PxSize>)> {
        let i = self.instruments.get(&instrument_id)?;
        Some(match &i.book {
            Some(b) => (b.bids.best().map(|l| (l.price, l.size)), b.asks.best().map(|l| (l.price, l.size))),
            None => (i.tob.bid.map(|(p, s)| (p, s as u64)), i.tob.ask.map(|(p, s)| (p, s as u64))),
        })
    }

    /// Bid and ask price levels of an instrument's MBO book.
    pub fn levels(&self, instrument_id: u32) -> Option<(usize, usize)> {
        let b = self.instruments.get(&instrument_id)?.book.as_ref()?;
        Some((b.bids.len(), b.asks.len()))
    }

    /// Anomalies counted so far.
    pub fn anomalies(&self) -> Anomalies {
        self.anomalies
    }
}

/// The instrument's state, made on first sight (the only allocation for it).
#[inline]
fn instrument<'a>(
    map: &'a mut HashMap<u32, Instrument, BuildHasherDefault<WordHasher>>,
    id: u32,
    topic: &[u8],
) -> &'a mut Instrument {
    map.entry(id).or_insert_with(|| Instrument { topic: topic.into(), ..Default::default() })
}

/// What one record means to the books.
enum Parsed {
    Mbo(MboEvent),
    Top { bid: Option<(i64, u32)>, ask: Option<(i64, u32)>, depth: Option<(u8, u8)>, trade: Option<(i64, u32)> },
    Trade(i64, u32),
}

impl Parsed {
    fn top(levels: &[dbn::BidAskPair], action: u8, price: i64, size: u32, depth: Option<(u8, u8)>) -> Parsed {
        let l = levels.first();
        Parsed::Top {
            bid: l.and_then(|l| px(l.bid_px).map(|p| (p, l.bid_sz))),
            ask: l.and_then(|l| px(l.ask_px).map(|p| (p, l.ask_sz))),
            depth,
            trade: (action == b'T').then_some((price, size)),
        }
    }
}

impl Handler for BookHandler {
    #[inline]
    fn on_message(&mut self, msg: &FrameView<'_>) {
        let Some(rec) = self.rec.load(msg.payload) else {
            self.not_dbn += 1;
            return;
        };
        let id = rec.header().instrument_id;
        // Read what is needed out of the record, then update the books.
        let parsed = if let Some(m) = get::<MboMsg>(&rec) {
            Parsed::Mbo(MboEvent {
                order_id: m.order_id,
                price: m.price,
                size: m.size,
                action: m.action as u8,
                side: m.side as u8,
                flags: m.flags.raw(),
            })
        } else if let Some(m) = get::<Mbp1Msg>(&rec) {
            self.mbp1 += 1;
            Parsed::top(&m.levels, m.action as u8, m.price, m.size, None)
        } else if let Some(m) = get::<Mbp10Msg>(&rec) {
            self.mbp10 += 1;
            let depth = (
                m.levels.iter().filter(|l| l.bid_px != UNDEF_PRICE).count() as u8,
                m.levels.iter().filter(|l| l.ask_px != UNDEF_PRICE).count() as u8,
            );
            Parsed::top(&m.levels, m.action as u8, m.price, m.size, Some(depth))
        } else if let Some(m) = get::<TradeMsg>(&rec) {
            self.trades += 1;
            Parsed::Trade(m.price, m.size)
        } else {
            self.other_records += 1;
            return;
        };
        match parsed {
            Parsed::Mbo(e) => {
                if let Some(k) = ACTIONS.iter().position(|(a, _)| *a == e.action) {
                    self.events[k] += 1;
                }
                let anomalies = &mut self.anomalies;
                let inst = instrument(&mut self.instruments, id, msg.topic);
                if matches!(e.action, b'T' | b'F') {
                    inst.tob.last_trade = Some((e.price, e.size));
                }
                inst.book.get_or_insert_with(Box::default).apply(&e, anomalies);
            }
            Parsed::Top { bid, ask, depth, trade } => {
                let tob = &mut instrument(&mut self.instruments, id, msg.topic).tob;
                tob.bid = bid;
                tob.ask = ask;
                if let Some(d) = depth {
                    tob.depth = d;
                }
                if trade.is_some() {
                    tob.last_trade = trade;
                }
            }
            Parsed::Trade(p, s) => instrument(&mut self.instruments, id, msg.topic).tob.last_trade = Some((p, s)),
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let books = self.instruments.values().filter_map(|i| i.book.as_deref());
        let (mut bid_levels, mut ask_levels, mut orders) = (0u64, 0u64, 0u64);
        for b in books {
            bid_levels += b.bids.len() as u64;
            ask_levels += b.asks.len() as u64;
            orders += b.orders() as u64;
        }
        let mut c = vec![
            ("instruments", self.instruments.len() as u64),
            ("bid_levels", bid_levels),
            ("ask_levels", ask_levels),
            ("orders", orders),
            ("mbp1", self.mbp1),
            ("mbp10", self.mbp10),
            ("trade_records", self.trades),
            ("other_records", self.other_records),
            ("not_dbn", self.not_dbn),
        ];
        c.extend(self.anomalies.named());
        c.extend(ACTIONS.iter().zip(self.events).map(|((_, name), n)| (*name, n)));
        c
    }

    /// One line per instrument (the first [`SUMMARY_INSTRUMENTS`] by id):
    /// `book SYMBOL id=ID bid=PX x SIZE ask=PX x SIZE levels=B/A orders=N last=PX x SIZE`.
    fn summary(&self) -> Vec<String> {
        use std::fmt::Write as _;
        let mut ids: Vec<u32> = self.instruments.keys().copied().collect();
        ids.sort_unstable();
        let mut lines = Vec::new();
        for id in ids.into_iter().take(SUMMARY_INSTRUMENTS) {
            let i = &self.instruments[&id];
            let (bid, ask) = self.bbo(id).unwrap_or((None, None));
            let mut s = format!("book {} id={id} bid=", String::from_utf8_lossy(&i.topic));
            fmt_level(&mut s, bid);
            s.push_str(" ask=");
            fmt_level(&mut s, ask);
            match &i.book {
                Some(b) => {
                    let _ = write!(s, " levels={}/{} orders={}", b.bids.len(), b.asks.len(), b.orders());
                }
                None if i.tob.depth != (0, 0) => {
                    let _ = write!(s, " depth={}/{}", i.tob.depth.0, i.tob.depth.1);
                }
                None => {}
            }
            if let Some((p, sz)) = i.tob.last_trade {
                s.push_str(" last=");
                fmt_level(&mut s, Some((p, sz as u64)));
            }
            lines.push(s);
        }
        if self.instruments.len() > SUMMARY_INSTRUMENTS {
            lines.push(format!("book … and {} more instruments", self.instruments.len() - SUMMARY_INSTRUMENTS));
        }
        lines
    }
}

/// Per-topic order check: each topic's `topic_seq` must follow the last by one.
#[derive(Default)]
pub struct VerifyOrder {
    last: HashMap<Box<[u8]>, (u64, u64), BuildHasherDefault<WordHasher>>,
    verified: u64,
    out_of_order: u64,
    skipped: u64,
}

impl Handler for VerifyOrder {
    #[inline]
    fn on_message(&mut self, msg: &FrameView<'_>) {
        let (session, seq) = (msg.header.session_id, msg.header.topic_seq);
        match self.last.get_mut(msg.topic) {
            Some(last) if last.0 == session => {
                if seq == last.1 + 1 {
                    self.verified += 1;
                } else if seq <= last.1 {
                    self.out_of_order += 1;
                } else {
                    self.skipped += 1;
                }
                last.1 = last.1.max(seq);
            }
            Some(last) => {
                *last = (session, seq);
                self.verified += 1;
            }
            None => {
                self.last.insert(msg.topic.into(), (session, seq));
                if seq == 1 {
                    self.verified += 1;
                } else {
                    self.skipped += 1;
                }
            }
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("verified", self.verified), ("out_of_order", self.out_of_order), ("skipped", self.skipped)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode, Header};

    #[test]
    fn specs_parse_and_print() {
        for s in ["latency", "book", "last", "verify", "work:250"] {
            assert_eq!(s.parse::<HandlerSpec>().expect("parses").to_string(), s);
        }
        assert!("work:x".parse::<HandlerSpec>().is_err());
        assert!("work:1000000000".parse::<HandlerSpec>().is_ok());
        assert!("work:18446744073709551615".parse::<HandlerSpec>().is_err(), "the audit's wrapping value");
        assert!("sleep".parse::<HandlerSpec>().is_err());
    }

    /// A data frame on `topic` with both sequences `seq`.
    fn frame(topic: &[u8], seq: u64, payload: &[u8]) -> Vec<u8> {
        encode(topic, &Header::data(seq, 0), payload)
    }

    #[test]
    fn book_keeps_last_value() {
        let mut book = LastValueBook::default();
        for (seq, p) in [(1, &b"one"[..]), (2, b"two")] {
            book.on_message(&decode(&frame(b"ESH6", seq, p)).expect("frame"));
        }
        assert_eq!(book.get(b"ESH6"), Some(&b"two"[..]));
        assert_eq!(book.len(), 1);
    }

    fn dbn_bytes<T: dbn::HasRType>(r: &T) -> Vec<u8> {
        dbn::RecordRef::from(r).as_ref().to_vec()
    }

    fn mbo(id: u32, order_id: u64, action: u8, side: u8, price: i64, size: u32) -> MboMsg {
        crate::feed::mbo_synth::mbo(id, 0, order_id, action, side, price, size)
    }

    #[test]
    fn book_handler_builds_books_and_tops_from_dbn_payloads() {
        let mut h = BookHandler::default();
        let mut feed = vec![
            dbn_bytes(&mbo(7, 1, b'A', b'B', 100_000_000_000, 5)),
            dbn_bytes(&mbo(7, 2, b'A', b'A', 101_000_000_000, 3)),
            dbn_bytes(&mbo(7, 3, b'A', b'B', 99_000_000_000, 1)),
            dbn_bytes(&mbo(7, 1, b'C', b'B', 100_000_000_000, 5)),
            dbn_bytes(&mbo(7, 9, b'C', b'B', 100_000_000_000, 5)),
        ];
        let mut top = Mbp1Msg { action: b'T' as std::ffi::c_char, price: 42, size: 2, ..Default::default() };
        top.hd.instrument_id = 8;
        top.levels[0] = dbn::BidAskPair { bid_px: 10, ask_px: 12, bid_sz: 4, ask_sz: 6, bid_ct: 1, ask_ct: 1 };
        feed.push(dbn_bytes(&top));
        feed.push(b"not a record".to_vec());
        for (i, p) in feed.iter().enumerate() {
            let topic: &[u8] = if i < 5 { b"ESZ3" } else { b"NQZ3" };
            h.on_message(&decode(&frame(topic, i as u64 + 1, p)).expect("frame"));
        }
        assert_eq!(h.bbo(7), Some((Some((99_000_000_000, 1)), Some((101_000_000_000, 3)))));
        assert_eq!(h.levels(7), Some((1, 1)));
        assert_eq!(h.bbo(8), Some((Some((10, 4)), Some((12, 6)))));
        assert_eq!(h.anomalies().unknown_order, 1);
        let c: HashMap<_, _> = h.counters().into_iter().collect();
        assert_eq!((c["mbo_add"], c["mbo_cancel"], c["mbp1"], c["not_dbn"], c["instruments"]), (3, 2, 1, 1, 2));
        let lines = h.summary();
        assert_eq!(lines[0], "book ESZ3 id=7 bid=99.000000000 x 1 ask=101.000000000 x 3 levels=1/1 orders=2");
        assert!(lines[1].starts_with("book NQZ3 id=8 bid=0.000000010 x 4"), "{}", lines[1]);
        assert!(lines[1].ends_with("last=0.000000042 x 2"), "{}", lines[1]);
    }

    #[test]
    fn verify_counts_order() {
        let mut v = VerifyOrder::default();
        for seq in [1, 2, 3, 2, 5] {
            v.on_message(&decode(&frame(b"T", seq, b"")).expect("frame"));
        }
        assert_eq!(v.counters(), vec![("verified", 3), ("out_of_order", 1), ("skipped", 1)]);
    }

    #[test]
    fn synthetic_work_takes_at_least_its_time() {
        let f = frame(b"T", 1, b"");
        let mut w = SyntheticWork { ns: 200_000 };
        let t = std::time::Instant::now();
        w.on_message(&decode(&f).expect("frame"));
        assert!(t.elapsed() >= std::time::Duration::from_micros(200));
    }
}
