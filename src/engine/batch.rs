//! The reader → worker hand-off format: many frames in one inproc message.
//!
//! `0x00 · shard u16 LE · recv_ns u64 LE · { len u32 LE · topic_len u8 · frame }*`.
//! The shard index lets the worker keep latency per shard. Each record carries
//! the length of its frame's topic, which the reader found when it checked the
//! frame, so the worker decodes with [`crate::wire::decode_checked_topic`]:
//! no second search for the NUL, no second check of the topic's bytes.
//! Every frame of a batch shares its receive time: a reader stamps one drain round with one clock
//! read, and a batch never spans rounds (a reader reads no more while a batch
//! is still staged), so the time goes once per batch instead of once per
//! frame. The leading NUL cannot start a market-data frame (topics are
//! non-empty printable ASCII), so a worker tells a batch from a single frame
//! handed over as is; an empty message is a reader's end-of-stream marker.
//! The reader builds each batch in a pooled buffer that becomes the libzmq
//! message without a copy ([`crate::zmqx::pool`]), so the steady state
//! allocates nothing per message or per batch.

/// First byte of a batch message.
pub const BATCH_MARK: u8 = 0;
/// Per-record overhead in a batch (the frame's length and its topic's).
pub const RECORD_OVERHEAD: usize = 5;
/// The batch header: the mark, the shard index and the receive time.
pub const HEADER_BYTES: usize = 11;

/// Append one frame from shard `shard`, received at `recv_ns`, whose topic is
/// its first `topic_len` bytes (at most [`crate::wire::MAX_TOPIC_LEN`]), to a
/// staging buffer, starting the batch if the buffer is empty. The batch keeps
/// the receive time of its first frame: every frame of one batch must share it
/// (checked in debug builds).
#[inline]
pub fn push(staging: &mut Vec<u8>, shard: u16, recv_ns: u64, topic_len: usize, frame: &[u8]) {
    if staging.is_empty() {
        staging.push(BATCH_MARK);
        staging.extend_from_slice(&shard.to_le_bytes());
        staging.extend_from_slice(&recv_ns.to_le_bytes());
    }
    debug_assert_eq!(staging.get(3..HEADER_BYTES), Some(&recv_ns.to_le_bytes()[..]), "one receive time per batch");
    debug_assert!(topic_len <= crate::wire::MAX_TOPIC_LEN, "a checked topic");
    let [l0, l1, l2, l3] = (frame.len() as u32).to_le_bytes();
    staging.extend_from_slice(&[l0, l1, l2, l3, topic_len as u8]);
    staging.extend_from_slice(frame);
}

/// Iterates `(recv_ns, topic_len, frame)` over a batch; stops at the end or at the first
/// malformed record (`malformed()` tells which). Never panics.
pub struct BatchIter<'a> {
    rest: &'a [u8],
    shard: u16,
    recv_ns: u64,
    malformed: bool,
}

impl<'a> BatchIter<'a> {
    /// `None` if `msg` is not a batch. A batch too short for its header is
    /// an empty batch flagged malformed.
    pub fn new(msg: &'a [u8]) -> Option<Self> {
        match msg {
            [BATCH_MARK, lo, hi, t0, t1, t2, t3, t4, t5, t6, t7, rest @ ..] => Some(BatchIter {
                rest,
                shard: u16::from_le_bytes([*lo, *hi]),
                recv_ns: u64::from_le_bytes([*t0, *t1, *t2, *t3, *t4, *t5, *t6, *t7]),
                malformed: false,
            }),
            [BATCH_MARK, ..] => Some(BatchIter { rest: &[], shard: 0, recv_ns: 0, malformed: true }),
            _ => None,
        }
    }

    /// The shard whose reader built this batch.
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// When the batch's frames were received (ns since the epoch).
    pub fn recv_ns(&self) -> u64 {
        self.recv_ns
    }

    /// True if iteration stopped on a malformed record.
    pub fn malformed(&self) -> bool {
        self.malformed
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = (u64, usize, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < RECORD_OVERHEAD {
            self.malformed = true;
            self.rest = &[];
            return None;
        }
        let (head, tail) = self.rest.split_at(RECORD_OVERHEAD);
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let topic_len = usize::from(head[4]);
        if tail.len() < len {
            self.malformed = true;
            self.rest = &[];
            return None;
        }
        let (frame, rest) = tail.split_at(len);
        self.rest = rest;
        Some((self.recv_ns, topic_len, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut b = Vec::new();
        push(&mut b, 7, 42, 1, b"abc");
        push(&mut b, 7, 42, 0, b"");
        push(&mut b, 7, 42, 3, b"xyz!");
        assert_eq!(b.len(), HEADER_BYTES + 3 * RECORD_OVERHEAD + 7, "the time once, a length per frame");
        let it = BatchIter::new(&b).expect("a batch");
        assert_eq!((it.shard(), it.recv_ns()), (7, 42));
        let got: Vec<(u64, usize, Vec<u8>)> = it.map(|(t, n, f)| (t, n, f.to_vec())).collect();
        assert_eq!(got, vec![(42, 1, b"abc".to_vec()), (42, 0, vec![]), (42, 3, b"xyz!".to_vec())]);
        assert!(BatchIter::new(b"ESH6\0...").is_none());
        assert!(BatchIter::new(b"").is_none());
    }

    #[test]
    fn truncated_batch_is_flagged() {
        let mut b = Vec::new();
        push(&mut b, 0, 1, 2, b"abc");
        push(&mut b, 0, 1, 2, b"defg");
        let mut it = BatchIter::new(&b[..b.len() - 1]).expect("a batch");
        assert_eq!(it.next(), Some((1, 2, &b"abc"[..])));
        assert_eq!(it.next(), None);
        assert!(it.malformed());
        // A header cut short (mark and shard, part of the time): an empty, malformed batch.
        for cut in 1..HEADER_BYTES {
            let mut short = BatchIter::new(&b[..cut]).expect("a batch");
            assert_eq!(short.next(), None);
            assert!(short.malformed(), "cut at {cut}");
        }
        // A record cut inside its lengths.
        for cut in 1..RECORD_OVERHEAD {
            let mut it = BatchIter::new(&b[..HEADER_BYTES + cut]).expect("a batch");
            assert_eq!(it.next(), None);
            assert!(it.malformed(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut v = vec![BATCH_MARK];
            v.extend_from_slice(&bytes);
            if let Some(it) = BatchIter::new(&v) { let _ = it.count(); }
        }
    }
}
