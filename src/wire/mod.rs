//! The market-data frame: `topic · 0x00 · 48-byte header · payload`, one
//! ZeroMQ frame per message (layout and rationale in `docs/WIRE.md`).
//!
//! Decoding is zero-copy: [`decode`] returns a [`FrameView`] that borrows the
//! topic and payload from the received bytes and never panics; every bad frame
//! is a [`DecodeError`] whose [`DecodeError::reason`] indexes a drop counter.

pub mod capture;
pub mod dbn;
pub mod handshake;

/// Wire version this build writes and reads.
pub const VERSION: u8 = 1;
/// Size of the fixed header that follows the topic's NUL.
pub const HEADER_LEN: usize = 48;
/// Longest topic accepted (bytes, excluding the NUL).
pub const MAX_TOPIC_LEN: usize = 255;

/// Header flag: this frame is a value re-sent from a last-value cache.
pub const FLAG_FROM_CACHE: u16 = 1 << 0;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A market-data message.
    Data = 1,
    /// Liveness while the publisher has nothing to send; `stream_seq` is the last data sequence sent.
    Heartbeat = 2,
    /// The publisher's stream ends; `stream_seq` is the last data sequence sent
    /// (= messages sent on this stream, since sequences start at 1).
    EndOfStream = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Data),
            2 => Some(Kind::Heartbeat),
            3 => Some(Kind::EndOfStream),
            _ => None,
        }
    }
}

/// The fixed header. Little-endian on the wire, see `docs/WIRE.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u16,
    /// Which publisher sent this stream.
    pub publisher_id: u32,
    /// Chosen afresh each time a publisher starts: a new session with
    /// `stream_seq` 1 is a restart, not a gap.
    pub session_id: u64,
    /// Per-publisher stream sequence, from 1, +1 per data frame.
    pub stream_seq: u64,
    /// Per-topic sequence, from 1, +1 per data frame on this topic, so gaps
    /// show through topic filters.
    pub topic_seq: u64,
    /// Intended send time (the pacer's schedule), ns since the Unix epoch (CLOCK_REALTIME).
    pub send_time_ns: u64,
}

impl Header {
    /// A data header of publisher 0, session 1, no flags, with both sequences
    /// `seq`: the frame tests and examples build.
    pub fn data(seq: u64, send_time_ns: u64) -> Header {
        Header {
            kind: Kind::Data,
            flags: 0,
            publisher_id: 0,
            session_id: 1,
            stream_seq: seq,
            topic_seq: seq,
            send_time_ns,
        }
    }
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("no NUL after the topic within {MAX_TOPIC_LEN} bytes")]
    MissingNul,
    #[error("empty topic")]
    EmptyTopic,
    #[error("topic has a byte outside printable ASCII")]
    BadTopic,
    #[error("frame too short for the header ({have} of {HEADER_LEN} bytes)")]
    Short { have: usize },
    #[error("unknown wire version {0}")]
    UnknownVersion(u8),
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    #[error("payload length {declared} in header but {actual} bytes follow")]
    LengthMismatch { declared: u32, actual: usize },
}

/// Number of distinct drop reasons (size of a per-reason counter array).
pub const DROP_REASONS: usize = 7;

/// Names of the drop reasons, indexed by [`DecodeError::reason`].
pub const DROP_REASON_NAMES: [&str; DROP_REASONS] =
    ["missing_nul", "empty_topic", "bad_topic", "short", "unknown_version", "unknown_kind", "length_mismatch"];

impl DecodeError {
    /// Index into [`DROP_REASON_NAMES`] / a counter array.
    pub fn reason(&self) -> usize {
        match self {
            DecodeError::MissingNul => 0,
            DecodeError::EmptyTopic => 1,
            DecodeError::BadTopic => 2,
            DecodeError::Short { .. } => 3,
            DecodeError::UnknownVersion(_) => 4,
            DecodeError::UnknownKind(_) => 5,
            DecodeError::LengthMismatch { .. } => 6,
        }
    }
}

/// A decoded frame borrowing from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameView<'a> {
    pub topic: &'a [u8],
    pub header: Header,
    pub payload: &'a [u8],
}

impl FrameView<'_> {
    /// The topic as text (topics are printable ASCII, checked at decode).
    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(self.topic).unwrap_or("?")
    }
}

