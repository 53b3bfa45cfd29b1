//! Sequence checks on every data frame (a socket-free core): restarts, gaps
//! and duplicates per publisher session and per topic.
//!
//! Rules (see docs/WIRE.md): a publisher is `publisher_id`; a new
//! `session_id` is a restart and resets its state. Per topic, a `topic_seq`
//! at or below the last accepted is a duplicate (dropped; this is how values
//! re-sent by a last-value cache are removed) and a jump is a gap. Stream
//! gaps (`stream_seq`) are counted only when the subscriber takes every topic
//! (with topic filters the stream sequence jumps by design) and never for
//! frames flagged `FROM_CACHE`, which keep their old sequences.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::wire::{Header, FLAG_FROM_CACHE};

/// FNV-1a as a `Hasher`: fast for short topic keys.
#[derive(Default)]
pub struct FnvHasher(u64);

impl Hasher for FnvHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type TopicMap = HashMap<Box<[u8]>, u64, BuildHasherDefault<FnvHasher>>;

/// What the checks decided about one data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Deliver it (false: a duplicate).
    pub accept: bool,
    /// Messages missing just before this one.
    pub missed: u64,
    /// This frame started a new session of a known publisher.
    pub restart: bool,
}

#[derive(Debug)]
struct Session {
    publisher_id: u32,
    session_id: u64,
    /// Highest stream sequence seen (0 before any).
    last_stream_seq: u64,
    /// The session was seen from its first message.
    from_start: bool,
    accepted: u64,
    topics: TopicMap,
    /// `sent` from this session's end of stream, once seen.
    eos_sent: Option<u64>,
}

/// Totals across all sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequenceTotals {
    pub accepted: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub restarts: u64,
}

/// Tracks every publisher session a reader sees.
#[derive(Debug)]
pub struct SequenceTracker {
    sessions: Vec<Session>,
    full_subscription: bool,
    totals: SequenceTotals,
    /// Accepted counts of sessions replaced by a restart, with their EOS if seen.
    retired: Vec<(u64, Option<u64>)>,
}

impl SequenceTracker {
    /// `full_subscription`: the subscriber takes every topic of its publishers,
    /// so stream sequence gaps are real loss.
    pub fn new(full_subscription: bool) -> Self {
        SequenceTracker {
            sessions: Vec::new(),
            full_subscription,
            totals: SequenceTotals::default(),
            retired: Vec::new(),
        }
    }

    fn session(&mut self, h: &Header) -> (usize, bool) {
        match self.sessions.iter().position(|s| s.publisher_id == h.publisher_id) {
            Some(i) if self.sessions[i].session_id == h.session_id => (i, false),
            Some(i) => {
                let s = &mut self.sessions[i];
                self.retired.push((s.accepted, s.eos_sent));
                s.session_id = h.session_id;
                s.last_stream_seq = 0;
                s.from_start = h.stream_seq <= 1;
                s.accepted = 0;
                s.eos_sent = None;
                s.topics.clear();
                self.totals.restarts += 1;
                (i, true)
            }
            None => {
                self.sessions.push(Session {
                    publisher_id: h.publisher_id,
                    session_id: h.session_id,
                    last_stream_seq: 0,
                    from_start: h.stream_seq <= 1,
                    accepted: 0,
                    topics: TopicMap::default(),
                    eos_sent: None,
                });
                (self.sessions.len() - 1, false)
            }
        }
    }

    /// Check one data frame. Allocates only for a topic seen for the first time.
    #[inline]
    pub fn on_data(&mut self, h: &Header, topic: &[u8]) -> Verdict {
        let (i, restart) = self.session(h);
        let full = self.full_subscription;
        let s = &mut self.sessions[i];
        let from_cache = h.flags & FLAG_FROM_CACHE != 0;
        let mut missed = 0;
        match s.topics.get_mut(topic) {
            Some(last) => {
                if h.topic_seq <= *last {
                    self.totals.duplicates += 1;
                    return Verdict { accept: false, missed: 0, restart };
                }
                if !full && !from_cache {
                    missed = h.topic_seq - *last - 1;
                }
                *last = h.topic_seq;
            }
            None => {
                if !full && !from_cache && s.from_start {
                    missed = h.topic_seq.saturating_sub(1);
                }
                s.topics.insert(topic.into(), h.topic_seq);
            }
        }
        if full && !from_cache && h.stream_seq > s.last_stream_seq + 1 && (s.last_stream_seq > 0 || s.from_start) {
            missed = h.stream_seq - s.last_stream_seq - 1;
        }
        if !from_cache {
            s.last_stream_seq = s.last_stream_seq.max(h.stream_seq);
        }
        s.accepted += 1;
        self.totals.accepted += 1;
        self.totals.gaps += missed;
        Verdict { accept: true, missed, restart }
    }

