//! What a worker does with each message: the [`Handler`] trait and the
//! built-in handlers (latency only, synthetic work, order books from DBN
//! records, last value per topic, order check).
//!
//! The handlers that keep state per key are bounded ([`HandlerLimits`]), so no
//! publisher can grow a worker's memory without end: a new topic, instrument or
//! order past a bound is refused, counted under its reason in the handler's
//! counters (`refused_REASON`, in the run report) and said on stderr at a
//! bounded rate ([`Handler::refusal_lines`], a [`crate::diag::Refusals`]). The
//! check is a length compare where a new key is inserted, never on the path of
//! a key already held.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::BuildHasherDefault;

use dbn::{MboMsg, Mbp10Msg, Mbp1Msg, TradeMsg, UNDEF_PRICE};
use hashbrown::hash_map::Entry;

use super::book::{Anomalies, BookRefusal, MboEvent, OrderBook, OrderBudget};
use super::sequence::{tail_word, WordHasher};
use crate::diag::{quoted, Refusals, SUMMARY_INTERVAL_NS};
use crate::wire::dbn::{get, not_a_record, AlignedRecord};
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

    /// The lines due at `now_ns` about what the handler refused (a new key past
    /// one of its [`HandlerLimits`]): the first of each reason, then a summary
    /// per [`SUMMARY_INTERVAL_NS`]; at the `end`, whatever went unsaid. The
    /// worker asks once per round (never per message) and says them; what is
    /// refused until the next call is counted at `now_ns`.
    fn refusal_lines(&mut self, _now_ns: u64, _end: bool) -> Vec<String> {
        Vec::new()
    }

    /// What the handler refused so far, by reason (one of [`REFUSAL_REASONS`]): read, without
    /// allocating, by the worker core once per report period to publish the live counts.
    fn refusals(&self) -> Option<&Refusals> {
        None
    }
}

/// Every reason a handler refuses a new key, or a message it cannot read, under (counted as
/// `refused_REASON`): `last`'s topics and bytes, `verify`'s topics, `book`'s instruments,
/// orders and price levels, and its payloads that are not one DBN record (`not_dbn`).
pub const REFUSAL_REASONS: [&str; 7] =
    ["last_full", "last_too_big", "verify_full", "instruments_full", "orders_full", "levels_full", "not_dbn"];

/// How much the handlers that keep state per key may keep, per handler (per
/// worker, or per shard's reader inline). The defaults are sized for whole
/// real feeds. What each costs was measured as resident memory with the
/// binary's allocator (mimalloc), the maps filled to just under half (the worst
/// case: hashbrown fills a table to 7/8, then doubles it, and the allocator
/// keeps the tables outgrown for a while); it is stated with each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerLimits {
    /// Most topics the `last` and `verify` handlers keep: 2 Mi. The largest
    /// topic universe of a real feed, the US options market's (OPRA lists about
    /// 1.5 million series), fits on one worker. `verify` keeps a topic in about
    /// 150 B (a topic of up to 24 bytes; 330 B one of 255), so at most about
    /// 660 MiB.
    pub max_topics: usize,
    /// Most bytes of topics and values the `last` handler keeps (its values
    /// counted by capacity): 512 MiB. 2 Mi topics of MBP-1 records (80 B) with
    /// 21-byte option symbols take 200 MiB; MBP-10 records (368 B) fit for 1.3 Mi
    /// topics. Its table and the allocator's rounding add up to 140 B a topic,
    /// so `last` holds at most about 800 MiB.
    pub max_value_bytes: usize,
    /// Most instruments the `book` handler keeps: 256 Ki. A US equity venue's
    /// MBO feed (Nasdaq TotalView) carries about 12 thousand symbols, so this
    /// holds twenty such feeds on one worker. An instrument costs 350 B with a
    /// top of book only, 560 B with a book and its first order (a book starts
    /// empty), 770 B so with a 255-byte topic, so at most about 190 MiB before
    /// its orders.
    pub max_instruments: usize,
    /// Most resting orders across the `book` handler's books: 4 Mi. A busy
    /// instrument (a big US equity, an index future) rests thousands to tens of
    /// thousands of orders, so this holds hundreds of the busiest books in full.
    /// An order costs 85 to 150 B (its map entry, at most one price level, and
    /// the tables and vectors outgrown), so at most about 600 MiB.
    pub max_orders: usize,
}

impl Default for HandlerLimits {
    fn default() -> Self {
        HandlerLimits {
            max_topics: 2 << 20,
            max_value_bytes: 512 << 20,
            max_instruments: 256 << 10,
            max_orders: 4 << 20,
        }
    }
}

/// What a handler refused, by reason: a [`Refusals`] fed at the time of the
/// worker's last round, and the lines it returned, due to be said.
struct Refused {
    log: Refusals,
    now_ns: u64,
    lines: Vec<String>,
}

impl Refused {
    /// Refusals of the handler `name` (lines start `handler NAME: refused`).
    fn new(name: &str) -> Self {
        Refused { log: Refusals::new(format!("handler {name}"), SUMMARY_INTERVAL_NS), now_ns: 0, lines: Vec::new() }
    }