/// The `N` bytes at `at` (the caller has checked the length), for `from_le_bytes`.
#[inline]
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// Split off the topic: the bytes before the first NUL. Cheap; used for
/// routing and by proxies that only need the topic.
#[inline]
pub fn split_topic(frame: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let window = &frame[..frame.len().min(MAX_TOPIC_LEN + 1)];
    let nul = window.iter().position(|&b| b == 0).ok_or(DecodeError::MissingNul)?;
    Ok((&frame[..nul], &frame[nul + 1..]))
}

/// Why no frame the decoder accepts can start with the subscription prefix `prefix`, or None
/// when one can. A frame starts with its topic, 1 to [`MAX_TOPIC_LEN`] bytes of printable
/// ASCII (`0x21..=0x7e`), then a NUL: so the bytes of a prefix before a NUL must be such a
/// topic's start, and a NUL may end a prefix (`ESH6\0` selects the topic `ESH6` alone, not
/// `ESH6.1`) but not be followed by more (what follows it in a frame is the header, no topic).
pub fn prefix_problem(prefix: &[u8]) -> Option<String> {
    let (topic, after) = match prefix.iter().position(|&b| b == 0) {
        Some(nul) => (&prefix[..nul], Some(&prefix[nul + 1..])),
        None => (prefix, None),
    };
    if after.is_some() && topic.is_empty() {
        return Some("it starts with a NUL, and every frame starts with its topic, never empty".into());
    }
    if let Some(b) = topic.iter().find(|b| !(0x21..=0x7e).contains(*b)) {
        return Some(format!(
            "it holds the byte 0x{b:02x}, and topics are printable ASCII without spaces (0x21 to 0x7e)"
        ));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Some(format!("its topic part is {} bytes, and topics are at most {MAX_TOPIC_LEN}", topic.len()));
    }
    if after.is_some_and(|a| !a.is_empty()) {
        return Some(
            "it goes on after its NUL, where a frame has its header, not its topic (a NUL may end a prefix: \
             `TOPIC\\0` selects that topic alone)"
                .into(),
        );
    }
    None
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of every zero byte of `w` (little-endian byte order); the
/// lowest flag marks the first zero byte exactly (flags above it may be false).
#[inline]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// The high bit of every byte of `w` outside printable ASCII (`0x21..=0x7e`).
#[inline]
fn unprintable_bytes(w: u64) -> u64 {
    // Per byte, on its low 7 bits (no carry crosses a byte): + 0x5f sets the
    // high bit from 0x21 up, + 0x01 from 0x7f up; bytes from 0x80 have it already.
    let low = w & !HIGHS;
    let from_21 = low.wrapping_add(0x5f * ONES) & HIGHS;
    let from_7f = low.wrapping_add(ONES) & HIGHS;
    (w & HIGHS) | from_7f | (!from_21 & HIGHS)
}

/// Split off the topic and check it: `(topic, rest)` when a NUL ends a
/// non-empty topic of printable ASCII within [`MAX_TOPIC_LEN`] bytes. One
/// pass, eight bytes at a time (topics are short: usually one step).
#[inline]
fn split_checked_topic(frame: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let window = &frame[..frame.len().min(MAX_TOPIC_LEN + 1)];
    let mut bad = 0u64;
    let mut at = 0;
    let mut nul = None;
    while let Some(word) = window.get(at..at + 8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(word);
        let w = u64::from_le_bytes(b);
        let z = zero_bytes(w);
        if z != 0 {
            // Bytes before the first zero: the low 8 × index bits.
            let before = (1u64 << (z.trailing_zeros() - 7)) - 1;
            bad |= unprintable_bytes(w) & before;
            nul = Some(at + (z.trailing_zeros() / 8) as usize);
            break;
        }
        bad |= unprintable_bytes(w);
        at += 8;
    }
    let nul = match nul {
        Some(n) => n,
        None => {
            let tail = window[at..].iter().position(|&b| b == 0).ok_or(DecodeError::MissingNul)?;
            bad |= window[at..at + tail].iter().any(|&b| !(0x21..=0x7e).contains(&b)) as u64;
            at + tail
        }
    };
    if nul == 0 {
        return Err(DecodeError::EmptyTopic);
    }
    if bad != 0 {
        return Err(DecodeError::BadTopic);
    }
    Ok((&frame[..nul], &frame[nul + 1..]))
}

/// A one-frame message as the proxies take it, decoded once: the LVC caches only an mdsub
/// frame and not a bad one, the tap shows a bad one with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneFrame<'a> {
    /// A frame the decoder takes.
    Mdsub(FrameView<'a>),
    /// A topic NUL, so an mdsub frame, but one the decoder refuses: why.
    Bad(DecodeError),
    /// No topic NUL: not mdsub's at all (foreign traffic).
    Foreign,
}

impl<'a> OneFrame<'a> {
    /// Decode `frame` and sort it.
    #[inline]
    pub fn of(frame: &'a [u8]) -> Self {
        match decode(frame) {
            Ok(v) => OneFrame::Mdsub(v),
            Err(DecodeError::MissingNul) => OneFrame::Foreign,
            Err(why) => OneFrame::Bad(why),
        }
    }
}

/// Decode one frame. Never panics; never allocates.
#[inline]
pub fn decode(frame: &[u8]) -> Result<FrameView<'_>, DecodeError> {
    let (topic, rest) = split_checked_topic(frame)?;
    decode_after_topic(topic, rest)
}