    /// An end of stream: `sent` data messages in the session. Counts messages
    /// lost at the tail (after the last one received) as gaps; returns them.
    pub fn on_end_of_stream(&mut self, h: &Header, sent: u64) -> u64 {
        let (i, _) = self.session(h);
        let full = self.full_subscription;
        let s = &mut self.sessions[i];
        s.eos_sent = Some(sent);
        let tail = if full && (s.from_start || s.last_stream_seq > 0) {
            h.stream_seq.saturating_sub(s.last_stream_seq)
        } else {
            0
        };
        s.last_stream_seq = s.last_stream_seq.max(h.stream_seq);
        self.totals.gaps += tail;
        tail
    }

    /// Data messages sent by publishers whose end of stream was seen, and how
    /// many of them were accepted here: `(sent, accepted)`.
    pub fn sent_and_accepted(&self) -> (u64, u64) {
        let live = self.sessions.iter().filter_map(|s| s.eos_sent.map(|e| (e, s.accepted)));
        let old = self.retired.iter().filter_map(|&(acc, eos)| eos.map(|e| (e, acc)));
        live.chain(old).fold((0, 0), |(a, b), (e, acc)| (a + e, b + acc))
    }

    /// Number of sessions whose end of stream was seen.
    pub fn ended_sessions(&self) -> usize {
        self.sessions.iter().filter(|s| s.eos_sent.is_some()).count()
    }

    pub fn totals(&self) -> SequenceTotals {
        self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Kind;

    fn h(publisher_id: u32, session_id: u64, stream_seq: u64, topic_seq: u64) -> Header {
        Header { kind: Kind::Data, flags: 0, publisher_id, session_id, stream_seq, topic_seq, send_time_ns: 0 }
    }

    #[test]
    fn in_order_stream_has_no_gaps() {
        let mut t = SequenceTracker::new(true);
        for i in 1..=100 {
            let topic: &[u8] = if i % 2 == 0 { b"A" } else { b"B" };
            let v = t.on_data(&h(1, 9, i, i.div_ceil(2)), topic);
            assert_eq!(v, Verdict { accept: true, missed: 0, restart: false });
        }
        assert_eq!(t.totals(), SequenceTotals { accepted: 100, gaps: 0, duplicates: 0, restarts: 0 });
    }

    #[test]
    fn stream_gap_and_tail_loss() {
        let mut t = SequenceTracker::new(true);
        t.on_data(&h(1, 9, 1, 1), b"A");
        assert_eq!(t.on_data(&h(1, 9, 5, 2), b"A").missed, 3);
        assert_eq!(t.on_end_of_stream(&h(1, 9, 7, 0), 7), 2);
        assert_eq!(t.totals().gaps, 5);
        assert_eq!(t.sent_and_accepted(), (7, 2));
    }

    #[test]
    fn duplicate_by_topic_is_dropped_even_from_cache() {
        let mut t = SequenceTracker::new(true);
        t.on_data(&h(1, 9, 1, 1), b"A");
        t.on_data(&h(1, 9, 2, 2), b"A");
        let mut cached = h(1, 9, 1, 1);
        cached.flags = FLAG_FROM_CACHE;
        assert!(!t.on_data(&cached, b"A").accept);
        assert!(!t.on_data(&h(1, 9, 2, 2), b"A").accept);
        assert_eq!(t.totals().duplicates, 2);
        assert_eq!(t.totals().gaps, 0);
    }

    #[test]
    fn late_joiner_with_cached_values_counts_no_gap() {
        let mut t = SequenceTracker::new(true);
        let mut c = h(1, 9, 40, 7);
        c.flags = FLAG_FROM_CACHE;
        assert!(t.on_data(&c, b"A").accept);
        let mut c = h(1, 9, 12, 3);
        c.flags = FLAG_FROM_CACHE;
        assert!(t.on_data(&c, b"B").accept);
        assert_eq!(t.on_data(&h(1, 9, 50, 8), b"A").missed, 0, "first live frame sets the base");
        assert_eq!(t.on_data(&h(1, 9, 51, 4), b"B").missed, 0);
        assert_eq!(t.totals().gaps, 0);
    }

    #[test]
    fn restart_is_not_a_gap() {
        let mut t = SequenceTracker::new(true);
        t.on_data(&h(1, 9, 1, 1), b"A");
        t.on_data(&h(1, 9, 2, 2), b"A");
        let v = t.on_data(&h(1, 10, 1, 1), b"A");
        assert!(v.accept && v.restart && v.missed == 0);
        assert_eq!(t.totals().restarts, 1);
        assert_eq!(t.totals().gaps, 0);
    }

    #[test]
    fn filtered_subscription_uses_topic_sequences() {
        let mut t = SequenceTracker::new(false);
        t.on_data(&h(1, 9, 1, 1), b"A");
        assert_eq!(t.on_data(&h(1, 9, 10, 2), b"A").missed, 0, "stream jumps are other topics");
        assert_eq!(t.on_data(&h(1, 9, 20, 5), b"A").missed, 2);
        assert_eq!(t.on_end_of_stream(&h(1, 9, 30, 0), 30), 0);
    }
}
