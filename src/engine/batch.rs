//! The reader → worker hand-off format: many frames in one inproc message.
//!
//! `0x00 · shard u16 LE · { recv_ns u64 LE · len u32 LE · frame }*`. The
//! shard index lets the worker keep latency per shard. The leading NUL cannot
//! start a market-data frame (topics are non-empty printable ASCII), so a
//! worker tells a batch from a single frame handed over as is; an empty
//! message is a reader's end-of-stream marker. Building a batch reuses one
//! staging buffer per worker, so the steady state allocates nothing per
//! message (one libzmq message per batch).

/// First byte of a batch message.
pub const BATCH_MARK: u8 = 0;
/// Per-record overhead in a batch.
pub const RECORD_OVERHEAD: usize = 12;
/// The batch header: the mark and the shard index.
pub const HEADER_BYTES: usize = 3;

/// Append one frame from shard `shard` to a staging buffer (starting the
/// batch if empty).
#[inline]
pub fn push(staging: &mut Vec<u8>, shard: u16, recv_ns: u64, frame: &[u8]) {
    if staging.is_empty() {
        staging.push(BATCH_MARK);
        staging.extend_from_slice(&shard.to_le_bytes());
    }
    staging.extend_from_slice(&recv_ns.to_le_bytes());
    staging.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    staging.extend_from_slice(frame);
}

/// Iterates `(recv_ns, frame)` over a batch; stops at the end or at the first
/// malformed record (`malformed()` tells which). Never panics.
pub struct BatchIter<'a> {
    rest: &'a [u8],
    shard: u16,
    malformed: bool,
}

impl<'a> BatchIter<'a> {
    /// `None` if `msg` is not a batch. A batch too short for its header is
    /// an empty batch flagged malformed.
    pub fn new(msg: &'a [u8]) -> Option<Self> {
        match msg {
            [BATCH_MARK, lo, hi, rest @ ..] => {
                Some(BatchIter { rest, shard: u16::from_le_bytes([*lo, *hi]), malformed: false })
            }
            [BATCH_MARK, ..] => Some(BatchIter { rest: &[], shard: 0, malformed: true }),
            _ => None,
        }
    }

    /// The shard whose reader built this batch.
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// True if iteration stopped on a malformed record.
    pub fn malformed(&self) -> bool {
        self.malformed
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = (u64, &'a [u8]);

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
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&head[..8]);
        let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
        if tail.len() < len {
            self.malformed = true;
            self.rest = &[];
            return None;
        }
        let (frame, rest) = tail.split_at(len);
        self.rest = rest;
        Some((u64::from_le_bytes(ns), frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut b = Vec::new();
        push(&mut b, 7, 1, b"abc");
        push(&mut b, 7, 2, b"");
        push(&mut b, 7, 3, b"xyz!");
        let it = BatchIter::new(&b).expect("a batch");
        assert_eq!(it.shard(), 7);
        let got: Vec<(u64, Vec<u8>)> = it.map(|(t, f)| (t, f.to_vec())).collect();
        assert_eq!(got, vec![(1, b"abc".to_vec()), (2, vec![]), (3, b"xyz!".to_vec())]);
        assert!(BatchIter::new(b"ESH6\0...").is_none());
        assert!(BatchIter::new(b"").is_none());
    }

    #[test]
    fn truncated_batch_is_flagged() {
        let mut b = Vec::new();
        push(&mut b, 0, 1, b"abc");
        push(&mut b, 0, 2, b"defg");
        let mut it = BatchIter::new(&b[..b.len() - 1]).expect("a batch");
        assert_eq!(it.next(), Some((1, &b"abc"[..])));
        assert_eq!(it.next(), None);
        assert!(it.malformed());
        let mut short = BatchIter::new(&[BATCH_MARK, 1]).expect("a batch");
        assert_eq!(short.next(), None);
        assert!(short.malformed());
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