/// Decode a frame whose topic, its first `topic_len` bytes, a reader has checked with
/// [`decode`] already (the engine's hand-off carries the length, so a worker neither
/// searches for the NUL again nor checks the topic's bytes a second time). The NUL must
/// still stand at `topic_len`, and the header and payload length are checked as in
/// [`decode`]. Never panics; never allocates.
#[inline]
pub fn decode_checked_topic(frame: &[u8], topic_len: usize) -> Result<FrameView<'_>, DecodeError> {
    match frame.get(topic_len) {
        Some(0) if topic_len > 0 => decode_after_topic(&frame[..topic_len], &frame[topic_len + 1..]),
        Some(0) => Err(DecodeError::EmptyTopic),
        _ => Err(DecodeError::MissingNul),
    }
}

/// The header and payload after a frame's topic and its NUL.
#[inline]
fn decode_after_topic<'a>(topic: &'a [u8], rest: &'a [u8]) -> Result<FrameView<'a>, DecodeError> {
    if rest.len() < HEADER_LEN {
        return Err(DecodeError::Short { have: rest.len() });
    }
    let (h, payload) = rest.split_at(HEADER_LEN);
    if h[0] != VERSION {
        return Err(DecodeError::UnknownVersion(h[0]));
    }
    let kind = Kind::from_u8(h[1]).ok_or(DecodeError::UnknownKind(h[1]))?;
    let declared = u32::from_le_bytes(bytes_at(h, 40));
    if declared as usize != payload.len() {
        return Err(DecodeError::LengthMismatch { declared, actual: payload.len() });
    }
    Ok(FrameView {
        topic,
        header: Header {
            kind,
            flags: u16::from_le_bytes(bytes_at(h, 2)),
            publisher_id: u32::from_le_bytes(bytes_at(h, 4)),
            session_id: u64::from_le_bytes(bytes_at(h, 8)),
            stream_seq: u64::from_le_bytes(bytes_at(h, 16)),
            topic_seq: u64::from_le_bytes(bytes_at(h, 24)),
            send_time_ns: u64::from_le_bytes(bytes_at(h, 32)),
        },
        payload,
    })
}

/// Encoded length of a frame.
#[inline]
pub fn frame_len(topic: &[u8], payload_len: usize) -> usize {
    topic.len() + 1 + HEADER_LEN + payload_len
}

/// Encode a frame into `out`, which must be exactly [`frame_len`] bytes.
/// Panics only on a caller bug (wrong `out` length, over-long or NUL topic,
/// payload over 4 GiB); never on data.
#[inline]
pub fn encode_into(out: &mut [u8], topic: &[u8], h: &Header, payload: &[u8]) {
    assert!(!topic.is_empty() && topic.len() <= MAX_TOPIC_LEN && !topic.contains(&0), "bad topic");
    assert_eq!(out.len(), frame_len(topic, payload.len()), "output length");
    let payload_len = u32::try_from(payload.len()).expect("payload under 4 GiB");
    let (t, rest) = out.split_at_mut(topic.len());
    t.copy_from_slice(topic);
    rest[0] = 0;
    let (hb, p) = rest[1..].split_at_mut(HEADER_LEN);
    hb[0] = VERSION;
    hb[1] = h.kind as u8;
    hb[2..4].copy_from_slice(&h.flags.to_le_bytes());
    hb[4..8].copy_from_slice(&h.publisher_id.to_le_bytes());
    hb[8..16].copy_from_slice(&h.session_id.to_le_bytes());
    hb[16..24].copy_from_slice(&h.stream_seq.to_le_bytes());
    hb[24..32].copy_from_slice(&h.topic_seq.to_le_bytes());
    hb[32..40].copy_from_slice(&h.send_time_ns.to_le_bytes());
    hb[40..44].copy_from_slice(&payload_len.to_le_bytes());
    hb[44..48].copy_from_slice(&[0; 4]);
    p.copy_from_slice(payload);
}

