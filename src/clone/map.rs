//! Socket-free key-value map with TTLs and subtrees for the clone store (Clone pattern).
//!
//! Every operation takes
//! `now_ns` from the caller, so expiry is tested with a manual clock. Also the bounded set of
//! recently applied update UUIDs used to match and de-duplicate updates.

use std::collections::{BTreeSet, HashSet, VecDeque};

use super::kvmsg::{KvMsg, Uuid, TTL_PROP};

/// Longest TTL accepted (one year, in seconds); larger values are malformed.
pub const MAX_TTL_S: u64 = 365 * 86_400;

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sequence of the update that wrote it.
    pub sequence: u64,
    /// UUID of the update that wrote it.
    pub uuid: Option<Uuid>,
    /// Properties other than `ttl`.
    pub props: Vec<(String, String)>,
    /// The value (never empty: an empty value deletes).
    pub body: Vec<u8>,
    /// Monotonic deadline after which the server deletes the key.
    pub expires_at_ns: Option<u64>,
}

/// Map errors (bad TTL property).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// `ttl` is not whole seconds (ASCII digits) up to [`MAX_TTL_S`].
    #[error("ttl `{value}` is not a whole number of seconds in 0..={MAX_TTL_S} (digits only)")]
    BadTtl { value: String },
}

/// The `ttl` property as a peer must send it (CHP: relative seconds, which every peer writes
/// as an integer: mdsub's client and server, the guide's clients): whole seconds in ASCII
/// digits, no sign, point, exponent or spaces, `0` to [`MAX_TTL_S`]. `0` or absent: no TTL.
pub fn wire_ttl_s(msg: &KvMsg) -> Result<Option<u64>, MapError> {
    let Some(v) = msg.prop(TTL_PROP) else { return Ok(None) };
    let bad = || MapError::BadTtl { value: v.to_string() };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: u64 = v.parse().map_err(|_| bad())?;
    if secs > MAX_TTL_S {
        return Err(bad());
    }
    Ok((secs != 0).then_some(secs))
}

/// The `ttl` of a message the server holds, in ns: one checked as it came in
/// ([`wire_ttl_s`]), or one [`normalize_peer_ttl`] rewrote, which keeps milliseconds
/// (`S.mmm`, never sent on: the map keeps a deadline, not the property). `0` or absent: no TTL.
pub fn ttl_ns(msg: &KvMsg) -> Result<Option<u64>, MapError> {
    if let Ok(s) = wire_ttl_s(msg) {
        return Ok(s.map(|s| s * 1_000_000_000));
    }
    let Some(v) = msg.prop(TTL_PROP) else { return Ok(None) };
    let bad = || MapError::BadTtl { value: v.to_string() };
    let (s, ms) = v.split_once('.').ok_or_else(bad)?;
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(s) || ms.len() != 3 || !digits(ms) {
        return Err(bad());
    }
    let total_ms = s.parse::<u64>().map_err(|_| bad())?.saturating_mul(1000).saturating_add(ms.parse().unwrap_or(0));
    if total_ms > MAX_TTL_S * 1000 {
        return Err(bad());
    }
    Ok((total_ms != 0).then_some(total_ms * 1_000_000))
}

/// How far from the wall clock an absolute `ttl` may lie (one year, in ms): see [`normalize_peer_ttl`].
pub const ABSOLUTE_TTL_WINDOW_MS: u64 = MAX_TTL_S * 1000;

/// Make a `ttl` from a peer server relative. The guide's reference servers (clonesrv5/6) store a
/// client's `ttl` as an absolute deadline, `zclock_time() + ttl * 1000` (ms since the Unix
/// epoch), and send it so in snapshots and updates. A `ttl` that does not parse as relative
/// seconds but is an integer lying within [`ABSOLUTE_TTL_WINDOW_MS`] of `wall_ms` (so it cannot
/// be a relative one, which are at most [`MAX_TTL_S`]) is read as that deadline and rewritten in
/// place to the seconds left (at least 1 ms: a deadline already past expires at once).
/// Returns whether it was rewritten; anything else that does not parse is [`MapError::BadTtl`].
pub fn normalize_peer_ttl(msg: &mut KvMsg, wall_ms: u64) -> Result<bool, MapError> {
    let Err(bad) = wire_ttl_s(msg) else { return Ok(false) };
    let Some(v) = msg.prop(TTL_PROP) else { return Err(bad) };
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    let Ok(deadline_ms) = v.parse::<u64>() else { return Err(bad) };
    if deadline_ms.abs_diff(wall_ms) > ABSOLUTE_TTL_WINDOW_MS {
        return Err(bad);
    }
    let left_ms = deadline_ms.saturating_sub(wall_ms).max(1);
    msg.set_prop(TTL_PROP, format!("{}.{:03}", left_ms / 1000, left_ms % 1000));
    Ok(true)
}

