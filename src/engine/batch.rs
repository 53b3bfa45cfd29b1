//! The reader → worker hand-off format: many frames in one inproc message.
//!
//! `0x00 · shard u16 LE · recv_ns u64 LE · { len u32 LE · topic_len u8 · frame }*`, where a
//! record may instead be a restamp, `u32::MAX · 0 · recv_ns u64 LE` (no frame is that long).
//! The shard index lets the worker keep latency per shard. Each record carries
//! the length of its frame's topic, which the reader found when it checked the
//! frame, so the worker decodes with [`crate::wire::decode_checked_topic`]:
//! no second search for the NUL, no second check of the topic's bytes.
//! The frames of a batch share the receive time in its header until a restamp record gives the
//! frames after it a later one: a reader stamps a drain pass with one clock read and reads it
//! again only for a frame sent after that stamp ([`crate::clock::PassStamp`]), so the time goes
//! once per batch, or a few times, instead of once per frame. A batch never spans passes (a
//! reader reads no more while a batch is still staged). The leading NUL cannot start a
//! market-data frame (topics are non-empty printable ASCII), so a worker tells a batch from a
//! per-message hand-off's stamp ([`stamp`], first byte [`STAMP_MARK`], the first part of a
//! two-part message whose second is the frame as received) and from a market-data frame; an
//! empty message is a reader's end-of-stream marker.
//! The reader builds each batch in a pooled buffer that becomes the libzmq
//! message without a copy ([`crate::zmqx::pool`]), so the steady state
//! allocates nothing per message or per batch.

/// First byte of a batch message.
pub const BATCH_MARK: u8 = 0;
/// Per-record overhead in a batch (the frame's length and its topic's).
pub const RECORD_OVERHEAD: usize = 5;
/// The batch header: the mark, the shard index and the receive time.
pub const HEADER_BYTES: usize = 11;

/// First byte of a per-message hand-off's stamp: the first part of a two-part message
/// `0x01 · shard u16 LE · recv_ns u64 LE` then the frame as received (moved, never copied), so
/// a worker knows the frame's shard and receive time as it does a batch's.
pub const STAMP_MARK: u8 = 1;
/// A per-message stamp's size (the same fields as a batch's header): a libzmq very small
/// message, held in the message itself, never allocated.
pub const STAMP_BYTES: usize = HEADER_BYTES;

/// The stamp that goes before a frame of shard `shard` received at `recv_ns` handed off on its
/// own (`handoff = "per-message"`).
#[inline]
pub fn stamp(shard: u16, recv_ns: u64) -> [u8; STAMP_BYTES] {
    let mut s = [0u8; STAMP_BYTES];
    s[0] = STAMP_MARK;
    s[1..3].copy_from_slice(&shard.to_le_bytes());
    s[3..].copy_from_slice(&recv_ns.to_le_bytes());
    s
}

/// The shard and receive time of a per-message stamp; `None` if `msg` is not one.
#[inline]
pub fn read_stamp(msg: &[u8]) -> Option<(u16, u64)> {
    match msg {
        [STAMP_MARK, lo, hi, t0, t1, t2, t3, t4, t5, t6, t7] => {
            Some((u16::from_le_bytes([*lo, *hi]), u64::from_le_bytes([*t0, *t1, *t2, *t3, *t4, *t5, *t6, *t7])))
        }
        _ => None,
    }
}

/// The length field of a restamp record (a frame this long cannot be sent).
pub const RESTAMP_LEN: u32 = u32::MAX;
/// The largest frame a record can hold: its length field is 32 bits and [`RESTAMP_LEN`] is
/// taken. A profile's `max_msg_bytes` is held to it ([`crate::profile::Profile::validate`]), so
/// libzmq drops a larger frame with its connection before the reader sees it.
pub const MAX_FRAME_BYTES: usize = RESTAMP_LEN as usize - 1;
/// A restamp record's size: the record overhead and the new receive time.
pub const RESTAMP_BYTES: usize = RECORD_OVERHEAD + 8;