/// Encode a frame into a new `Vec`.
pub fn encode(topic: &[u8], h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; frame_len(topic, payload.len())];
    encode_into(&mut v, topic, h, payload);
    v
}

/// Rewrite the stream sequence, topic sequence and intended send time of an
/// encoded frame whose topic is `topic_len` bytes, in place (a publisher that
/// sends frames it built once). A frame too short to hold a header is left alone.
#[inline]
pub fn patch_sequences(frame: &mut [u8], topic_len: usize, stream_seq: u64, topic_seq: u64, send_time_ns: u64) {
    let at = topic_len + 1;
    if let Some(h) = frame.get_mut(at..at + HEADER_LEN) {
        h[16..24].copy_from_slice(&stream_seq.to_le_bytes());
        h[24..32].copy_from_slice(&topic_seq.to_le_bytes());
        h[32..40].copy_from_slice(&send_time_ns.to_le_bytes());
    }
}

/// Offset of the flags field within a frame whose topic is `topic_len` bytes
/// (lets a cache set [`FLAG_FROM_CACHE`] in place).
pub fn flags_offset(topic_len: usize) -> usize {
    topic_len + 1 + 2
}

/// Set [`FLAG_FROM_CACHE`] in an encoded frame in place; returns false (and
/// leaves the bytes alone) if the frame does not decode.
pub fn mark_from_cache(frame: &mut [u8]) -> bool {
    let Ok(view) = decode(frame) else { return false };
    let at = flags_offset(view.topic.len());
    let flags = view.header.flags | FLAG_FROM_CACHE;
    frame[at..at + 2].copy_from_slice(&flags.to_le_bytes());
    true
}

/// Topic of heartbeat and end-of-stream frames (see docs/WIRE.md).
pub const CONTROL_TOPIC: &[u8] = b"_mdsub";

/// The subscription a subscriber that ends at an end of stream holds while it waits for one
/// (an `mdsub engine` shard): a publisher that has it on a connection when its end of stream
/// goes out (`mdsub replay`) waits for that many confirmations ([`TOOK_EOS`]). Like them it
/// matches no frame (after the control topic's NUL comes a header, whose version is never 0),
/// so it changes no delivery, and it does not take the control topic: it is no subscriber of its
/// own in a publisher's count (docs/WIRE.md).
pub const AWAITS_EOS: &[u8] = b"_mdsub\0\0awaits-eos";

/// The mark of a proxy's own subscription to everything (`mdsub lvc`, which takes every topic to
/// keep its cache warm): the proxy subscribes it before its `""` on the same connection, and a
/// publisher that counts its subscribers (`mdsub replay --subscribers`) takes one subscription
/// to the control topic off per mark open: the proxy is no subscriber of its own, the subscribers
/// behind it count as their subscriptions come through. Like [`AWAITS_EOS`] it matches no frame
/// and does not take the control topic.
pub const PROXY_OWN: &[u8] = b"_mdsub\0\0proxy-own";

/// A subscriber's confirmation that an end of stream arrived: a subscription made and withdrawn
/// at once (withdrawals alone come from connections that end, too: never taken for one). Followed
/// by the publisher id (u32 LE) and session id (u64 LE), [`took_eos`]: this session's end of
/// stream was counted. Bare: the subscriber's reading ended (a stop, a croak), it waits for no
/// end of stream any more.
pub const TOOK_EOS: &[u8] = b"_mdsub\0\0took-eos";

/// Bytes of [`took_eos`]'s subscription.
pub const TOOK_EOS_LEN: usize = TOOK_EOS.len() + 12;