/// What [`KvMap::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Key now holds the new value.
    Stored,
    /// Key removed.
    Deleted,
    /// Delete of a key that was not there.
    Absent,
}

/// An ordered map (so a subtree is a range scan) plus an expiry index.
///
/// The entries are a persistent B-tree ([`imbl::OrdMap`]): [`KvMap::freeze`] takes a copy in
/// O(1) that shares its nodes, which a full snapshot writes on another thread while this map
/// goes on changing (a node shared with a copy is copied at its first change). A std `BTreeMap`
/// copy of 1M keys took 0.8-1.6 s, on the serving thread.
#[derive(Debug, Default, Clone)]
pub struct KvMap {
    entries: imbl::OrdMap<Vec<u8>, Entry>,
    expiry: BTreeSet<(u64, Vec<u8>)>,
}

/// A copy of a [`KvMap`]'s entries as they were at [`KvMap::freeze`], for another thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrozenMap(imbl::OrdMap<Vec<u8>, Entry>);

impl FrozenMap {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.0.iter()
    }
}

impl KvMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Apply an update received at `now_ns`: an empty body deletes; a `ttl` property sets a deadline.
    pub fn apply(&mut self, msg: &KvMsg, now_ns: u64) -> Result<Applied, MapError> {
        let ttl = ttl_ns(msg)?;
        let expires_at_ns = ttl.map(|t| now_ns.saturating_add(t));
        Ok(self.put(msg.key.clone(), msg, expires_at_ns))
    }

    /// Like [`KvMap::apply`] but takes the message, so key and value are moved, not copied.
    pub fn apply_owned(&mut self, msg: KvMsg, now_ns: u64) -> Result<Applied, MapError> {
        let expires_at_ns = ttl_ns(&msg)?.map(|t| now_ns.saturating_add(t));
        let KvMsg { key, sequence, uuid, mut props, body } = msg;
        if let Some(old) = self.entries.get(&key) {
            if let Some(t) = old.expires_at_ns {
                self.expiry.remove(&(t, key.clone()));
            }
        }
        if body.is_empty() {
            return Ok(match self.entries.remove(&key) {
                Some(_) => Applied::Deleted,
                None => Applied::Absent,
            });
        }
        if let Some(t) = expires_at_ns {
            self.expiry.insert((t, key.clone()));
        }
        if !props.is_empty() {
            props.retain(|(n, _)| n != TTL_PROP);
        }
        self.entries.insert(key, Entry { sequence, uuid, props, body, expires_at_ns });
        Ok(Applied::Stored)
    }

    /// Record that `key`'s current value was re-published under `sequence`.
    pub fn set_sequence(&mut self, key: &[u8], sequence: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.sequence = sequence;
        }
    }

    /// Store with an explicit deadline (recovery, replication).
    pub fn put(&mut self, key: Vec<u8>, msg: &KvMsg, expires_at_ns: Option<u64>) -> Applied {
        if let Some(old) = self.entries.get(&key) {
            if let Some(t) = old.expires_at_ns {
                self.expiry.remove(&(t, key.clone()));
            }
        }
        if msg.body.is_empty() {
            return match self.entries.remove(&key) {
                Some(_) => Applied::Deleted,
                None => Applied::Absent,
            };
        }
        if let Some(t) = expires_at_ns {
            self.expiry.insert((t, key.clone()));
        }
        let props = msg.props.iter().filter(|(n, _)| n != TTL_PROP).cloned().collect();
        self.entries.insert(
            key,
            Entry { sequence: msg.sequence, uuid: msg.uuid, props, body: msg.body.clone(), expires_at_ns },
        );
        Applied::Stored
    }

    /// Remove and return every key whose deadline is at or before `now_ns`, oldest first.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(Vec<u8>, Entry)> {
        let mut out = Vec::new();
        while let Some((t, _)) = self.expiry.first() {
            if *t > now_ns {
                break;
            }
            let Some((_, key)) = self.expiry.pop_first() else { break };
            if let Some(e) = self.entries.remove(&key) {
                out.push((key, e));
            }
        }
        out
    }

    /// The earliest deadline, if any key has a TTL.
    pub fn next_expiry_ns(&self) -> Option<u64> {
        self.expiry.first().map(|(t, _)| *t)
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn subtree<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a Entry)> + 'a {
        self.entries
            .range::<_, [u8]>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// All entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.entries.iter()
    }

    /// The entries as they are now, in O(1): see [`KvMap`].
    pub fn freeze(&self) -> FrozenMap {
        FrozenMap(self.entries.clone())
    }

    /// The entry as a message for a snapshot at `now_ns`: the `ttl` property carries the seconds
    /// left (rounded up, at least 1), relative as on the wire.
    pub fn to_msg(key: &[u8], e: &Entry, now_ns: u64) -> KvMsg {
        let mut m = KvMsg {
            key: key.to_vec(),
            sequence: e.sequence,
            uuid: e.uuid,
            props: e.props.clone(),
            body: e.body.clone(),
        };
        if let Some(t) = e.expires_at_ns {
            let left_ns = t.saturating_sub(now_ns);
            m.set_prop(TTL_PROP, left_ns.div_ceil(1_000_000_000).max(1).to_string());
        }
        m
    }
}