/// Append one frame from shard `shard`, received at `recv_ns`, whose topic is
/// its first `topic_len` bytes (at most [`crate::wire::MAX_TOPIC_LEN`]), to a
/// staging buffer, starting the batch if the buffer is empty. `stamp_ns` is the receive time of
/// the buffer's last record (the caller keeps it beside the buffer): a frame received later than
/// it goes after a restamp record.
#[inline]
pub fn push(staging: &mut Vec<u8>, stamp_ns: &mut u64, shard: u16, recv_ns: u64, topic_len: usize, frame: &[u8]) {
    debug_assert!(topic_len <= crate::wire::MAX_TOPIC_LEN, "a checked topic");
    debug_assert!(frame.len() <= MAX_FRAME_BYTES, "a frame max_msg_bytes lets through");
    if staging.is_empty() {
        let mut header = [BATCH_MARK; HEADER_BYTES];
        header[1..3].copy_from_slice(&shard.to_le_bytes());
        header[3..].copy_from_slice(&recv_ns.to_le_bytes());
        staging.extend_from_slice(&header);
    } else if *stamp_ns != recv_ns {
        let mut restamp = [0; RESTAMP_BYTES];
        restamp[..4].copy_from_slice(&RESTAMP_LEN.to_le_bytes());
        restamp[RECORD_OVERHEAD..].copy_from_slice(&recv_ns.to_le_bytes());
        staging.extend_from_slice(&restamp);
    }
    *stamp_ns = recv_ns;
    // The record: one capacity check for its lengths and its frame, then plain writes (a check
    // per `extend_from_slice` before; perf36).
    let [l0, l1, l2, l3] = (frame.len() as u32).to_le_bytes();
    let add = RECORD_OVERHEAD + frame.len();
    staging.reserve(add);
    let old_len = staging.len();
    let (head_to, frame_to) = staging.spare_capacity_mut()[..add].split_at_mut(RECORD_OVERHEAD);
    head_to.write_copy_of_slice(&[l0, l1, l2, l3, topic_len as u8]);
    frame_to.write_copy_of_slice(frame);
    // SAFETY: the `add` bytes after `old_len` are within the capacity just reserved, and every
    // one of them was written above: `write_copy_of_slice` panics unless it fills its whole
    // slice, and the two slices are those `add` bytes cut in two.
    unsafe { staging.set_len(old_len + add) };
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

    /// When the frames from here on were received (ns since the epoch): the header's time, or
    /// the last restamp record's.
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
        loop {
            if self.rest.is_empty() {
                return None;
            }
            if self.rest.len() < RECORD_OVERHEAD {
                return self.stop_malformed();
            }
            let (head, tail) = self.rest.split_at(RECORD_OVERHEAD);
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            if len == RESTAMP_LEN {
                let Some((t, rest)) = tail.split_first_chunk::<8>() else { return self.stop_malformed() };
                self.recv_ns = u64::from_le_bytes(*t);
                self.rest = rest;
                continue;
            }
            let len = len as usize;
            let topic_len = usize::from(head[4]);
            if tail.len() < len {
                return self.stop_malformed();
            }
            let (frame, rest) = tail.split_at(len);
            self.rest = rest;
            return Some((self.recv_ns, topic_len, frame));
        }
    }
}