/// The subscription that confirms the end of stream of `publisher_id`'s session `session_id`.
pub fn took_eos(publisher_id: u32, session_id: u64) -> [u8; TOOK_EOS_LEN] {
    let mut p = [0u8; TOOK_EOS_LEN];
    p[..TOOK_EOS.len()].copy_from_slice(TOOK_EOS);
    p[TOOK_EOS.len()..TOOK_EOS.len() + 4].copy_from_slice(&publisher_id.to_le_bytes());
    p[TOOK_EOS.len() + 4..].copy_from_slice(&session_id.to_le_bytes());
    p
}

/// Does subscription `prefix` confirm the end of stream of `publisher_id`'s session `session_id`
/// ([`took_eos`] of it, or a bare [`TOOK_EOS`]: one that waits for none any more)?
pub fn confirms_eos(prefix: &[u8], publisher_id: u32, session_id: u64) -> bool {
    prefix == TOOK_EOS || prefix == took_eos(publisher_id, session_id)
}

/// Bytes of a subscriber id: what follows [`AWAITS_EOS`], [`took_eos`] or a bare [`TOOK_EOS`] in
/// their named forms ([`awaits_eos_as`], [`took_eos_as`], [`stopped_awaiting_as`]).
pub const SUBSCRIBER_ID_LEN: usize = 8;

/// [`AWAITS_EOS`] naming the subscriber that holds it (its id, u64 LE, drawn once per engine
/// shard): held beside the bare one, on every connection of that subscriber. A publisher that
/// reads the named forms counts a subscriber once however many of its connections hold it (a
/// reconnect beside a connection dead without a close: both hold it), and takes a confirmation
/// that names it ([`took_eos_as`]) for all of them; one that does not (an older `mdsub replay`)
/// counts the bare subscription and the bare confirmation as before (docs/WIRE.md).
pub fn awaits_eos_as(subscriber_id: u64) -> [u8; AWAITS_EOS.len() + SUBSCRIBER_ID_LEN] {
    naming(AWAITS_EOS, subscriber_id)
}

/// [`took_eos`] naming the subscriber that confirms ([`awaits_eos_as`]): sent before the bare
/// form, which an older publisher counts.
pub fn took_eos_as(publisher_id: u32, session_id: u64, subscriber_id: u64) -> [u8; TOOK_EOS_LEN + SUBSCRIBER_ID_LEN] {
    naming(&took_eos(publisher_id, session_id), subscriber_id)
}

/// A bare [`TOOK_EOS`] naming the subscriber ([`awaits_eos_as`]): its reading ended, it waits
/// for no end of stream any more. Sent before the bare form.
pub fn stopped_awaiting_as(subscriber_id: u64) -> [u8; TOOK_EOS.len() + SUBSCRIBER_ID_LEN] {
    naming(TOOK_EOS, subscriber_id)
}

/// `head` followed by `subscriber_id` (u64 LE): a named form of `N` = `head.len()` +
/// [`SUBSCRIBER_ID_LEN`] bytes, as [`id_after`] reads it back.
fn naming<const N: usize>(head: &[u8], subscriber_id: u64) -> [u8; N] {
    let mut p = [0u8; N];
    p[..N - SUBSCRIBER_ID_LEN].copy_from_slice(head);
    p[N - SUBSCRIBER_ID_LEN..].copy_from_slice(&subscriber_id.to_le_bytes());
    p
}

/// The subscriber a subscription `prefix` names if it is [`awaits_eos_as`] of it.
pub fn awaiting_id(prefix: &[u8]) -> Option<u64> {
    id_after(prefix, AWAITS_EOS)
}

/// The subscriber a subscription `prefix` names if it confirms the end of stream of
/// `publisher_id`'s session `session_id` in a named form ([`took_eos_as`] of it, or
/// [`stopped_awaiting_as`]).
pub fn confirming_id(prefix: &[u8], publisher_id: u32, session_id: u64) -> Option<u64> {
    id_after(prefix, TOOK_EOS).or_else(|| id_after(prefix, &took_eos(publisher_id, session_id)))
}

/// The id after `head` when `prefix` is `head` and [`SUBSCRIBER_ID_LEN`] bytes.
fn id_after(prefix: &[u8], head: &[u8]) -> Option<u64> {
    let id = prefix.strip_prefix(head)?;
    Some(u64::from_le_bytes(id.try_into().ok()?))
}

