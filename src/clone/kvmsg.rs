//! CHP wire codec (Clone pattern): the five-frame kvmsg and the snapshot request.
//!
//! The kvmsg is `key · sequence · uuid · properties · body`. Messages and requests are decoded
//! strictly where the spec is strict and tolerantly where real implementations differ.
//! Decoding never panics.

use std::fmt::Write as _;

/// Snapshot request command (frame 0 on the snapshot ROUTER).
pub const ICANHAZ: &[u8] = b"ICANHAZ?";
/// End-of-snapshot key; its sequence is the server's highest sequence, its body the subtree.
pub const KTHXBAI: &[u8] = b"KTHXBAI";
/// Heartbeat key published when the server is idle.
pub const HUGZ: &[u8] = b"HUGZ";
/// mdsub extension on the snapshot ROUTER: a status request (never a Binary Star vote).
pub const STATUS_REQ: &[u8] = b"STATUS?";
/// Reply key to [`STATUS_REQ`].
pub const STATUS_REP: &[u8] = b"STATUS";
/// Property that makes a value ephemeral: seconds to live, relative to receipt.
pub const TTL_PROP: &str = "ttl";
/// A message with more frames than this is malformed; the rest is drained, never stored.
pub const MAX_FRAMES: usize = 8;
/// Bytes above its limits that an mdsub server reads in one frame from the network: libzmq
/// (`ZMQ_MAXMSGSIZE`) closes the connection of a peer that sends a longer frame before the
/// server sees it, uncounted (docs/REFUSALS.md). A snapshot request's subtree is read up to
/// `--max-key-bytes` plus this, so one of at most this many bytes always reaches the server:
/// mdsub's client never asks for a longer one (it asks for that much of a longer subtree).
pub const FRAME_SLACK_BYTES: usize = 4096;
/// mdsub extension on KTHXBAI: the longest key the server accepts (`--max-key-bytes`).
pub const MAX_KEY_BYTES_PROP: &str = "max-key-bytes";
/// mdsub extension on KTHXBAI: the longest value the server accepts (`--max-value-bytes`).
pub const MAX_VALUE_BYTES_PROP: &str = "max-value-bytes";
/// mdsub extension on KTHXBAI: how often the server publishes HUGZ when it has nothing else to
/// publish, ms (`--hugz-interval`), so a client can tell a quiet server from a dead one whatever
/// the server was told ([`stamp_hugz_interval`]).
pub const HUGZ_INTERVAL_MS_PROP: &str = "hugz-interval-ms";

/// State the server's HUGZ interval on `msg` (a KTHXBAI) as a property.
pub fn stamp_hugz_interval(msg: &mut KvMsg, interval_ms: u64) {
    msg.set_prop(HUGZ_INTERVAL_MS_PROP, interval_ms.to_string());
}

/// The HUGZ interval `msg` states, ms: `None` from a server that does not say (another CHP
/// implementation, an older mdsub) or says something that is not a number above 0.
pub fn hugz_interval_stated_by(msg: &KvMsg) -> Option<u64> {
    msg.prop(HUGZ_INTERVAL_MS_PROP).and_then(|v| v.parse::<u64>().ok()).filter(|&ms| ms > 0)
}

/// The longest key and value a server accepts: checked by the server on every update, and
/// stated as properties on each snapshot's KTHXBAI ([`Limits::stamp`]) so that mdsub's client
/// refuses an update at once rather than waiting for an acknowledgement that cannot come.
/// Properties are CHP's place for extensions (the guide's kvmsg carries them on every message);
/// a peer that does not know these ignores them, and a server that does not state them
/// leaves its clients checking nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
}

impl Limits {
    /// Why an update with this key and value is refused (a counter name, and the words), if it is.
    pub fn check(&self, key: &[u8], body: &[u8]) -> Result<(), (&'static str, String)> {
        if key.len() > self.max_key_bytes {
            return Err(("key_too_long", format!("key of {} bytes > max-key-bytes {}", key.len(), self.max_key_bytes)));
        }
        if body.len() > self.max_value_bytes {
            return Err((
                "value_too_long",
                format!("value of {} bytes > max-value-bytes {}", body.len(), self.max_value_bytes),
            ));
        }
        Ok(())
    }

    /// State the limits on `msg` (a KTHXBAI) as properties.
    pub fn stamp(&self, msg: &mut KvMsg) {
        msg.set_prop(MAX_KEY_BYTES_PROP, self.max_key_bytes.to_string());
        msg.set_prop(MAX_VALUE_BYTES_PROP, self.max_value_bytes.to_string());
    }