/// Hasher for UUIDs: fold the 16 bytes into a word and finish with murmur3's fmix64 (full
/// avalanche, so seed + counter UUIDs spread over every bucket); much cheaper than SipHash on the
/// server's hot path. Not DoS-resistant: the set is bounded and only holds UUIDs.
#[derive(Default, Clone, Copy)]
pub struct UuidHasher(u64);

impl std::hash::Hasher for UuidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(23) ^ u64::from_le_bytes(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, _len: usize) {}
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A set of UUIDs hashed with [`UuidHasher`].
pub type UuidSet = HashSet<Uuid, std::hash::BuildHasherDefault<UuidHasher>>;

/// A bounded set of UUIDs seen recently (FIFO eviction), for de-duplication and pending matching.
#[derive(Debug, Clone)]
pub struct RecentUuids {
    set: UuidSet,
    order: VecDeque<Uuid>,
    cap: usize,
}

impl RecentUuids {
    /// Remember up to `cap` UUIDs.
    pub fn new(cap: usize) -> Self {
        RecentUuids { set: UuidSet::default(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// Remember `u`; returns false if it was already known.
    pub fn insert(&mut self, u: Uuid) -> bool {
        if !self.set.insert(u) {
            return false;
        }
        self.order.push_back(u);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Forget `u` (an update that was refused after all, so its re-send is
    /// not taken for a duplicate).
    pub fn remove(&mut self, u: &Uuid) {
        if self.set.remove(u) {
            self.order.retain(|o| o != u);
        }
    }

    /// Was `u` seen recently?
    pub fn contains(&self, u: &Uuid) -> bool {
        self.set.contains(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn set(key: &str, seq: u64, body: &str, ttl: Option<&str>) -> KvMsg {
        let mut m = KvMsg::new(key, seq, body);
        if let Some(t) = ttl {
            m.set_prop(TTL_PROP, t);
        }
        m
    }

    #[test]
    fn ttl_expires_with_manual_clock() {
        let mut m = KvMap::new();
        m.apply(&set("/a", 1, "x", Some("2")), 10 * S).expect("ok");
        m.apply(&set("/b", 2, "y", Some("1.500")), 10 * S).expect("ok (normalize_peer_ttl's form)");
        m.apply(&set("/c", 3, "z", None), 10 * S).expect("ok");
        assert_eq!(m.next_expiry_ns(), Some(11 * S + S / 2));
        assert!(m.expire(11 * S).is_empty());
        let gone: Vec<_> = m.expire(12 * S).into_iter().map(|(k, _)| k).collect();
        assert_eq!(gone, vec![b"/b".to_vec(), b"/a".to_vec()]);
        assert_eq!(m.len(), 1);
        assert_eq!(m.next_expiry_ns(), None);
    }

    #[test]
    fn overwrite_clears_old_deadline_and_delete_removes() {
        let mut m = KvMap::new();
        m.apply(&set("/a", 1, "x", Some("1")), 0).expect("ok");
        m.apply(&set("/a", 2, "y", None), 0).expect("ok");
        assert!(m.expire(5 * S).is_empty(), "new value has no ttl");
        assert_eq!(m.apply(&set("/a", 3, "", None), 0), Ok(Applied::Deleted));
        assert_eq!(m.apply(&set("/a", 4, "", None), 0), Ok(Applied::Absent));
        assert!(m.is_empty());
        assert!(m.apply(&set("/a", 5, "v", Some("soon")), 0).is_err());
        assert!(m.apply(&set("/a", 5, "v", Some("-1")), 0).is_err());
        assert_eq!(m.apply(&set("/a", 5, "v", Some("0")), 0), Ok(Applied::Stored));
        assert_eq!(m.next_expiry_ns(), None, "ttl=0 means no ttl");
    }

    #[test]
    fn subtree_and_snapshot_ttl_is_relative() {
        let mut m = KvMap::new();
        for k in ["/md/a", "/md/b", "/mx", "/n"] {
            m.apply(&set(k, 1, "v", Some("10")), 0).expect("ok");
        }
        let keys: Vec<_> = m.subtree(b"/md/").map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![b"/md/a".to_vec(), b"/md/b".to_vec()]);
        assert_eq!(m.subtree(b"").count(), 4);
        let e = m.get(b"/n").expect("there");
        assert_eq!(KvMap::to_msg(b"/n", e, 3 * S + 1).prop(TTL_PROP), Some("7"));
    }

    #[test]
    fn uuid_hashes_spread_for_counter_uuids() {
        use std::hash::BuildHasher;
        let b = std::hash::BuildHasherDefault::<UuidHasher>::default();
        let mut low_bits = HashSet::new();
        for i in 0..4096u64 {
            let mut u = [0u8; 16];
            u[8..].copy_from_slice(&i.to_be_bytes());
            low_bits.insert(b.hash_one(u) & 0xfff);
        }
        assert!(low_bits.len() > 2000, "only {} distinct low-bit buckets", low_bits.len());
    }

    #[test]
    fn recent_uuids_are_bounded() {
        let mut r = RecentUuids::new(2);
        assert!(r.insert([1; 16]));
        assert!(!r.insert([1; 16]));
        r.insert([2; 16]);
        r.insert([3; 16]);
        assert!(!r.contains(&[1; 16]));
        assert!(r.contains(&[3; 16]));
    }

    #[test]
    fn a_ttl_on_the_wire_is_whole_seconds_in_digits() {
        let with = |ttl: &str| set("/k", 1, "v", Some(ttl));
        assert_eq!(wire_ttl_s(&set("/k", 1, "v", None)), Ok(None));
        for (ttl, secs) in [("0", None), ("5", Some(5)), ("05", Some(5)), ("31536000", Some(MAX_TTL_S))] {
            assert_eq!(wire_ttl_s(&with(ttl)), Ok(secs), "{ttl}");
            assert_eq!(ttl_ns(&with(ttl)), Ok(secs.map(|s| s * S)), "{ttl}");
        }
        // Before: parsed as a float after trimming, so these were all accepted.
        for bad in ["1.5", " 5", "5 ", "+5", "-5", "5e1", "", "inf", "NaN", "31536001", "0x10", "1.500"] {
            let e = wire_ttl_s(&with(bad)).expect_err(bad);
            assert_eq!(
                e.to_string(),
                format!("ttl `{bad}` is not a whole number of seconds in 0..=31536000 (digits only)")
            );
        }
        // The server's own rewrite of an absolute ttl keeps milliseconds, and nothing looser.
        assert_eq!(ttl_ns(&with("1.500")), Ok(Some(1_500_000_000)));
        for bad in ["1.5", " 5", "1.5000", ".500", "1.-50", "31536000.001"] {
            assert!(ttl_ns(&with(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_peer_ttl_in_the_reference_absolute_form_becomes_relative() {
        let wall_ms = 1_796_000_000_000; // December 2026
        let with = |ttl: &str| {
            let mut m = KvMsg::new("/k", 1, "v");
            m.set_prop(TTL_PROP, ttl);
            m
        };
        // Relative seconds are left alone.
        let mut m = with("60");
        assert_eq!(normalize_peer_ttl(&mut m, wall_ms), Ok(false));
        assert_eq!(m.prop(TTL_PROP), Some("60"));
        // clonesrv6: zclock_time() + 60 * 1000.
        let mut m = with(&(wall_ms + 60_000).to_string());
        assert_eq!(normalize_peer_ttl(&mut m, wall_ms), Ok(true));
        assert_eq!(m.prop(TTL_PROP), Some("60.000"));
        assert_eq!(ttl_ns(&m), Ok(Some(60_000_000_000)));
        // A deadline already past expires at once.
        let mut m = with(&(wall_ms - 5_000).to_string());
        assert_eq!(normalize_peer_ttl(&mut m, wall_ms), Ok(true));
        assert_eq!(ttl_ns(&m), Ok(Some(1_000_000)));
        // Not recognisable: words, negative, far from the wall clock, too long to be relative.
        for bad in ["soon", "-5", "99999999999999999", "40000000", &(wall_ms * 2).to_string()] {
            let mut m = with(bad);
            assert!(normalize_peer_ttl(&mut m, wall_ms).is_err(), "{bad}");
            assert_eq!(m.prop(TTL_PROP), Some(bad), "left as it was");
        }
    }
}