    /// Count one refusal; `detail` is formatted only for the first of a reason.
    #[cold]
    fn refuse(&mut self, reason: &'static str, detail: &dyn Display) {
        if let Some(l) = self.log.refuse(reason, detail, self.now_ns) {
            self.lines.push(l);
        }
    }

    /// The refusals counted so far under `reason`.
    fn count(&self, reason: &str) -> u64 {
        self.log.count(reason)
    }

    /// [`Handler::refusal_lines`].
    fn lines(&mut self, now_ns: u64, end: bool) -> Vec<String> {
        self.now_ns = now_ns;
        let due = if end { self.log.flush() } else { self.log.due(now_ns) };
        self.lines.extend(due);
        std::mem::take(&mut self.lines)
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
                // Digits past u64: the same bound, not "unknown handler".
                Some(Err(e)) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                    Err(format!("{s}: at most work:{MAX_WORK_NS} (1 s of work per message)"))
                }
                Some(Err(_)) => Err(format!("`{s}`: work:NANOS takes a whole number of nanoseconds")),
                None => Err(format!("unknown handler `{s}` (expected latency, book, last, verify or work:NANOS)")),
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
    /// The reasons this handler can refuse a new key under (a part of [`REFUSAL_REASONS`]).
    pub fn refusal_reasons(&self) -> &'static [&'static str] {
        match self {
            HandlerSpec::Latency | HandlerSpec::Work { .. } => &[],
            HandlerSpec::Last => &REFUSAL_REASONS[0..2],
            HandlerSpec::Verify => &REFUSAL_REASONS[2..3],
            HandlerSpec::Book => &REFUSAL_REASONS[3..7],
        }
    }

    pub fn build(&self) -> Box<dyn Handler> {
        match *self {
            HandlerSpec::Latency => Box::new(LatencyOnly),
            HandlerSpec::Work { ns } => Box::new(SyntheticWork { ns }),
            HandlerSpec::Book => Box::new(BookHandler::new(HandlerLimits::default())),
            HandlerSpec::Last => Box::new(LastValueBook::new(HandlerLimits::default())),
            HandlerSpec::Verify => Box::new(VerifyOrder::new(HandlerLimits::default())),
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
        let until = crate::clock::monotonic_ns().saturating_add(self.ns);
        while crate::clock::monotonic_ns() < until {
            std::hint::spin_loop();
        }
    }
}

/// The last payload of every topic; replacing a value reuses its buffer.
/// Bounded by [`HandlerLimits::max_topics`] and [`HandlerLimits::max_value_bytes`]
/// as the LVC's cache is: a new topic that does not fit is not kept
/// (`last_full`); a topic whose new value would take the book over its bytes
/// loses its old value (`last_too_big`), so that no stale value is kept.
pub struct LastValueBook {
    book: HashMap<Box<[u8]>, Vec<u8>, BuildHasherDefault<WordHasher>>,
    /// Bytes of the topics and of the values' buffers (by capacity).
    bytes: usize,
    limits: HandlerLimits,
    refused: Refused,
}

impl LastValueBook {
    /// A book within `limits` (`max_topics`, `max_value_bytes`).
    pub fn new(limits: HandlerLimits) -> Self {
        LastValueBook { book: HashMap::default(), bytes: 0, limits, refused: Refused::new("last") }
    }
    pub fn get(&self, topic: &[u8]) -> Option<&[u8]> {
        self.book.get(topic).map(Vec::as_slice)
    }
    pub fn len(&self) -> usize {
        self.book.len()
    }
    pub fn is_empty(&self) -> bool {
        self.book.is_empty()
    }
    /// Bytes held: topics and values' buffers (by capacity).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A known topic's value is longer than its buffer: grow it to the exact size if the
    /// book's bytes allow, else drop the topic's value.
    #[cold]
    fn grow(&mut self, topic: &[u8], payload: &[u8]) {
        let Some(v) = self.book.get_mut(topic) else { return };
        let held = self.bytes - v.capacity();
        if held + payload.len() > self.limits.max_value_bytes {
            self.book.remove(topic);
            self.bytes = held - topic.len();
            let (len, max) = (payload.len(), self.limits.max_value_bytes);
            let topic = String::from_utf8_lossy(topic);
            self.refused.refuse(
                "last_too_big",
                &format_args!(
                    "topic `{}`: a value of {len} B would take the book over its {max} B; its old value is \
                     dropped, not kept stale",
                    quoted(&topic)
                ),
            );
            return;
        }
        v.clear();
        v.reserve_exact(payload.len());
        v.extend_from_slice(payload);
        self.bytes = held + v.capacity();
    }

    /// A topic not held yet: kept if the book has room.
    #[cold]
    fn insert(&mut self, topic: &[u8], payload: &[u8]) {
        let need = topic.len() + payload.len();
        if self.book.len() >= self.limits.max_topics || self.bytes + need > self.limits.max_value_bytes {
            let (topics, bytes) = (self.book.len(), self.bytes);
            let HandlerLimits { max_topics, max_value_bytes, .. } = self.limits;
            let topic = String::from_utf8_lossy(topic);
            self.refused.refuse(
                "last_full",
                &format_args!(
                    "topic `{}` ({need} B): the book holds {topics} topics in {bytes} B, at most {max_topics} in \
                     {max_value_bytes} B; a new topic is not kept",
                    quoted(&topic)
                ),
            );
            return;
        }
        let value = payload.to_vec();
        self.bytes += topic.len() + value.capacity();
        self.book.insert(topic.into(), value);
    }
}