    /// The limits `msg` states: both properties present and numbers, or `None` (a server that
    /// does not say, such as another CHP implementation).
    pub fn stated_by(msg: &KvMsg) -> Option<Limits> {
        let n = |name| msg.prop(name).and_then(|v| v.parse::<usize>().ok());
        Some(Limits { max_key_bytes: n(MAX_KEY_BYTES_PROP)?, max_value_bytes: n(MAX_VALUE_BYTES_PROP)? })
    }
}

/// A UUID as carried in frame 2 (16 raw bytes).
pub type Uuid = [u8; 16];

/// One CHP message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvMsg {
    /// Frame 0: the key (a path like `/md/status/engine1`) or a command key.
    pub key: Vec<u8>,
    /// Frame 1: sequence, 8 bytes big-endian on the wire.
    pub sequence: u64,
    /// Frame 2: UUID of the update, or `None` for an empty frame.
    pub uuid: Option<Uuid>,
    /// Frame 3: properties in order, `name=value\n` each on the wire.
    pub props: Vec<(String, String)>,
    /// Frame 4: the value; empty means delete.
    pub body: Vec<u8>,
}

/// Why a message or request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A kvmsg has exactly five frames.
    #[error("expected 5 frames, got {got}")]
    FrameCount { got: usize },
    /// The sequence frame is exactly 8 bytes.
    #[error("sequence frame is {got} bytes, expected 8")]
    SequenceLen { got: usize },
    /// The UUID frame is 16 bytes or empty.
    #[error("uuid frame is {got} bytes, expected 16 or 0")]
    UuidLen { got: usize },
    /// The properties frame is not `name=value\n` lines.
    #[error("properties line {line}: {reason}")]
    Property { line: usize, reason: &'static str },
    /// A snapshot-port request that is neither `ICANHAZ?` nor `STATUS?`.
    #[error("unknown request command")]
    UnknownRequest,
    /// `ICANHAZ?` with more than one argument frame.
    #[error("ICANHAZ? with {got} frames (expected 1 or 2)")]
    RequestFrames { got: usize },
}

/// Why a message could not be encoded (property names/values that the text format cannot carry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Name empty or containing `=` or a newline, or value containing a newline.
    #[error("property `{name}` cannot be encoded as name=value")]
    BadProperty { name: String },
}

impl KvMsg {
    /// A message with key, sequence and body, no UUID, no properties.
    pub fn new(key: impl Into<Vec<u8>>, sequence: u64, body: impl Into<Vec<u8>>) -> Self {
        KvMsg { key: key.into(), sequence, uuid: None, props: Vec::new(), body: body.into() }
    }

    /// Value of property `name` (first occurrence).
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.props.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Set (replace or append) property `name`.
    pub fn set_prop(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.props.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.props.push((name.to_string(), value)),
        }
    }

    /// Remove property `name` (all occurrences).
    pub fn remove_prop(&mut self, name: &str) {
        self.props.retain(|(n, _)| n != name);
    }

    /// True when the body is empty (a delete).
    pub fn is_delete(&self) -> bool {
        self.body.is_empty()
    }

    /// Decode five frames. Strict on frame count, sequence and UUID sizes and property syntax.
    pub fn decode<F: AsRef<[u8]>>(frames: &[F]) -> Result<KvMsg, DecodeError> {
        if frames.len() != 5 {
            return Err(DecodeError::FrameCount { got: frames.len() });
        }
        let seq = frames[1].as_ref();
        let sequence = match <[u8; 8]>::try_from(seq) {
            Ok(b) => u64::from_be_bytes(b),
            Err(_) => return Err(DecodeError::SequenceLen { got: seq.len() }),
        };
        let u = frames[2].as_ref();
        let uuid = match u.len() {
            0 => None,
            16 => <[u8; 16]>::try_from(u).ok(),
            got => return Err(DecodeError::UuidLen { got }),
        };
        Ok(KvMsg {
            key: frames[0].as_ref().to_vec(),
            sequence,
            uuid,
            props: decode_props(frames[3].as_ref())?,
            body: frames[4].as_ref().to_vec(),
        })
    }

    /// Decode from received `zmq::Message` frames.
    pub fn decode_messages(msgs: &[zmq::Message]) -> Result<KvMsg, DecodeError> {
        let mut parts: [&[u8]; MAX_FRAMES] = [&[]; MAX_FRAMES];
        for (slot, m) in parts.iter_mut().zip(msgs) {
            *slot = &m[..];
        }
        Self::decode(&parts[..msgs.len().min(MAX_FRAMES)])
    }

    /// The five frames as they go on the wire.
    pub fn encode(&self) -> Result<[Vec<u8>; 5], EncodeError> {
        Ok([
            self.key.clone(),
            self.sequence.to_be_bytes().to_vec(),
            self.uuid.map(|u| u.to_vec()).unwrap_or_default(),
            encode_props(&self.props)?,
            self.body.clone(),
        ])
    }

    /// Send on `socket`, prefixed by `identity` (ROUTER replies). Properties that cannot be encoded
    /// are an error and nothing is sent.
    pub fn send(&self, socket: &zmq::Socket, identity: Option<&[u8]>) -> Result<(), SendError> {
        let props = if self.props.is_empty() { Vec::new() } else { encode_props(&self.props)? };
        if let Some(id) = identity {
            socket.send(id, zmq::SNDMORE)?;
        }
        socket.send(&self.key[..], zmq::SNDMORE)?;
        socket.send(&self.sequence.to_be_bytes()[..], zmq::SNDMORE)?;
        match &self.uuid {
            Some(u) => socket.send(&u[..], zmq::SNDMORE)?,
            None => socket.send(&b""[..], zmq::SNDMORE)?,
        }
        socket.send(props, zmq::SNDMORE)?;
        socket.send(&self.body[..], 0)?;
        Ok(())
    }
}

