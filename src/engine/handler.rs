//! What a worker does with each message: the [`Handler`] trait and the
//! built-in handlers (latency only, synthetic work, last-value book).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::sequence::FnvHasher;
use crate::wire::FrameView;

/// Application code run by a worker for every delivered data message.
/// Latency is recorded by the worker around this call.
pub trait Handler: Send {
    fn on_message(&mut self, msg: &FrameView<'_>);

    /// Named counters the handler keeps; summed over workers into the report.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Which built-in handler to run; parsed from `latency`, `work:NS`, `book`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HandlerSpec {
    /// Nothing beyond the worker's latency recording.
    Latency,
    /// Busy work of this many ns per message (models real processing cost).
    Work { ns: u64 },
    /// Keep the last payload of every topic.
    Book,
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
            "verify" => Ok(HandlerSpec::Verify),
            _ => match s.strip_prefix("work:").map(str::parse::<u64>) {
                Some(Ok(ns)) => Ok(HandlerSpec::Work { ns }),
                _ => Err(format!("unknown handler `{s}` (expected latency, book, verify or work:NANOS)")),
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
            HandlerSpec::Verify => write!(f, "verify"),
        }
    }
}

impl HandlerSpec {
    pub fn build(&self) -> Box<dyn Handler> {
        match *self {
            HandlerSpec::Latency => Box::new(LatencyOnly),
            HandlerSpec::Work { ns } => Box::new(SyntheticWork { ns }),
            HandlerSpec::Book => Box::new(LastValueBook::default()),
            HandlerSpec::Verify => Box::new(VerifyOrder::default()),
        }
    }
}

/// Does nothing: the worker's latency recording is the whole job.
pub struct LatencyOnly;

impl Handler for LatencyOnly {
    #[inline]
    fn on_message(&mut self, _msg: &FrameView<'_>) {}
}

/// Spins for `ns` nanoseconds per message.
pub struct SyntheticWork {
    pub ns: u64,
}

impl Handler for SyntheticWork {
    #[inline]
    fn on_message(&mut self, _msg: &FrameView<'_>) {
        let until = crate::wire::now_ns() + self.ns;
        while crate::wire::now_ns() < until {
            std::hint::spin_loop();
        }
    }
}

/// The last payload of every topic; replacing a value reuses its buffer.
#[derive(Default)]
pub struct LastValueBook {
    book: HashMap<Box<[u8]>, Vec<u8>, BuildHasherDefault<FnvHasher>>,
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

/// Per-topic order check: each topic's `topic_seq` must follow the last by one.
#[derive(Default)]
pub struct VerifyOrder {
    last: HashMap<Box<[u8]>, (u64, u64), BuildHasherDefault<FnvHasher>>,
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
    use crate::wire::{decode, encode, Header, Kind};

    #[test]
    fn specs_parse_and_print() {
        for s in ["latency", "book", "verify", "work:250"] {
            assert_eq!(s.parse::<HandlerSpec>().expect("parses").to_string(), s);
        }
        assert!("work:x".parse::<HandlerSpec>().is_err());
        assert!("sleep".parse::<HandlerSpec>().is_err());
    }

    /// A data frame on `topic` with both sequences `seq`.
    fn frame(topic: &[u8], seq: u64, payload: &[u8]) -> Vec<u8> {
        let h = Header {
            kind: Kind::Data,
            flags: 0,
            publisher_id: 0,
            session_id: 1,
            stream_seq: seq,
            topic_seq: seq,
            send_time_ns: 0,
        };
        encode(topic, &h, payload)
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