impl Handler for LastValueBook {
    #[inline]
    fn on_message(&mut self, msg: &FrameView<'_>) {
        match self.book.get_mut(msg.topic) {
            Some(v) if msg.payload.len() <= v.capacity() => {
                v.clear();
                v.extend_from_slice(msg.payload);
            }
            Some(_) => self.grow(msg.topic, msg.payload),
            None => self.insert(msg.topic, msg.payload),
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("topics", self.book.len() as u64),
            ("bytes", self.bytes as u64),
            ("refused_last_full", self.refused.count("last_full")),
            ("refused_last_too_big", self.refused.count("last_too_big")),
        ]
    }

    fn refusal_lines(&mut self, now_ns: u64, end: bool) -> Vec<String> {
        self.refused.lines(now_ns, end)
    }

    fn refusals(&self) -> Option<&Refusals> {
        Some(&self.refused.log)
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

/// The book handler's instruments by [`book_key`]: hashbrown's map, whose `entry` reserves room
/// only to insert (std's reserves on every call, a record's lookup of a known instrument).
type InstrumentMap = hashbrown::HashMap<u64, Instrument, BuildHasherDefault<WordHasher>>;

/// What the book handler keeps per instrument.
#[derive(Default)]
struct Instrument {
    /// The topic (symbol) of its last record, for the report: a replay names a record by its
    /// instrument's symbol when it was received, so an id renamed mid-feed shows its new name.
    topic: Box<[u8]>,
    /// The topic of its first record, when a later one differed (the report says both).
    first_topic: Option<Box<[u8]>>,
    /// `topic`'s bytes as one word ([`tail_word`]: every byte of a topic of up to 8), so a
    /// record's topic is checked against it by its length and one word, not a call to `bcmp`.
    topic_word: u64,
    book: Option<Box<OrderBook>>,
    tob: TopOfBook,
}

impl Instrument {
    fn new(topic: &[u8]) -> Self {
        Instrument { topic: topic.into(), topic_word: tail_word(topic), ..Default::default() }
    }

    /// Is `topic` its last record's topic? Up to 8 bytes by their length and word, longer ones
    /// by their bytes.
    #[inline]
    fn named(&self, topic: &[u8]) -> bool {
        topic.len() == self.topic.len()
            && if topic.len() <= 8 { tail_word(topic) == self.topic_word } else { *topic == *self.topic }
    }
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
/// types, are counted. Holds at most [`HandlerLimits::max_instruments`]
/// instruments (a record of another is not applied: `instruments_full`) and
/// [`HandlerLimits::max_orders`] resting orders across its books (an order
/// past them is not added: `orders_full`), and at most
/// [`super::book::MAX_LEVELS_PER_SIDE`] price levels a side of a book (an order at a new
/// price past them is not added: `levels_full`).
pub struct BookHandler {
    /// By [`book_key`]: a venue's instrument ids are its own, so two venues' instrument 7 are two books.
    instruments: InstrumentMap,
    max_instruments: usize,
    budget: OrderBudget,
    rec: Box<AlignedRecord>,
    events: [u64; ACTIONS.len()],
    mbp1: u64,
    mbp10: u64,
    trades: u64,
    other_records: u64,
    anomalies: Anomalies,
    refused: Refused,
}

impl Default for BookHandler {
    fn default() -> Self {
        Self::new(HandlerLimits::default())
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
    /// Books within `limits` (`max_instruments`, `max_orders`).
    pub fn new(limits: HandlerLimits) -> Self {
        BookHandler {
            instruments: InstrumentMap::with_capacity_and_hasher(1024, Default::default()),
            max_instruments: limits.max_instruments,
            budget: OrderBudget::new(limits.max_orders),
            rec: Box::default(),
            events: [0; ACTIONS.len()],
            mbp1: 0,
            mbp10: 0,
            trades: 0,
            other_records: 0,
            anomalies: Anomalies::default(),
            refused: Refused::new("book"),
        }
    }

    /// A payload that is not one DBN record (a generated feed's, a foreign publisher's): not
    /// applied, counted and said like the refusals of a bound.
    #[cold]
    fn not_dbn(&mut self, topic: &[u8], payload: &[u8]) {
        let why = not_a_record(payload).map_or_else(|| "unreadable".to_string(), |w| w.to_string());
        self.refused.refuse(
            "not_dbn",
            &format_args!(
                "topic `{}`: a payload of {why} is not a DBN record; not applied",
                quoted(&String::from_utf8_lossy(topic))
            ),
        );
    }

    /// A record of instrument `id` (on `topic`) that is not held, when the most are.
    #[cold]
    fn instruments_full(&mut self, id: u32, topic: &[u8]) {
        let (held, topic) = (self.instruments.len(), String::from_utf8_lossy(topic));
        self.refused.refuse(
            "instruments_full",
            &format_args!(
                "instrument {id} (topic `{}`): the books hold their most instruments ({held}); its records are not applied",
                quoted(&topic)
            ),
        );
    }

    /// An event of instrument `id` that would add a price level to a side holding its most.
    #[cold]
    fn levels_full(&mut self, id: u32, e: &MboEvent) {
        let (side, max) = (if e.side == b'A' { "ask" } else { "bid" }, self.budget.max_levels());
        self.refused.refuse(
            "levels_full",
            &format_args!(
                "order {} of instrument {id}: its {side} side holds its most price levels ({max}); \
                 a new price {} is not added",
                e.order_id,
                dbn::pretty::fmt_px(e.price)
            ),
        );
    }

    /// An order of instrument `id` that the order budget has no room for.
    #[cold]
    fn orders_full(&mut self, id: u32, order_id: u64) {
        let held = self.budget.held();
        self.refused.refuse(
            "orders_full",
            &format_args!(
                "order {order_id} of instrument {id}: the books hold their most resting orders ({held}); it is not added"
            ),
        );
    }

    /// Best bid and ask (price, size) of a venue's (`publisher_id`'s) instrument: from its MBO
    /// book when it has one, else from the last MBP record.
    pub fn bbo(&self, publisher_id: u16, instrument_id: u32) -> Option<(Option<PxSize>, Option<PxSize>)> {
        let i = self.instruments.get(&book_key(publisher_id, instrument_id))?;
        Some(match &i.book {
            Some(b) => (b.bids.best().map(|l| (l.price, l.size)), b.asks.best().map(|l| (l.price, l.size))),
            None => (i.tob.bid.map(|(p, s)| (p, s as u64)), i.tob.ask.map(|(p, s)| (p, s as u64))),
        })
    }

    /// Bid and ask price levels of a venue's (`publisher_id`'s) instrument's MBO book.
    pub fn levels(&self, publisher_id: u16, instrument_id: u32) -> Option<(usize, usize)> {
        let b = self.instruments.get(&book_key(publisher_id, instrument_id))?.book.as_ref()?;
        Some((b.bids.len(), b.asks.len()))
    }

    /// Anomalies counted so far.
    pub fn anomalies(&self) -> Anomalies {
        self.anomalies
    }
}

/// The key of a venue's instrument: its publisher id (DBN's record header) above its id.
#[inline]
fn book_key(publisher_id: u16, instrument_id: u32) -> u64 {
    (u64::from(publisher_id) << 32) | u64::from(instrument_id)
}

/// The instrument's state (by [`book_key`]), made on first sight (the only allocation for it;
/// another when its topic changes); None for a new one when `max` are held.
#[inline]
fn instrument<'a>(map: &'a mut InstrumentMap, key: u64, topic: &[u8], max: usize) -> Option<&'a mut Instrument> {
    let held = map.len();
    match map.entry(key) {
        Entry::Occupied(i) => {
            let i = i.into_mut();
            if !i.named(topic) {
                renamed(i, topic);
            }
            Some(i)
        }
        Entry::Vacant(_) if held >= max => None,
        Entry::Vacant(v) => Some(v.insert(Instrument::new(topic))),
    }
}

/// An instrument's record came on another topic than its last: the report shows the new one (and
/// the first).
#[cold]
fn renamed(i: &mut Instrument, topic: &[u8]) {
    let old = std::mem::replace(&mut i.topic, topic.into());
    i.topic_word = tail_word(topic);
    i.first_topic.get_or_insert(old);
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
            self.not_dbn(msg.topic, msg.payload);
            return;
        };
        let (id, publisher) = (rec.header().instrument_id, rec.header().publisher_id);
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
        if let Parsed::Mbo(e) = &parsed {
            if let Some(k) = ACTIONS.iter().position(|(a, _)| *a == e.action) {
                self.events[k] += 1;
            }
        }
        let Some(inst) = instrument(&mut self.instruments, book_key(publisher, id), msg.topic, self.max_instruments)
        else {
            self.instruments_full(id, msg.topic);
            return;
        };
        match parsed {
            Parsed::Mbo(e) => {
                if matches!(e.action, b'T' | b'F') {
                    inst.tob.last_trade = Some((e.price, e.size));
                }
                let book = inst.book.get_or_insert_with(Box::default);
                match book.apply(&e, &mut self.anomalies, &mut self.budget) {
                    None => {}
                    Some(BookRefusal::OrdersFull) => self.orders_full(id, e.order_id),
                    Some(BookRefusal::LevelsFull) => self.levels_full(id, &e),
                }
            }
            Parsed::Top { bid, ask, depth, trade } => {
                let tob = &mut inst.tob;
                tob.bid = bid;
                tob.ask = ask;
                if let Some(d) = depth {
                    tob.depth = d;
                }
                if trade.is_some() {
                    tob.last_trade = trade;
                }
            }
            Parsed::Trade(p, s) => inst.tob.last_trade = Some((p, s)),
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
        ];
        c.extend(self.anomalies.named());
        c.extend(ACTIONS.iter().zip(self.events).map(|((_, name), n)| (*name, n)));
        c.push(("refused_instruments_full", self.refused.count("instruments_full")));
        c.push(("refused_orders_full", self.refused.count("orders_full")));
        c.push(("refused_levels_full", self.refused.count("levels_full")));
        c.push(("refused_not_dbn", self.refused.count("not_dbn")));
        c
    }