/// Sending a kvmsg failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The socket refused it.
    #[error("zmq send: {0}")]
    Zmq(#[from] zmq::Error),
}

/// Decode the properties frame: `name=value` lines separated by `\n`. Tolerated: a missing final
/// newline, empty lines, `=` inside the value (split at the first `=`). Rejected: non-UTF-8, a
/// line without `=`, an empty name.
pub fn decode_props(frame: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    let text = std::str::from_utf8(frame).map_err(|_| DecodeError::Property { line: 0, reason: "not UTF-8" })?;
    let mut props = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once('=').ok_or(DecodeError::Property { line: i + 1, reason: "no `=`" })?;
        if name.is_empty() {
            return Err(DecodeError::Property { line: i + 1, reason: "empty name" });
        }
        // What `encode_props` cannot write back (to a snapshot, the data directory) is refused
        // here, so every property held in a map can be: before, a peer's `a=b\rc` was stored,
        // then written to the data directory as no properties at all.
        if line.contains('\r') {
            return Err(DecodeError::Property { line: i + 1, reason: "a carriage return inside the line" });
        }
        props.push((name.to_string(), value.to_string()));
    }
    Ok(props)
}

/// Encode properties as `name=value\n` lines (every line ends in `\n`, as the C kvmsg does).
pub fn encode_props(props: &[(String, String)]) -> Result<Vec<u8>, EncodeError> {
    let mut out = String::new();
    for (name, value) in props {
        if name.is_empty() || name.contains(['=', '\n', '\r']) || value.contains(['\n', '\r']) {
            return Err(EncodeError::BadProperty { name: name.clone() });
        }
        let _ = writeln!(out, "{name}={value}");
    }
    Ok(out.into_bytes())
}

/// A request on the snapshot port (after the ROUTER identity frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `ICANHAZ?` + subtree (a missing subtree frame, as in the guide's early models, means all).
    Snapshot { subtree: Vec<u8> },
    /// `STATUS?` (mdsub extension).
    Status,
}

/// Decode a snapshot-port request (frames after the identity).
pub fn decode_request<F: AsRef<[u8]>>(frames: &[F]) -> Result<Request, DecodeError> {
    let Some(cmd) = frames.first() else {
        return Err(DecodeError::UnknownRequest);
    };
    if cmd.as_ref() == ICANHAZ {
        return match frames.len() {
            1 => Ok(Request::Snapshot { subtree: Vec::new() }),
            2 => Ok(Request::Snapshot { subtree: frames[1].as_ref().to_vec() }),
            got => Err(DecodeError::RequestFrames { got }),
        };
    }
    if cmd.as_ref() == STATUS_REQ && frames.len() == 1 {
        return Ok(Request::Status);
    }
    Err(DecodeError::UnknownRequest)
}

/// Receive one multipart message into `frames` (reused; no allocation in the steady state).
/// At most [`MAX_FRAMES`] frames are kept; the count returned is the true number of frames, so a
/// caller can reject oversized messages. Returns `Ok(None)` when nothing is waiting.
pub fn recv_frames(socket: &zmq::Socket, frames: &mut Vec<zmq::Message>, flags: i32) -> zmq::Result<Option<usize>> {
    let mut n = 0usize;
    loop {
        let slot = n.min(MAX_FRAMES - 1);
        while frames.len() <= slot {
            frames.push(zmq::Message::new());
        }
        match socket.recv(&mut frames[slot], if n == 0 { flags } else { 0 }) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) if n == 0 => return Ok(None),
            Err(e) => return Err(e),
        }
        n += 1;
        if !frames[slot].get_more() {
            return Ok(Some(n));
        }
    }
}