/// FNV-1a's offset basis: the starting state of [`fnv1a`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: continue hash state `h` over `bytes`. Fast for short keys.
#[inline]
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a over the topic: the stable topic → shard and topic → worker
/// function (the same on every host and build).
#[inline]
pub fn topic_hash(topic: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: Kind) -> Header {
        Header {
            kind,
            flags: 0,
            publisher_id: 7,
            session_id: 0xdead_beef,
            stream_seq: 42,
            topic_seq: 3,
            send_time_ns: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn a_prefix_no_frame_can_start_with_is_said() {
        for ok in ["", "E", "ESH6", "ESH6\0", "_hb", "~!", &"T".repeat(MAX_TOPIC_LEN)] {
            assert_eq!(prefix_problem(ok.as_bytes()), None, "{ok:?}");
        }
        // Each can match no frame the decoder accepts (the first: `subscribe = ["\u0000"]`,
        // which passed `profile check` and delivered nothing).
        for (bad, says) in [
            ("\0", "it starts with a NUL"),
            ("\0ES", "it starts with a NUL"),
            ("ES H6", "the byte 0x20"),
            ("ÉS", "the byte 0xc3"),
            ("ES\x7f", "the byte 0x7f"),
            ("ESH6\0\x01", "it goes on after its NUL"),
        ] {
            assert!(prefix_problem(bad.as_bytes()).is_some_and(|w| w.contains(says)), "{bad:?}");
        }
        let long = "T".repeat(MAX_TOPIC_LEN + 1);
        assert!(prefix_problem(long.as_bytes()).is_some_and(|w| w.contains("at most 255")));
        // What the rule says is what the decoder does: a frame of each accepted prefix decodes.
        let f = encode(b"ESH6", &Header::data(1, 0), b"x");
        assert!(f.starts_with(b"ESH6\0") && decode(&f).is_ok());
    }

    /// The end-of-stream wait's subscriptions match no frame the decoder accepts (so adding them
    /// changes what no subscriber receives), are no prefix a profile takes, and lie within the
    /// control topic's own subscription (a subscriber holding them takes control frames anyway).
    #[test]
    fn the_end_of_stream_wait_subscriptions_match_no_frame() {
        let ack = took_eos(7, 0xdead_beef);
        for p in [AWAITS_EOS, TOOK_EOS, &ack, PROXY_OWN] {
            assert!(prefix_problem(p).is_some_and(|w| w.contains("goes on after its NUL")), "{p:?}");
            assert!(p.starts_with(&[CONTROL_TOPIC, b"\0", b"\0"].concat()), "{p:?}");
            for kind in [Kind::Data, Kind::Heartbeat, Kind::EndOfStream] {
                let f = encode(CONTROL_TOPIC, &header(kind), &8u64.to_le_bytes());
                assert!(decode(&f).is_ok() && !f.starts_with(p), "{kind:?}");
            }
        }
        // The byte after the NUL is a header's version: 0 is none.
        let mut f = encode(CONTROL_TOPIC, &header(Kind::EndOfStream), &[0u8; 8]);
        f[CONTROL_TOPIC.len() + 1] = 0;
        assert_eq!(decode(&f), Err(DecodeError::UnknownVersion(0)));
        // A confirmation names its session, or none.
        assert!(confirms_eos(&ack, 7, 0xdead_beef) && confirms_eos(TOOK_EOS, 7, 0xdead_beef));
        assert!(!confirms_eos(&ack, 8, 0xdead_beef) && !confirms_eos(&ack, 7, 1) && !confirms_eos(AWAITS_EOS, 7, 1));
        assert!(!confirms_eos(&ack[..TOOK_EOS_LEN - 1], 7, 0xdead_beef));
    }

    #[test]
    fn the_named_end_of_stream_forms_carry_their_subscriber_and_nothing_else_does() {
        let id = 0x0123_4567_89ab_cdef;
        assert_eq!(awaiting_id(&awaits_eos_as(id)), Some(id));
        assert_eq!(confirming_id(&took_eos_as(7, 0xdead_beef, id), 7, 0xdead_beef), Some(id));
        assert_eq!(confirming_id(&stopped_awaiting_as(id), 7, 0xdead_beef), Some(id));
        // Another session's, a cut one, the bare forms: none.
        assert_eq!(confirming_id(&took_eos_as(7, 1, id), 7, 0xdead_beef), None);
        assert_eq!(confirming_id(&took_eos_as(8, 0xdead_beef, id), 7, 0xdead_beef), None);
        assert_eq!(confirming_id(&took_eos_as(7, 0xdead_beef, id)[..TOOK_EOS_LEN + 7], 7, 0xdead_beef), None);
        for bare in [AWAITS_EOS, TOOK_EOS, &took_eos(7, 0xdead_beef)] {
            assert_eq!((awaiting_id(bare), confirming_id(bare, 7, 0xdead_beef)), (None, None));
        }
        // An older publisher reads neither named form as the bare one, nor as a confirmation.
        assert!(!confirms_eos(&took_eos_as(7, 0xdead_beef, id), 7, 0xdead_beef));
        assert!(!confirms_eos(&stopped_awaiting_as(id), 7, 0xdead_beef));
        // Like the bare forms they match no frame (their control topic's NUL is followed by a
        // 0, never a header's version).
        assert_eq!(&awaits_eos_as(id)[..CONTROL_TOPIC.len() + 2], b"_mdsub\0\0");
    }

    #[test]
    fn decode_checked_topic_checks_the_nul_header_and_length() {
        let f = encode(b"ESH6", &header(Kind::Data), b"hello");
        assert_eq!(decode_checked_topic(&f, 4), decode(&f));
        assert_eq!(decode_checked_topic(&f, 3), Err(DecodeError::MissingNul), "no NUL there");
        assert_eq!(decode_checked_topic(&f, f.len()), Err(DecodeError::MissingNul), "past the end");
        assert_eq!(decode_checked_topic(b"\0rest", 0), Err(DecodeError::EmptyTopic));
        assert_eq!(decode_checked_topic(&f[..20], 4), Err(DecodeError::Short { have: 15 }));
        let mut bad = f.clone();
        bad[5] = 9;
        assert_eq!(decode_checked_topic(&bad, 4), Err(DecodeError::UnknownVersion(9)));
        assert!(matches!(decode_checked_topic(&f[..f.len() - 1], 4), Err(DecodeError::LengthMismatch { .. })));
    }

    #[test]
    fn round_trip() {
        let f = encode(b"ESH6", &header(Kind::Data), b"hello");
        let v = decode(&f).expect("decodes");
        assert_eq!(v.topic, b"ESH6");
        assert_eq!(v.header, header(Kind::Data));
        assert_eq!(v.payload, b"hello");
        assert_eq!(f.len(), 4 + 1 + HEADER_LEN + 5);
    }

    #[test]
    fn topic_prefix_filtering_works_on_encoded_frames() {
        let f = encode(b"ESH6", &header(Kind::Data), b"");
        assert!(f.starts_with(b"ES"));
        assert!(f.starts_with(b"ESH6\0"));
        assert!(!encode(b"ESH66", &header(Kind::Data), b"").starts_with(b"ESH6\0"));
    }

    #[test]
    fn each_malformation_has_its_reason() {
        let good = encode(b"T", &header(Kind::Data), b"xy");
        assert_eq!(decode(b"no nul here"), Err(DecodeError::MissingNul));
        assert_eq!(decode(b"\0rest"), Err(DecodeError::EmptyTopic));
        assert_eq!(decode(b"a b\0"), Err(DecodeError::BadTopic));
        assert_eq!(decode(&good[..10]), Err(DecodeError::Short { have: 8 }));
        let mut v = good.clone();
        v[2] = 9;
        assert_eq!(decode(&v), Err(DecodeError::UnknownVersion(9)));
        let mut k = good.clone();
        k[3] = 0;
        assert_eq!(decode(&k), Err(DecodeError::UnknownKind(0)));
        let mut long = good.clone();
        long.push(1);
        assert_eq!(decode(&long), Err(DecodeError::LengthMismatch { declared: 2, actual: 3 }));
        let mut over = vec![b'A'; MAX_TOPIC_LEN + 1];
        over.extend_from_slice(&good[1..]);
        assert_eq!(decode(&over), Err(DecodeError::MissingNul));
        let reasons: std::collections::HashSet<usize> = [
            DecodeError::MissingNul,
            DecodeError::EmptyTopic,
            DecodeError::BadTopic,
            DecodeError::Short { have: 0 },
            DecodeError::UnknownVersion(0),
            DecodeError::UnknownKind(0),
            DecodeError::LengthMismatch { declared: 0, actual: 0 },
        ]
        .iter()
        .map(|e| e.reason())
        .collect();
        assert_eq!(reasons.len(), DROP_REASONS);
    }

    #[test]
    fn mark_from_cache_sets_only_the_flag() {
        let mut f = encode(b"ESH6", &header(Kind::Data), b"p");
        assert!(mark_from_cache(&mut f));
        let v = decode(&f).expect("decodes");
        assert_eq!(v.header.flags, FLAG_FROM_CACHE);
        assert_eq!(v.header.stream_seq, 42);
        assert!(!mark_from_cache(&mut b"junk".to_vec()));
    }

    /// The topic rules as first written: find the NUL, then check every byte.
    fn split_checked_topic_reference(frame: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
        let (topic, rest) = split_topic(frame)?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopic);
        }
        if !topic.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
            return Err(DecodeError::BadTopic);
        }
        Ok((topic, rest))
    }

    #[test]
    fn the_word_at_a_time_topic_check_matches_the_byte_rules() {
        // Every byte value in every position of a word, before and after the NUL.
        for len in 0..20 {
            for at in 0..len.max(1) {
                for v in 0..=255u8 {
                    let mut f = vec![b'A'; len];
                    if at < len {
                        f[at] = v;
                    }
                    f.push(0);
                    f.extend_from_slice(b"rest\x01\xff");
                    assert_eq!(split_checked_topic(&f), split_checked_topic_reference(&f), "{f:?}");
                }
            }
        }
        for n in [MAX_TOPIC_LEN - 1, MAX_TOPIC_LEN, MAX_TOPIC_LEN + 1, MAX_TOPIC_LEN + 9] {
            let mut f = vec![b'Z'; n];
            f.push(0);
            assert_eq!(split_checked_topic(&f), split_checked_topic_reference(&f), "topic of {n}");
            assert_eq!(split_checked_topic(&f[..n]), Err(DecodeError::MissingNul));
        }
    }

    proptest! {
        #[test]
        fn the_topic_check_matches_the_byte_rules_on_any_bytes(
            bytes in proptest::collection::vec(prop_oneof![Just(0u8), 0x1fu8..0x23, 0x7du8..0x82, any::<u8>()], 0..300))
        {
            prop_assert_eq!(split_checked_topic(&bytes), split_checked_topic_reference(&bytes));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes);
        }

        /// Given the topic length `decode` found, the worker's decode gives the same view; given
        /// any other length, an error or (a NUL inside the payload) never a panic.
        #[test]
        fn decode_checked_topic_agrees_with_decode(
            bytes in proptest::collection::vec(any::<u8>(), 0..120),
            topic in "[!-~]{1,20}", payload in proptest::collection::vec(any::<u8>(), 0..64),
            topic_len in 0usize..300)
        {
            let _ = decode_checked_topic(&bytes, topic_len);
            let f = encode(topic.as_bytes(), &header(Kind::Data), &payload);
            prop_assert_eq!(decode_checked_topic(&f, topic.len()), decode(&f));
            if topic_len != topic.len() && f.get(topic_len) != Some(&0) {
                prop_assert!(decode_checked_topic(&f, topic_len).is_err());
            }
        }

        #[test]
        fn decode_never_panics_near_valid(
            topic in "[A-Z]{1,8}", payload in proptest::collection::vec(any::<u8>(), 0..64),
            cut in 0usize..200, flip in 0usize..200, byte in any::<u8>())
        {
            let mut f = encode(topic.as_bytes(), &header(Kind::Data), &payload);
            if flip < f.len() { f[flip] = byte; }
            f.truncate(cut.min(f.len()));
            let _ = decode(&f);
        }

        #[test]
        fn round_trip_any(
            topic in "[!-~]{1,40}", payload in proptest::collection::vec(any::<u8>(), 0..300),
            kind in 1u8..=3, flags: u16, publisher_id: u32, session_id: u64,
            stream_seq: u64, topic_seq: u64, send_time_ns: u64)
        {
            let h = Header { kind: Kind::from_u8(kind).expect("kind"), flags, publisher_id, session_id, stream_seq, topic_seq, send_time_ns };
            let f = encode(topic.as_bytes(), &h, &payload);
            let v = decode(&f).expect("round trip");
            prop_assert_eq!(v.topic, topic.as_bytes());
            prop_assert_eq!(v.header, h);
            prop_assert_eq!(v.payload, &payload[..]);
        }
    }
}
