//! Last Value Cache core (guide, chapter 5): socket-free, bounded, answers prefixes.
//!
//! A map from topic to the last whole message, with prefix lookups and hard
//! limits on topics and bytes.
//!
//! A message is a list of frames. Its *key* is what a SUB prefix filter sees:
//! for a one-frame mdsub frame the topic and its NUL (`ESH6\0`), for foreign
//! multipart traffic (`[topic][body]…`) the whole first frame, for a one-frame
//! message without a NUL in its first 256 bytes nothing (it is not cached:
//! there is no way to tell where its topic ends). A one-frame message with a
//! topic NUL is an mdsub frame and is cached only when the wire decoder takes
//! it ([`crate::wire::decode`]): one it refuses (unknown version or kind, wrong
//! payload length, …) is not cached ([`Update::BadFrame`]); an mdsub subscriber
//! would drop it, so the topic's last good value stays. A control frame (topic
//! [`CONTROL_TOPIC`]: a heartbeat, an end of stream) is never cached ([`Update::Control`]):
//! it says something of its publisher's run as it happens, and replayed to a late subscriber
//! it would speak of a run long over (or take a `--max-topics` slot from a data topic); the
//! proxy forwards it live all the same. Values sit in a `HashMap`
//! keyed by those bytes (one SipHash per message on the hot path, which resists
//! crafted topics; measured 3× cheaper than a `BTreeMap` walk over 1 000
//! topics, `benches/lvc.rs`), and the keys also sit in
//! a `BTreeSet`, touched only when a topic is added or removed, so a
//! subscription prefix is a range scan in topic order. Replacing a topic's value copies into the buffers the entry already
//! has: the steady state (known topics, sizes no larger than before) does not
//! allocate.

use std::collections::{BTreeSet, HashMap};
use std::ops::{Bound, Deref};

use crate::wire::{DecodeError, OneFrame, CONTROL_TOPIC, MAX_TOPIC_LEN};

/// Most frames a cached message may have; longer messages pass but are not cached.
pub const MAX_FRAMES: usize = 64;

/// Limits on what the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most distinct topics held.
    pub max_topics: usize,
    /// Most bytes held (keys plus message buffers, counted by capacity).
    pub max_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { max_topics: 100_000, max_bytes: 256 << 20 }
    }
}

/// What [`LastValueCache::update`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// A new topic was added.
    Inserted,
    /// A known topic's value was replaced.
    Replaced,
    /// A new topic did not fit (topic or byte limit); not cached.
    RejectedFull,
    /// A known topic's new value did not fit the byte limit; its old value was
    /// removed so that no stale value is served.
    EvictedTooBig,
    /// The message has no recognisable topic (one frame without a NUL, no
    /// frames, or more than [`MAX_FRAMES`] frames); not cached.
    Uncacheable,
    /// One frame with a topic NUL that the wire decoder refuses (why): not
    /// cached; the topic's last good value, if any, stays.
    BadFrame(DecodeError),
    /// An mdsub control frame (topic [`CONTROL_TOPIC`]: a heartbeat, an end of stream): news
    /// of its publisher's run as it happens, never a last value. Not cached; no topic's value
    /// is touched.
    Control,
}

/// Cache counters (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    pub inserted: u64,
    pub replaced: u64,
    pub rejected_full: u64,
    pub evicted_too_big: u64,
    pub uncacheable: u64,
    /// One-frame messages the wire decoder refuses ([`Update::BadFrame`]).
    pub bad_frames: u64,
    /// Control frames seen ([`Update::Control`]): forwarded live, never cached.
    pub control: u64,
}

/// One cached message: its frames concatenated, with their end offsets.
#[derive(Debug, Default)]
struct Entry {
    data: Vec<u8>,
    ends: Vec<u32>,
}

impl Entry {
    /// Bytes held for this entry: the key twice (map and ordered set) and the buffers.
    fn footprint(&self, key_len: usize) -> usize {
        2 * key_len + self.data.capacity() + self.ends.capacity() * std::mem::size_of::<u32>()
    }

    /// Copy `frames` in, growing the buffers only to the exact size needed
    /// (no amortised doubling, so the byte limit is checked on real sizes).
    fn fill<F: Deref<Target = [u8]>>(&mut self, frames: &[F], need_data: usize) {
        self.data.clear();
        self.ends.clear();
        self.data.reserve_exact(need_data);
        self.ends.reserve_exact(frames.len());
        for f in frames {
            self.data.extend_from_slice(f);
            self.ends.push(self.data.len() as u32);
        }
    }