/// Render a key or value for people: UTF-8 as is, anything else escaped.
pub fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_guide_shapes() {
        let m = KvMsg::decode(&[&b"/a"[..], &7u64.to_be_bytes()[..], &[1u8; 16][..], b"ttl=5\n", b"v"]).expect("ok");
        assert_eq!(m.sequence, 7);
        assert_eq!(m.prop("ttl"), Some("5"));
        // HUGZ carrying a sequence, KTHXBAI with subtree or empty body.
        let h = KvMsg::decode(&[&b"HUGZ"[..], &9u64.to_be_bytes()[..], b"", b"", b""]).expect("hugz");
        assert_eq!((h.key.as_slice(), h.sequence), (HUGZ, 9));
        let k = KvMsg::decode(&[KTHXBAI, &3u64.to_be_bytes()[..], b"", b"", b"/md/"]).expect("kthxbai");
        assert_eq!(k.body, b"/md/");
        // value containing '=', no trailing newline, empty lines
        assert_eq!(
            decode_props(b"a=b=c\n\nx=").expect("props"),
            vec![("a".into(), "b=c".into()), ("x".into(), String::new())]
        );
    }

    #[test]
    fn strict_where_spec_is_strict() {
        let s = 1u64.to_be_bytes();
        assert_eq!(KvMsg::decode(&[&b"k"[..], b"1", b"", b"", b""]), Err(DecodeError::SequenceLen { got: 1 }));
        assert_eq!(KvMsg::decode(&[&b"k"[..], &s[..], b"abc", b"", b""]), Err(DecodeError::UuidLen { got: 3 }));
        assert!(matches!(
            KvMsg::decode(&[&b"k"[..], &s[..], b"", b"noequals", b""]),
            Err(DecodeError::Property { .. })
        ));
        assert_eq!(KvMsg::decode(&[b"k"]), Err(DecodeError::FrameCount { got: 1 }));
    }

    #[test]
    fn decoded_properties_always_encode_again() {
        // Before, `a=b\rc` decoded (a carriage return inside a line), then failed to encode: a
        // peer's update carrying it was written to the data directory with no properties.
        for bad in [&b"a=b\rc\n"[..], b"a\rb=c\n", b"x=1\r\na=\r\r\n"] {
            let e = decode_props(bad).expect_err("refused");
            assert!(matches!(e, DecodeError::Property { reason: "a carriage return inside the line", .. }), "{e:?}");
        }
        assert_eq!(decode_props(b"a=b\r\n").expect("a CRLF line"), vec![("a".into(), "b".into())]);
    }

    #[test]
    fn requests() {
        assert_eq!(decode_request(&[ICANHAZ, b"/x/"]), Ok(Request::Snapshot { subtree: b"/x/".to_vec() }));
        assert_eq!(decode_request(&[ICANHAZ]), Ok(Request::Snapshot { subtree: vec![] }));
        assert_eq!(decode_request(&[STATUS_REQ]), Ok(Request::Status));
        assert!(decode_request(&[b"GIMME"]).is_err());
        assert!(decode_request::<&[u8]>(&[]).is_err());
        assert!(decode_request(&[ICANHAZ, b"a", b"b"]).is_err());
    }

    fn prop_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec(("[a-z_][a-z0-9_=]{0,8}".prop_map(|s| s.replace('=', "_")), "[ -~]{0,12}"), 0..4)
    }

    proptest! {
        #[test]
        fn no_input_panics(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..7)) {
            let _ = KvMsg::decode(&frames);
            let _ = decode_request(&frames);
        }

        #[test]
        fn what_decodes_encodes(frame in proptest::collection::vec(
            proptest::sample::select(b"ab=\r\n".to_vec()), 0..16)) {
            if let Ok(props) = decode_props(&frame) {
                prop_assert!(encode_props(&props).is_ok(), "{:?} decoded to {:?}", frame, props);
            }
        }

        #[test]
        fn round_trip_is_exact(key in proptest::collection::vec(any::<u8>(), 0..32), sequence in any::<u64>(),
                               uuid in proptest::option::of(any::<[u8; 16]>()), props in prop_strategy(),
                               body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let m = KvMsg { key, sequence, uuid, props, body };
            let frames = m.encode().expect("encodable");
            prop_assert_eq!(KvMsg::decode(&frames).expect("decodes"), m.clone());
            // and frames are a fixed point
            prop_assert_eq!(KvMsg::decode(&frames).expect("decodes").encode().expect("enc"), frames);
        }
    }
}