impl BatchIter<'_> {
    #[cold]
    fn stop_malformed(&mut self) -> Option<(u64, usize, &'static [u8])> {
        self.malformed = true;
        self.rest = &[];
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A batch of shard `shard` holding `frames` as `(recv_ns, topic_len, frame)`, pushed in
    /// order, and the stamp after the last push.
    fn batch(shard: u16, frames: &[(u64, usize, &[u8])]) -> (Vec<u8>, u64) {
        let (mut b, mut stamp) = (Vec::new(), 0);
        for &(recv_ns, topic_len, frame) in frames {
            push(&mut b, &mut stamp, shard, recv_ns, topic_len, frame);
        }
        (b, stamp)
    }

    #[test]
    fn round_trip() {
        let (b, _) = batch(7, &[(42, 1, b"abc"), (42, 0, b""), (42, 3, b"xyz!")]);
        assert_eq!(b.len(), HEADER_BYTES + 3 * RECORD_OVERHEAD + 7, "the time once, a length per frame");
        let it = BatchIter::new(&b).expect("a batch");
        assert_eq!((it.shard(), it.recv_ns()), (7, 42));
        let got: Vec<(u64, usize, Vec<u8>)> = it.map(|(t, n, f)| (t, n, f.to_vec())).collect();
        assert_eq!(got, vec![(42, 1, b"abc".to_vec()), (42, 0, vec![]), (42, 3, b"xyz!".to_vec())]);
        assert!(BatchIter::new(b"ESH6\0...").is_none());
        assert!(BatchIter::new(b"").is_none());
    }

    /// A frame received later than the batch's time (the reader read its clock again for it)
    /// keeps its own time, and so do the frames after it: before, every frame of a batch had the
    /// first one's, earlier than the send time of a frame sent after it.
    #[test]
    fn a_later_receive_time_goes_in_a_restamp_record_for_the_frames_after_it() {
        let (b, mut stamp) = batch(1, &[(100, 1, b"a"), (250, 1, b"b"), (250, 1, b"c"), (400, 1, b"d")]);
        assert_eq!(stamp, 400, "the last record's time, for the next push");
        assert_eq!(b.len(), HEADER_BYTES + 4 * (RECORD_OVERHEAD + 1) + 2 * RESTAMP_BYTES, "a restamp per change");
        let mut it = BatchIter::new(&b).expect("a batch");
        let got: Vec<(u64, Vec<u8>)> = it.by_ref().map(|(t, _, f)| (t, f.to_vec())).collect();
        assert_eq!(got, [(100, b"a".to_vec()), (250, b"b".to_vec()), (250, b"c".to_vec()), (400, b"d".to_vec())]);
        assert!(!it.malformed());
        assert_eq!(it.recv_ns(), 400);
        // A fresh buffer starts a batch whose header has the time: no restamp needed.
        let mut fresh = Vec::new();
        push(&mut fresh, &mut stamp, 1, 500, 1, b"e");
        assert_eq!(fresh.len(), HEADER_BYTES + RECORD_OVERHEAD + 1);
        assert_eq!(BatchIter::new(&fresh).expect("a batch").next(), Some((500, 1, &b"e"[..])));
        // A restamp record cut short is malformed; the frames before it were read.
        let cut = HEADER_BYTES + RECORD_OVERHEAD + 1 + RESTAMP_BYTES - 1;
        let mut it = BatchIter::new(&b[..cut]).expect("a batch");
        assert_eq!(it.next(), Some((100, 1, &b"a"[..])));
        assert_eq!(it.next(), None);
        assert!(it.malformed());
    }

    #[test]
    fn truncated_batch_is_flagged() {
        let (b, _) = batch(0, &[(1, 2, b"abc"), (1, 2, b"defg")]);
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

    /// A per-message stamp carries what a batch's header does; it is never taken for a batch
    /// or a frame, nor a frame or a batch for it.
    #[test]
    fn a_per_message_stamp_round_trips_and_is_told_from_a_batch_and_a_frame() {
        let s = stamp(513, 0x0102_0304_0506_0708);
        assert_eq!(s.len(), STAMP_BYTES);
        assert_eq!(read_stamp(&s), Some((513, 0x0102_0304_0506_0708)));
        assert!(BatchIter::new(&s).is_none(), "not a batch");
        assert_eq!(read_stamp(&s[..STAMP_BYTES - 1]), None, "cut short");
        assert_eq!(read_stamp(&[&s[..], b"x"].concat()), None, "too long");
        let (b, _) = batch(513, &[(1, 1, b"abc")]);
        assert_eq!(read_stamp(&b[..HEADER_BYTES]), None, "a batch header");
        assert_eq!(read_stamp(b"AAPL\0......"), None, "a frame");
    }

    /// The batch as `push` wrote it before perf36 (a capacity check per part), for the test below.
    fn push_by_parts(
        staging: &mut Vec<u8>,
        stamp_ns: &mut u64,
        shard: u16,
        recv_ns: u64,
        topic_len: usize,
        frame: &[u8],
    ) {
        if staging.is_empty() {
            staging.push(BATCH_MARK);
            staging.extend_from_slice(&shard.to_le_bytes());
            staging.extend_from_slice(&recv_ns.to_le_bytes());
        } else if *stamp_ns != recv_ns {
            staging.extend_from_slice(&RESTAMP_LEN.to_le_bytes());
            staging.push(0);
            staging.extend_from_slice(&recv_ns.to_le_bytes());
        }
        *stamp_ns = recv_ns;
        staging.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        staging.push(topic_len as u8);
        staging.extend_from_slice(frame);
    }

    proptest! {
        /// `push` writes a whole record in one go into the buffer's spare capacity: the bytes are
        /// those the part-by-part form wrote, whatever the buffer held and had room for.
        #[test]
        fn push_writes_what_the_parts_did(
            start_cap in 0usize..64,
            frames in proptest::collection::vec((0u64..3, 0usize..4, proptest::collection::vec(any::<u8>(), 0..40)), 0..30),
        ) {
            let (mut got, mut want) = (Vec::with_capacity(start_cap), Vec::new());
            let (mut got_stamp, mut want_stamp) = (0, 0);
            for (recv_ns, topic_len, frame) in &frames {
                push(&mut got, &mut got_stamp, 9, *recv_ns, *topic_len, frame);
                push_by_parts(&mut want, &mut want_stamp, 9, *recv_ns, *topic_len, frame);
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(got_stamp, want_stamp);
            }
            // A cleared buffer (as the pool gives one back) starts a batch again.
            got.clear();
            want.clear();
            push(&mut got, &mut got_stamp, 9, 7, 1, b"x");
            push_by_parts(&mut want, &mut want_stamp, 9, 7, 1, b"x");
            prop_assert_eq!(got, want);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut v = vec![BATCH_MARK];
            v.extend_from_slice(&bytes);
            if let Some(it) = BatchIter::new(&v) { let _ = it.count(); }
        }
    }
}