    /// Its frames, held under `key`.
    fn frames<'a>(&'a self, key: &'a [u8]) -> CachedFrames<'a> {
        CachedFrames { key, data: &self.data, ends: &self.ends, at: 0, start: 0 }
    }
}

/// The frames of one cached message, in order, and the key it is cached under.
#[derive(Debug, Clone)]
pub struct CachedFrames<'a> {
    key: &'a [u8],
    data: &'a [u8],
    ends: &'a [u32],
    at: usize,
    start: usize,
}

impl<'a> CachedFrames<'a> {
    /// Number of frames in the message.
    pub fn frame_count(&self) -> usize {
        self.ends.len()
    }

    /// What a line names the message by: its topic (the key without its NUL) for an mdsub
    /// frame, its key (the first frame) for a foreign multipart message.
    pub fn name(&self) -> &'a [u8] {
        match self.frame_count() {
            1 => self.key.strip_suffix(&[0]).unwrap_or(self.key),
            _ => self.key,
        }
    }
}

impl<'a> Iterator for CachedFrames<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let end = *self.ends.get(self.at)? as usize;
        let frame = self.data.get(self.start..end)?;
        self.at += 1;
        self.start = end;
        Some(frame)
    }
}

/// The key a message is cached under, or why it has none: [`Update::BadFrame`] or
/// [`Update::Uncacheable`], or none wanted: [`Update::Control`] (see the module doc). A one-frame
/// message is decoded once, here.
pub fn message_key<F: Deref<Target = [u8]>>(frames: &[F]) -> Result<&[u8], Update> {
    match frames {
        [only] => match OneFrame::of(only) {
            OneFrame::Mdsub(v) if v.topic == CONTROL_TOPIC => Err(Update::Control),
            OneFrame::Mdsub(v) => Ok(&only[..v.topic.len() + 1]),
            OneFrame::Bad(why) => Err(Update::BadFrame(why)),
            OneFrame::Foreign => Err(Update::Uncacheable),
        },
        [first, ..] if frames.len() <= MAX_FRAMES => Ok(&first[..]),
        _ => Err(Update::Uncacheable),
    }
}

/// Last value per topic, bounded. Socket-free: the proxy feeds it.
#[derive(Debug)]
pub struct LastValueCache {
    entries: HashMap<Box<[u8]>, Entry>,
    order: BTreeSet<Box<[u8]>>,
    limits: CacheLimits,
    bytes: usize,
    counters: CacheCounters,
}

impl LastValueCache {
    pub fn new(limits: CacheLimits) -> Self {
        LastValueCache {
            entries: HashMap::new(),
            order: BTreeSet::new(),
            limits,
            bytes: 0,
            counters: CacheCounters::default(),
        }
    }