    fn refusal_lines(&mut self, now_ns: u64, end: bool) -> Vec<String> {
        self.refused.lines(now_ns, end)
    }

    fn refusals(&self) -> Option<&Refusals> {
        Some(&self.refused.log)
    }

    /// One line per instrument (the first [`SUMMARY_INSTRUMENTS`] by id, then publisher):
    /// `book SYMBOL id=ID bid=PX x SIZE ask=PX x SIZE levels=B/A orders=N last=PX x SIZE`, the
    /// SYMBOL its last record's topic (`SYMBOL (first FIRST)` when its first was another), with
    /// `publisher=P` after the id when the books hold more than one publisher's (venue's).
    fn summary(&self) -> Vec<String> {
        use std::fmt::Write as _;
        let mut keys: Vec<u64> = self.instruments.keys().copied().collect();
        keys.sort_unstable_by_key(|k| (*k as u32, *k >> 32));
        let venues = keys.first().is_some_and(|k0| keys.iter().any(|k| k >> 32 != k0 >> 32));
        let mut lines = Vec::new();
        for key in keys.into_iter().take(SUMMARY_INSTRUMENTS) {
            let i = &self.instruments[&key];
            let (id, publisher) = (key as u32, (key >> 32) as u16);
            let (bid, ask) = self.bbo(publisher, id).unwrap_or((None, None));
            let mut s = format!("book {}", String::from_utf8_lossy(&i.topic));
            if let Some(first) = &i.first_topic {
                let _ = write!(s, " (first {})", String::from_utf8_lossy(first));
            }
            let _ = write!(s, " id={id}");
            if venues {
                let _ = write!(s, " publisher={publisher}");
            }
            s.push_str(" bid=");
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
/// Holds at most [`HandlerLimits::max_topics`] topics: a message of a topic it
/// has no room for is not checked (`verify_full`).
pub struct VerifyOrder {
    last: HashMap<Box<[u8]>, (u64, u64), BuildHasherDefault<WordHasher>>,
    max_topics: usize,
    verified: u64,
    out_of_order: u64,
    skipped: u64,
    refused: Refused,
}

impl VerifyOrder {
    /// A check of at most `limits.max_topics` topics.
    pub fn new(limits: HandlerLimits) -> Self {
        VerifyOrder {
            last: HashMap::default(),
            max_topics: limits.max_topics,
            verified: 0,
            out_of_order: 0,
            skipped: 0,
            refused: Refused::new("verify"),
        }
    }

    /// A message of a topic not held, when the check holds its most topics.
    #[cold]
    fn full(&mut self, topic: &[u8]) {
        let (held, topic) = (self.last.len(), String::from_utf8_lossy(topic));
        self.refused.refuse(
            "verify_full",
            &format_args!(
                "topic `{}`: the check holds its most topics ({held}); messages of this one are not checked",
                quoted(&topic)
            ),
        );
    }
}

impl Handler for VerifyOrder {
    #[inline]
    fn on_message(&mut self, msg: &FrameView<'_>) {
        let (session, seq) = (msg.header.session_id, msg.header.topic_seq);
        match self.last.get_mut(msg.topic) {
            Some(last) if last.0 == session => {
                // A publisher's sequence may be anything: u64::MAX has no next (no overflow).
                if last.1.checked_add(1) == Some(seq) {
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
                if self.last.len() >= self.max_topics {
                    return self.full(msg.topic);
                }
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
        vec![
            ("verified", self.verified),
            ("out_of_order", self.out_of_order),
            ("skipped", self.skipped),
            ("topics", self.last.len() as u64),
            ("refused_verify_full", self.refused.count("verify_full")),
        ]
    }

    fn refusal_lines(&mut self, now_ns: u64, end: bool) -> Vec<String> {
        self.refused.lines(now_ns, end)
    }

    fn refusals(&self) -> Option<&Refusals> {
        Some(&self.refused.log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each handler's `refused_*` counters are its spec's refusal reasons, the ones the worker
    /// publishes live and `/metrics` labels (a reason missing there would not show until the end).
    #[test]
    fn every_refusal_counter_is_a_published_reason() {
        for spec in ["latency", "work:1", "book", "last", "verify"] {
            let spec: HandlerSpec = spec.parse().expect("a handler");
            let h = spec.build();
            let counted: Vec<String> =
                h.counters().iter().filter_map(|(n, _)| n.strip_prefix("refused_")).map(str::to_string).collect();
            assert_eq!(counted, spec.refusal_reasons(), "{spec}");
            assert_eq!(h.refusals().is_some(), !counted.is_empty(), "{spec}");
        }
    }
    use crate::wire::{decode, encode, Header};

    #[test]
    fn specs_parse_and_print() {
        for s in ["latency", "book", "last", "verify", "work:250"] {
            assert_eq!(s.parse::<HandlerSpec>().expect("parses").to_string(), s);
        }
        assert!("work:x".parse::<HandlerSpec>().is_err());
        assert!("work:1000000000".parse::<HandlerSpec>().is_ok());
        assert!("work:18446744073709551615".parse::<HandlerSpec>().is_err(), "the audit's wrapping value");
        // Past u64 it is the same bound, not an unknown handler; a non-number says what work takes.
        let over = "work:99999999999999999999".parse::<HandlerSpec>().unwrap_err();
        assert!(over.contains("at most work:1000000000"), "{over}");
        assert!("work:x".parse::<HandlerSpec>().unwrap_err().contains("whole number of nanoseconds"));
        assert!("sleep".parse::<HandlerSpec>().is_err());
    }

    /// A data frame on `topic` with both sequences `seq`.
    fn frame(topic: &[u8], seq: u64, payload: &[u8]) -> Vec<u8> {
        encode(topic, &Header::data(seq, 0), payload)
    }

    #[test]
    fn book_keeps_last_value() {
        let mut book = LastValueBook::new(HandlerLimits::default());
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

    /// Two venues' instrument 7 are two books, shown apart; an id renamed mid-feed shows its
    /// last topic and its first. Main keyed books by instrument id alone (one merged book, bid
    /// 100 x 8) and labelled a book by its first topic.
    #[test]
    fn books_are_per_venue_and_named_by_their_last_topic() {
        let mut h = BookHandler::default();
        let mut other = mbo(7, 2, b'A', b'B', 100, 3);
        other.hd.publisher_id = 2;
        let feed: [(&[u8], MboMsg); 3] =
            [(b"HHH", mbo(7, 1, b'A', b'B', 100, 5)), (b"HHH", other), (b"III", mbo(7, 3, b'A', b'A', 101, 1))];
        for (i, (topic, m)) in feed.iter().enumerate() {
            h.on_message(&decode(&frame(topic, i as u64 + 1, &dbn_bytes(m))).expect("frame"));
        }
        assert_eq!(h.bbo(1, 7), Some((Some((100, 5)), Some((101, 1)))));
        assert_eq!(h.bbo(2, 7), Some((Some((100, 3)), None)));
        let lines = h.summary();
        assert!(lines[0].starts_with("book III (first HHH) id=7 publisher=1 bid="), "{lines:?}");
        assert!(lines[1].starts_with("book HHH id=7 publisher=2 bid="), "{lines:?}");
    }

    /// `Instrument::named` (a topic checked by its length and one word up to 8 bytes, by its bytes
    /// past that) takes a topic for the last one only when they are equal: each topic of 0 to 16
    /// bytes against itself and against every one-byte change of it, and two of 9 bytes that
    /// share their first and last 4 (the same `tail_word`). Fails if `named` trusted the word
    /// past 8 bytes, or `tail_word` left a byte out.
    #[test]
    fn a_topic_is_named_only_by_an_equal_one() {
        for len in 0..=16usize {
            let topic: Vec<u8> = (0..len).map(|k| b'A' + k as u8).collect();
            let i = Instrument::new(&topic);
            assert!(i.named(&topic), "{len}");
            for k in 0..len {
                let mut other = topic.clone();
                other[k] ^= 0x20;
                assert!(!i.named(&other), "len {len}, byte {k}");
            }
            assert!(!i.named(&topic[..len.saturating_sub(1)]) || len == 0, "len {len}: a prefix");
        }
        let i = Instrument::new(b"ESZ3xNQZ3");
        assert_eq!(tail_word(b"ESZ3xNQZ3"), tail_word(b"ESZ3yNQZ3"));
        assert!(!i.named(b"ESZ3yNQZ3"));
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
        top.hd.publisher_id = 1;
        top.levels[0] = dbn::BidAskPair { bid_px: 10, ask_px: 12, bid_sz: 4, ask_sz: 6, bid_ct: 1, ask_ct: 1 };
        feed.push(dbn_bytes(&top));
        feed.push(b"not a record".to_vec());
        for (i, p) in feed.iter().enumerate() {
            let topic: &[u8] = if i < 5 { b"ESZ3" } else { b"NQZ3" };
            h.on_message(&decode(&frame(topic, i as u64 + 1, p)).expect("frame"));
        }
        assert_eq!(h.bbo(1, 7), Some((Some((99_000_000_000, 1)), Some((101_000_000_000, 3)))));
        assert_eq!(h.levels(1, 7), Some((1, 1)));
        assert_eq!(h.bbo(1, 8), Some((Some((10, 4)), Some((12, 6)))));
        assert_eq!(h.anomalies().unknown_order, 1);
        let c: HashMap<_, _> = h.counters().into_iter().collect();
        assert_eq!((c["mbo_add"], c["mbo_cancel"], c["mbp1"], c["refused_not_dbn"], c["instruments"]), (3, 2, 1, 1, 2));
        let lines = h.summary();
        assert_eq!(lines[0], "book ESZ3 id=7 bid=99.000000000 x 1 ask=101.000000000 x 3 levels=1/1 orders=2");
        assert!(lines[1].starts_with("book NQZ3 id=8 bid=0.000000010 x 4"), "{}", lines[1]);
        assert!(lines[1].ends_with("last=0.000000042 x 2"), "{}", lines[1]);
    }

    #[test]
    fn verify_counts_order() {
        let mut v = VerifyOrder::new(HandlerLimits::default());
        for seq in [1, 2, 3, 2, 5] {
            v.on_message(&decode(&frame(b"T", seq, b"")).expect("frame"));
        }
        assert_eq!(
            v.counters(),
            vec![("verified", 3), ("out_of_order", 1), ("skipped", 1), ("topics", 1), ("refused_verify_full", 0)]
        );
        // The last sequence there is: the same again is out of order, not an overflow.
        let mut v = VerifyOrder::new(HandlerLimits::default());
        for seq in [u64::MAX - 1, u64::MAX, u64::MAX] {
            v.on_message(&decode(&frame(b"T", seq, b"")).expect("frame"));
        }
        assert_eq!(v.counters()[..3], [("verified", 1), ("out_of_order", 1), ("skipped", 1)]);
    }

    const S: u64 = 1_000_000_000;

    /// Limits that are all `n`, with `bytes` for the last-value book.
    fn limits(n: usize, bytes: usize) -> HandlerLimits {
        HandlerLimits { max_topics: n, max_value_bytes: bytes, max_instruments: n, max_orders: n }
    }

    /// Feed `h` a frame of `topic` with sequence `seq` and `payload`.
    fn feed(h: &mut dyn Handler, topic: &[u8], seq: u64, payload: &[u8]) {
        h.on_message(&decode(&frame(topic, seq, payload)).expect("frame"));
    }

    /// What `h` says of refusals after its first line: those counted since are not said at
    /// `quiet_s` s but in the summary `interval` at 12 s; one more, `(topic, seq, payload)`, fed
    /// after it, is said at the end (13 s) in `end`.
    fn assert_summarised(
        h: &mut dyn Handler,
        quiet_s: u64,
        interval: &str,
        (topic, seq, payload): (&[u8], u64, &[u8]),
        end: &str,
    ) {
        assert!(h.refusal_lines(quiet_s * S, false).is_empty(), "counted, said in the next summary");
        assert_eq!(h.refusal_lines(12 * S, false), [interval]);
        feed(h, topic, seq, payload);
        assert_eq!(h.refusal_lines(13 * S, true), [end]);
    }

    fn counter(h: &dyn Handler, name: &str) -> u64 {
        h.counters().into_iter().find(|(k, _)| *k == name).map_or(u64::MAX, |(_, v)| v)
    }

    /// The last-value book keeps at most its topics and bytes: a new topic past either is not
    /// kept, a known topic still takes a new value that fits (in its buffer, or grown), and one
    /// whose value would take the book over its bytes loses its old value rather than keep it
    /// stale. Each refusal is counted by reason; the first of each is said at once, then one
    /// summary per interval, and at the end what went unsaid.
    #[test]
    fn the_last_value_book_keeps_within_its_topics_and_bytes() {
        let mut b = LastValueBook::new(limits(2, 40));
        assert!(b.refusal_lines(S, false).is_empty());
        feed(&mut b, b"ESH6", 1, &[1; 10]);
        feed(&mut b, b"NQ", 1, &[2; 10]);
        assert_eq!((b.len(), b.bytes()), (2, 26));
        feed(&mut b, b"YM", 1, &[3; 4]);
        assert_eq!((b.len(), b.get(b"YM"), counter(&b, "refused_last_full")), (2, None, 1), "a third topic");
        let lines = b.refusal_lines(S, false);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("handler last: refused (last_full): topic `YM` (6 B): the book holds 2"),
            "{lines:?}"
        );
        // Known topics take new values: a shorter one in its buffer, a longer one that fits grown.
        feed(&mut b, b"ESH6", 2, &[4; 4]);
        assert_eq!((b.get(b"ESH6"), b.bytes()), (Some(&[4u8; 4][..]), 26));
        feed(&mut b, b"ESH6", 3, &[5; 20]);
        assert_eq!((b.get(b"ESH6"), b.bytes()), (Some(&[5u8; 20][..]), 36));
        // One that would take the book over 40 bytes: its old value goes, not kept stale.
        feed(&mut b, b"NQ", 2, &[6; 30]);
        assert_eq!((b.get(b"NQ"), b.len(), b.bytes(), counter(&b, "refused_last_too_big")), (None, 1, 24, 1));
        // Room again: a new topic is kept; then the bytes bound refuses one more.
        feed(&mut b, b"YM", 2, &[7; 2]);
        assert_eq!((b.get(b"YM"), b.bytes()), (Some(&[7u8; 2][..]), 28));
        feed(&mut b, b"YM", 3, &[8; 12]);
        assert_eq!((b.get(b"YM"), b.bytes()), (Some(&[8u8; 12][..]), 38), "grown to the last byte");
        feed(&mut b, b"ESH6", 4, &[9; 20]);
        assert_eq!(b.get(b"ESH6"), Some(&[9u8; 20][..]), "a value that fits its buffer needs no room");
        let mut c = LastValueBook::new(limits(10, 20));
        feed(&mut c, b"A", 1, &[0; 15]);
        feed(&mut c, b"B", 1, &[0; 5]);
        assert_eq!((c.len(), c.bytes(), counter(&c, "refused_last_full")), (1, 16, 1), "over the bytes");
        // The lines: the first of the new reason at once, more of a reason in a summary per interval.
        let lines = b.refusal_lines(2 * S, false);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("handler last: refused (last_too_big): topic `NQ`: a value of 30 B"), "{lines:?}");
        feed(&mut b, b"CL", 1, &[0; 1]);
        feed(&mut b, b"GC", 1, &[0; 1]);
        assert_summarised(
            &mut b,
            3,
            "handler last: refused in the last 11s: last_full=2 (totals: last_full=3 last_too_big=1)",
            (b"SI", 1, &[0; 1]),
            "handler last: refused since the last line: last_full=1 (totals: last_full=4 last_too_big=1)",
        );
        assert_eq!((counter(&b, "topics"), counter(&b, "bytes")), (2, 38));
    }

    /// The order check holds at most its topics: messages of another are not checked, counted
    /// and said; the topics held are checked as before.
    #[test]
    fn the_order_check_keeps_within_its_topics() {
        let mut v = VerifyOrder::new(limits(1, 0));
        for (topic, seq) in [(&b"A"[..], 1), (b"A", 2), (b"B", 1), (b"B", 2), (b"A", 3), (b"A", 5)] {
            feed(&mut v, topic, seq, b"");
        }
        assert_eq!(
            v.counters(),
            vec![("verified", 3), ("out_of_order", 0), ("skipped", 1), ("topics", 1), ("refused_verify_full", 2)]
        );
        let lines = v.refusal_lines(S, false);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0]
                .starts_with("handler verify: refused (verify_full): topic `B`: the check holds its most topics (1)"),
            "{lines:?}"
        );
    }

    /// The book handler holds at most its instruments and, across its books, its orders: a
    /// record of another instrument is not applied, an order past the budget is not added; the
    /// books held still change, and a cancel makes room.
    #[test]
    fn the_book_handler_keeps_within_its_instruments_and_orders() {
        let mut h = BookHandler::new(limits(2, 0));
        let mut top = Mbp1Msg::default();
        top.hd.instrument_id = 9;
        for (topic, rec) in [
            (&b"ESZ3"[..], dbn_bytes(&mbo(7, 1, b'A', b'B', 100, 5))),
            (b"ESZ3", dbn_bytes(&mbo(7, 2, b'A', b'A', 102, 3))),
            (b"ESZ3", dbn_bytes(&mbo(7, 3, b'A', b'B', 101, 1))),
            (b"NQZ3", dbn_bytes(&mbo(8, 4, b'A', b'B', 200, 1))),
            (b"YMZ3", dbn_bytes(&top)),
            (b"ESZ3", dbn_bytes(&mbo(7, 1, b'C', b'B', 100, 2))),
        ] {
            feed(&mut h, topic, 1, &rec);
        }
        let c: HashMap<_, _> = h.counters().into_iter().collect();
        assert_eq!((c["instruments"], c["orders"], c["mbo_add"]), (2, 2, 4), "{c:?}");
        assert_eq!((c["refused_orders_full"], c["refused_instruments_full"]), (2, 1), "{c:?}");
        assert_eq!(h.bbo(1, 7), Some((Some((100, 3)), Some((102, 3)))), "the held orders still change");
        assert_eq!((h.bbo(1, 8), h.bbo(1, 9)), (Some((None, None)), None), "8's order was past the budget, 9 not held");
        feed(&mut h, b"ESZ3", 1, &dbn_bytes(&mbo(7, 2, b'C', b'A', 102, 3)));
        feed(&mut h, b"NQZ3", 1, &dbn_bytes(&mbo(8, 4, b'A', b'B', 200, 1)));
        assert_eq!(h.bbo(1, 8), Some((Some((200, 1)), None)), "a whole cancel made room");
        let lines = h.refusal_lines(S, false);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("handler book: refused (orders_full): order 3 of instrument 7: the books hold their most resting orders (2)"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("handler book: refused (instruments_full): instrument 9 (topic `YMZ3`)"),
            "{lines:?}"
        );
    }

    /// A payload that is not one DBN record is counted and said like a refusal of a bound: the
    /// first at once with why, then a summary per interval, and at the end what went unsaid.
    /// Before, a generated feed into `--handler book` showed `not_dbn=4994` in the handler row
    /// and no line at all.
    #[test]
    fn the_book_handler_says_payloads_that_are_not_dbn_records() {
        let mut h = BookHandler::default();
        assert!(h.refusal_lines(S, false).is_empty());
        feed(&mut h, b"SYM0001", 1, &[7u8; 100]);
        feed(&mut h, b"ESZ3", 1, &dbn_bytes(&mbo(7, 1, b'A', b'B', 100, 5)));
        let lines = h.refusal_lines(S, false);
        assert_eq!(
            lines,
            ["handler book: refused (not_dbn): topic `SYM0001`: a payload of 100 bytes where its DBN header's length \
              byte says 28 is not a DBN record; not applied (the first; more are counted and summarised every 10s)"]
        );
        for (seq, payload) in [(2, &b"short"[..]), (3, &[0u8; 16][..])] {
            feed(&mut h, b"SYM0001", seq, payload);
        }
        assert_summarised(
            &mut h,
            2,
            "handler book: refused in the last 11s: not_dbn=2 (totals: not_dbn=3)",
            (b"SYM0001", 4, b""),
            "handler book: refused since the last line: not_dbn=1 (totals: not_dbn=4)",
        );
        assert_eq!((counter(&h, "refused_not_dbn"), counter(&h, "mbo_add")), (4, 1));
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