    /// Forget `key`'s value, if held (counted as `evicted_too_big`).
    fn evict(&mut self, key: &[u8]) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= entry.footprint(key.len());
            self.order.remove(key);
            self.counters.evicted_too_big += 1;
        }
    }

    /// Topics held.
    pub fn topics(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held (keys plus buffer capacities).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    /// Remember `frames` as the last value of its topic.
    pub fn update<F: Deref<Target = [u8]>>(&mut self, frames: &[F]) -> Update {
        let key = match message_key(frames) {
            Ok(key) => key,
            Err(bad @ Update::BadFrame(_)) => {
                self.counters.bad_frames += 1;
                return bad;
            }
            Err(Update::Control) => {
                self.counters.control += 1;
                return Update::Control;
            }
            Err(_) => {
                // A multipart message on a cached topic that cannot be stored (too
                // many frames) makes the cached value stale: drop it, never serve it.
                if let [first, _, ..] = frames {
                    self.evict(first);
                }
                self.counters.uncacheable += 1;
                return Update::Uncacheable;
            }
        };
        let need_data: usize = frames.iter().map(|f| f.len()).sum();
        if need_data > u32::MAX as usize {
            self.evict(key);
            self.counters.uncacheable += 1;
            return Update::Uncacheable;
        }
        if let Some(entry) = self.entries.get_mut(key) {
            let old = entry.footprint(key.len());
            let grown_data = entry.data.capacity().max(need_data);
            let grown_ends = entry.ends.capacity().max(frames.len());
            let new = 2 * key.len() + grown_data + grown_ends * std::mem::size_of::<u32>();
            if self.bytes - old + new > self.limits.max_bytes {
                self.bytes -= old;
                self.entries.remove(key);
                self.order.remove(key);
                self.counters.evicted_too_big += 1;
                return Update::EvictedTooBig;
            }
            entry.fill(frames, need_data);
            self.bytes = self.bytes - old + entry.footprint(key.len());
            if self.bytes > self.limits.max_bytes {
                // The allocator gave more than asked: do not keep it.
                self.bytes -= entry.footprint(key.len());
                self.entries.remove(key);
                self.order.remove(key);
                self.counters.evicted_too_big += 1;
                return Update::EvictedTooBig;
            }
            self.counters.replaced += 1;
            return Update::Replaced;
        }
        let estimate = 2 * key.len() + need_data + frames.len() * std::mem::size_of::<u32>();
        if self.entries.len() >= self.limits.max_topics || self.bytes + estimate > self.limits.max_bytes {
            self.counters.rejected_full += 1;
            return Update::RejectedFull;
        }
        let mut entry = Entry::default();
        entry.fill(frames, need_data);
        let footprint = entry.footprint(key.len());
        if self.bytes + footprint > self.limits.max_bytes {
            self.counters.rejected_full += 1;
            return Update::RejectedFull;
        }
        self.bytes += footprint;
        self.entries.insert(key.into(), entry);
        self.order.insert(key.into());
        self.counters.inserted += 1;
        Update::Inserted
    }

    /// Every cached message whose first frame starts with `prefix` (the SUB
    /// filter rule), in topic order. An empty prefix matches everything.
    pub fn matching<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = CachedFrames<'a>> + 'a {
        // Keys end at the topic's NUL (mdsub) or are the whole first frame
        // (foreign); scan the keys that start with the prefix up to and
        // including its first NUL, then check the stored first frame itself.
        let scan_len = prefix.iter().position(|&b| b == 0).map_or(prefix.len(), |nul| nul + 1).min(MAX_TOPIC_LEN + 1);
        let scan = &prefix[..scan_len.min(prefix.len())];
        self.order
            .range::<[u8], _>((Bound::Included(scan), Bound::Unbounded))
            .take_while(move |k| k.starts_with(scan))
            .filter_map(|k| self.entries.get(k).map(|e| e.frames(k)))
            .filter(move |frames| frames.clone().next().is_some_and(|first| first.starts_with(prefix)))
    }

    /// The cached message under exactly `key` (see [`message_key`]).
    pub fn get(&self, key: &[u8]) -> Option<CachedFrames<'_>> {
        self.entries.get_key_value(key).map(|(k, e)| e.frames(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode, Header, Kind};

    fn frame(topic: &str, seq: u64, payload: &[u8]) -> Vec<u8> {
        let h = Header {
            kind: Kind::Data,
            flags: 0,
            publisher_id: 1,
            session_id: 9,
            stream_seq: seq,
            topic_seq: seq,
            send_time_ns: 0,
        };
        encode(topic.as_bytes(), &h, payload)
    }

    fn big() -> LastValueCache {
        LastValueCache::new(CacheLimits { max_topics: 1000, max_bytes: 1 << 20 })
    }

    fn topics_of(c: &LastValueCache, prefix: &[u8]) -> Vec<String> {
        c.matching(prefix)
            .map(|mut f| {
                let first = f.next().expect("a frame");
                match decode(first) {
                    Ok(v) => v.topic_str().to_string(),
                    Err(_) => String::from_utf8_lossy(first).into_owned(),
                }
            })
            .collect()
    }

    #[test]
    fn keeps_last_value_per_topic() {
        let mut c = big();
        assert_eq!(c.update(&[frame("ESH6", 1, b"a")]), Update::Inserted);
        assert_eq!(c.update(&[frame("ESH6", 2, b"b")]), Update::Replaced);
        let got: Vec<&[u8]> = c.get(b"ESH6\0").expect("cached").collect();
        assert_eq!(got, vec![&frame("ESH6", 2, b"b")[..]]);
        assert_eq!(c.topics(), 1);
    }

    #[test]
    fn an_uncacheable_message_on_a_cached_topic_drops_the_stale_value() {
        let mut c = big();
        let small: Vec<Vec<u8>> = vec![b"F001".to_vec(), b"a".to_vec()];
        assert_eq!(c.update(&small), Update::Inserted);
        let huge: Vec<Vec<u8>> =
            std::iter::once(b"F001".to_vec()).chain((0..MAX_FRAMES).map(|_| b"x".to_vec())).collect();
        assert_eq!(c.update(&huge), Update::Uncacheable);
        assert!(c.get(b"F001").is_none(), "the older value must not be served after a newer one passed");
        assert_eq!(c.counters().evicted_too_big, 1);
        assert_eq!(c.topics(), 0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn a_cached_message_is_named_by_its_topic_or_its_foreign_first_frame() {
        let mut c = big();
        c.update(&[frame("ESH6", 1, b"a")]);
        c.update(&[b"F001\0x".as_slice(), b"body"]);
        let names: Vec<&[u8]> = c.matching(b"").map(|f| f.name()).collect();
        assert_eq!(names, vec![&b"ESH6"[..], &b"F001\0x"[..]]);
        assert_eq!(c.get(b"ESH6\0").map(|f| f.name()), Some(&b"ESH6"[..]));
    }

    #[test]
    fn prefix_answers_every_matching_topic_in_order() {
        let mut c = big();
        for t in ["NQZ5", "ESH6", "ESM6", "ESH66", "CLF6"] {
            c.update(&[frame(t, 1, b"x")]);
        }
        assert_eq!(topics_of(&c, b"ES"), vec!["ESH6", "ESH66", "ESM6"]);
        assert_eq!(topics_of(&c, b"ESH6"), vec!["ESH6", "ESH66"]);
        assert_eq!(topics_of(&c, b"ESH6\0"), vec!["ESH6"], "NUL means exactly this topic");
        assert_eq!(topics_of(&c, b""), vec!["CLF6", "ESH6", "ESH66", "ESM6", "NQZ5"]);
        assert!(topics_of(&c, b"ZZ").is_empty());
    }

    #[test]
    fn prefix_reaching_into_the_header_is_checked_on_the_frame() {
        let mut c = big();
        let f = frame("ESH6", 1, b"x");
        c.update(std::slice::from_ref(&f));
        assert_eq!(c.matching(&f[..7]).count(), 1);
        let mut other = f[..7].to_vec();
        other[6] ^= 0xff;
        assert_eq!(c.matching(&other).count(), 0);
    }

    #[test]
    fn foreign_multipart_is_kept_whole_under_its_first_frame() {
        let mut c = big();
        let m1: [&[u8]; 2] = [b"001", b"Save Roger"];
        let m2: [&[u8]; 3] = [b"001", b"Save", b"Roger again"];
        assert_eq!(c.update(&m1), Update::Inserted);
        assert_eq!(c.update(&m2), Update::Replaced);
        c.update(&[b"002".as_slice(), b"x"]);
        let got: Vec<Vec<&[u8]>> = c.matching(b"00").map(|f| f.collect()).collect();
        assert_eq!(got, vec![m2.to_vec(), vec![b"002".as_slice(), b"x"]]);
        assert_eq!(c.matching(b"001").next().expect("one").frame_count(), 3);
    }

    #[test]
    fn single_frames_without_nul_and_empty_messages_are_not_cached() {
        let mut c = big();
        assert_eq!(c.update(&[b"10001 23 45".as_slice()]), Update::Uncacheable);
        let none: [&[u8]; 0] = [];
        assert_eq!(c.update(&none), Update::Uncacheable);
        let many = vec![b"t".as_slice(); MAX_FRAMES + 1];
        assert_eq!(c.update(&many), Update::Uncacheable);
        assert_eq!(c.counters().uncacheable, 3);
        assert_eq!(c.topics(), 0);
    }

    #[test]
    fn frames_the_wire_decoder_refuses_are_not_cached_and_the_good_value_stays() {
        let mut c = big();
        let good = frame("VER9", 1, b"ok");
        assert_eq!(c.update(&[good.as_slice()]), Update::Inserted);
        let at = "VER9".len() + 1;
        let mut version = frame("VER9", 2, b"xy");
        version[at] = 9;
        let mut kind = frame("VER9", 3, b"xy");
        kind[at + 1] = 7;
        let mut length = frame("VER9", 4, b"xy");
        length.push(0);
        let bad = [
            (version, DecodeError::UnknownVersion(9)),
            (kind, DecodeError::UnknownKind(7)),
            (length, DecodeError::LengthMismatch { declared: 2, actual: 3 }),
            (b"\0abc".to_vec(), DecodeError::EmptyTopic),
            (b"VER9\0short".to_vec(), DecodeError::Short { have: 5 }),
        ];
        for (f, why) in &bad {
            assert_eq!(c.update(&[f.as_slice()]), Update::BadFrame(*why));
        }
        assert_eq!(c.counters().bad_frames, bad.len() as u64);
        let held: Vec<Vec<&[u8]>> = c.matching(b"VER9").map(|f| f.collect()).collect();
        assert_eq!(held, vec![vec![good.as_slice()]], "the last good value is served, no bad one");
        // A foreign topic in a multipart message is no mdsub frame: still cached whole.
        let foreign: [&[u8]; 2] = [b"VER9\0\x09", b"body"];
        assert_eq!(c.update(&foreign), Update::Inserted);
    }

    #[test]
    fn control_frames_are_never_cached_and_take_no_topic_slot() {
        // Before, an end of stream was cached under `_mdsub` and answered to late subscribers.
        let mut c = LastValueCache::new(CacheLimits { max_topics: 1, max_bytes: 1 << 20 });
        let control = |kind, seq| {
            let h = Header { kind, ..Header::data(seq, 0) };
            encode(CONTROL_TOPIC, &h, &seq.to_le_bytes())
        };
        for f in [control(Kind::Heartbeat, 1), control(Kind::EndOfStream, 2)] {
            assert_eq!(c.update(&[f.as_slice()]), Update::Control);
        }
        assert_eq!((c.topics(), c.bytes(), c.counters().control), (0, 0, 2));
        assert_eq!(c.update(&[frame("ES", 1, b"x")]), Update::Inserted, "the one slot is a data topic's");
        assert_eq!(c.matching(CONTROL_TOPIC).count(), 0);
        assert_eq!(topics_of(&c, b""), ["ES"]);
    }

    #[test]
    fn topic_limit_holds_and_counts() {
        let mut c = LastValueCache::new(CacheLimits { max_topics: 3, max_bytes: 1 << 20 });
        for i in 0..10 {
            c.update(&[frame(&format!("T{i}"), 1, b"x")]);
        }
        assert_eq!(c.topics(), 3);
        assert_eq!(c.counters().rejected_full, 7);
        assert_eq!(c.update(&[frame("T0", 2, b"y")]), Update::Replaced, "known topics still update");
    }

    #[test]
    fn byte_limit_holds_and_never_serves_stale_values() {
        let mut c = LastValueCache::new(CacheLimits { max_topics: 100, max_bytes: 400 });
        assert_eq!(c.update(&[frame("A", 1, &[0; 100])]), Update::Inserted);
        assert_eq!(c.update(&[frame("B", 1, &[0; 100])]), Update::Inserted);
        assert_eq!(c.update(&[frame("C", 1, &[0; 100])]), Update::RejectedFull);
        assert!(c.bytes() <= 400, "{}", c.bytes());
        assert_eq!(c.update(&[frame("A", 2, &[0; 300])]), Update::EvictedTooBig);
        assert!(c.get(b"A\0").is_none(), "old value removed, not served stale");
        assert!(c.bytes() <= 400);
        assert_eq!(c.update(&[frame("C", 1, &[0; 100])]), Update::Inserted);
    }

    #[test]
    fn replacing_reuses_buffers() {
        let mut c = big();
        c.update(&[frame("ESH6", 1, &[1; 64])]);
        let before = c.bytes();
        let ptr = c.get(b"ESH6\0").and_then(|mut f| f.next()).map(|f| f.as_ptr());
        for s in 2..100 {
            c.update(&[frame("ESH6", s, &[2; 32])]);
        }
        let after = c.get(b"ESH6\0").and_then(|mut f| f.next()).map(|f| f.as_ptr());
        assert_eq!(ptr, after, "same buffer");
        assert_eq!(before, c.bytes());
    }

    proptest::proptest! {
        /// Any traffic: no panic, limits hold, the byte count is exact, the
        /// ordered key set and the map agree, answers match their prefix.
        #[test]
        fn limits_and_invariants_hold_for_any_traffic(
            msgs in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(0u8..4, 0..12), 0..4), 0..200),
            prefix in proptest::collection::vec(0u8..4, 0..4),
            max_topics in 0usize..20, max_bytes in 0usize..600)
        {
            let mut c = LastValueCache::new(CacheLimits { max_topics, max_bytes });
            for m in &msgs {
                c.update(m);
                proptest::prop_assert!(c.topics() <= max_topics);
                proptest::prop_assert!(c.bytes() <= max_bytes);
                let recount: usize = c.entries.iter().map(|(k, e)| e.footprint(k.len())).sum();
                proptest::prop_assert_eq!(recount, c.bytes());
                proptest::prop_assert_eq!(c.order.len(), c.entries.len());
            }
            let answers: Vec<Vec<u8>> = c.matching(&prefix).map(|mut f| f.next().unwrap_or_default().to_vec()).collect();
            for first in &answers {
                proptest::prop_assert!(first.starts_with(&prefix));
            }
            let brute = c.entries.iter().filter(|(k, e)| e.frames(k).next().is_some_and(|f| f.starts_with(&prefix))).count();
            proptest::prop_assert_eq!(answers.len(), brute, "range scan finds every match");
        }
    }
}
