//! Feed sources for replay: a seedable synthetic generator (Zipf-popular
//! futures-style symbols, fixed payload size, optional bursts) and the stable
//! topic → shard split that the replay and the engine agree on.

/// SplitMix64: tiny, fast, seedable; plenty for a synthetic feed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

pub mod dbn_source;
pub mod mbo_synth;

use crate::wire::topic_hash;

/// Which of `shards` shards carries `topic`.
#[inline]
pub fn shard_of(topic: &[u8], shards: usize) -> usize {
    (topic_hash(topic) % shards.max(1) as u64) as usize
}

/// Most symbols a generated feed may have: 1 Mi, as many topics as a subscriber tracks per
/// publisher session.
pub const MAX_SYMBOLS: usize = 1 << 20;
/// Largest payload of a generated message: 16 MiB, sixteen times the engine's default
/// `max_msg_bytes` (a frame of it still fits a capture record).
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;
/// Most bytes of frames a generated feed builds before it sends (one whole frame per symbol):
/// 256 MiB (a million symbols of 100-byte payloads take 157 MiB). [`GeneratorConfig::check`]
/// holds a feed to it.
pub const MAX_FRAME_BYTES: usize = 256 << 20;
/// The bytes each symbol's frame adds to its payload: the header, and a topic of at most 15
/// bytes (up to [`MAX_SYMBOLS`]) with its NUL.
const FRAME_OVERHEAD: usize = crate::wire::HEADER_LEN + 16;

/// `symbols` if a generated feed may have that many (1 to [`MAX_SYMBOLS`]), else why not.
pub fn check_symbols(symbols: usize) -> Result<usize, String> {
    match symbols {
        0 => Err("must be at least 1".into()),
        n if n > MAX_SYMBOLS => Err(format!("too many: at most {MAX_SYMBOLS} symbols")),
        n => Ok(n),
    }
}

/// `bytes` if a generated payload may be that long (up to [`MAX_PAYLOAD_BYTES`]), else why not.
pub fn check_payload_bytes(bytes: usize) -> Result<usize, String> {
    if bytes > MAX_PAYLOAD_BYTES {
        return Err(format!("too large: at most {MAX_PAYLOAD_BYTES} bytes (16Mi)"));
    }
    Ok(bytes)
}

/// `s` if it is a Zipf exponent (finite, 0 or more), else why not.
pub fn check_zipf(s: f64) -> Result<f64, String> {
    if s.is_finite() && s >= 0.0 {
        Ok(s)
    } else {
        Err("not a Zipf exponent: a number, 0 or more (0 = uniform, 1 = classic Zipf)".into())
    }
}

const ROOTS: [&str; 40] = [
    "ES", "NQ", "YM", "RTY", "ZN", "ZB", "ZF", "ZT", "CL", "NG", "RB", "HO", "GC", "SI", "HG", "PL", "ZC", "ZS", "ZW",
    "ZM", "ZL", "LE", "HE", "GF", "6E", "6J", "6B", "6A", "6C", "6S", "FDAX", "FESX", "FGBL", "FGBM", "FGBS", "Z", "R",
    "I", "L", "VX",
];
const MONTHS: &[u8; 12] = b"FGHJKMNQUVXZ";

/// Topic names like `ESH6`, `CLZ7`: root · month code · year digit.
pub fn symbol_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let root = ROOTS[i % ROOTS.len()];
            let month = MONTHS[(i / ROOTS.len()) % 12] as char;
            let year = 6 + (i / (ROOTS.len() * 12)) % 4;
            let cycle = i / (ROOTS.len() * 12 * 4);
            if cycle == 0 {
                format!("{root}{month}{year}")
            } else {
                format!("{root}{month}{year}.{cycle}")
            }
        })
        .collect()
}

/// Settings of the synthetic generator.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub symbols: usize,
    /// Zipf exponent: 0 = uniform, ~1 = realistic skew (a few symbols dominate).
    pub zipf_s: f64,
    pub payload_bytes: usize,
    pub seed: u64,
}

impl GeneratorConfig {
    /// Whether this feed can be generated: each setting in its range ([`check_symbols`],
    /// [`check_payload_bytes`], [`check_zipf`]) and its frames, one per symbol, within
    /// [`MAX_FRAME_BYTES`]. The error names the setting (`` `symbols` 0: … ``).
    pub fn check(&self) -> Result<(), String> {
        check_symbols(self.symbols).map_err(|e| format!("`symbols` {}: {e}", self.symbols))?;
        check_payload_bytes(self.payload_bytes).map_err(|e| format!("`payload_bytes` {}: {e}", self.payload_bytes))?;
        check_zipf(self.zipf_s).map_err(|e| format!("`zipf` {}: {e}", self.zipf_s))?;
        check_frame_bytes(self.symbols, self.payload_bytes)
    }
}

/// Whether one frame per symbol of `payload_bytes` fits [`MAX_FRAME_BYTES`] (a generated feed,
/// `lvc-bench`: the frames are built before sending); the error shows the arithmetic.
pub fn check_frame_bytes(symbols: usize, payload_bytes: usize) -> Result<(), String> {
    let frames = symbols.saturating_mul(payload_bytes.saturating_add(FRAME_OVERHEAD));
    if frames > MAX_FRAME_BYTES {
        return Err(format!(
            "{symbols} symbols of {payload_bytes}-byte payloads: {symbols} × ({payload_bytes} + {FRAME_OVERHEAD} \
             bytes of topic and header) = {} MiB of frames (one per symbol, built before sending), over the {} MiB \
             a generated feed may build; give fewer symbols or smaller payloads",
            frames >> 20,
            MAX_FRAME_BYTES >> 20
        ));
    }
    Ok(())
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig { symbols: 100, zipf_s: 1.0, payload_bytes: 100, seed: 42 }
    }
}

/// Draws topics with Zipf-like popularity and fills payloads deterministically.
///
/// A draw is O(1) (Walker's alias method, Vose's construction: one random
/// number picks a column and a threshold in it), so a flat-out publisher
/// does not pay a search over the popularity table per message. The draw
/// is in integers: the random number's high half picks the column
/// (multiply-shift), its low half is compared with the column's threshold.
pub struct Generator {
    topics: Vec<String>,
    /// Alias table: column `i` is topic `i` when the draw is below its
    /// threshold, else its alias.
    columns: Vec<Column>,
    rng: SplitMix64,
    payload: Vec<u8>,
}

impl Generator {
    pub fn new(cfg: &GeneratorConfig) -> Self {
        Self::for_shard(cfg, 0, 1)
    }

    /// The part of `cfg`'s feed that shard `shard` of `shards` carries (by
    /// [`shard_of`]): its topics only, with the popularity they have in the
    /// whole feed. Several of these, one per shard, make the same feed as
    /// one generator split by topic (what one publisher thread per shard sends).
    pub fn for_shard(cfg: &GeneratorConfig, shard: usize, shards: usize) -> Self {
        let names = symbol_names(cfg.symbols.max(1));
        let (topics, weights): (Vec<String>, Vec<f64>) = names
            .into_iter()
            .enumerate()
            .filter(|(_, t)| shard_of(t.as_bytes(), shards) == shard)
            .map(|(k, t)| (t, 1.0 / ((k + 1) as f64).powf(cfg.zipf_s)))
            .unzip();
        let (prob, alias) = alias_table(&weights);
        let columns = prob
            .iter()
            .zip(alias)
            .map(|(&p, alias)| Column { threshold: (p.clamp(0.0, 1.0) * (1u64 << 32) as f64) as u64, alias })
            .collect();
        let mut rng = SplitMix64::new(cfg.seed ^ (shard as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let payload = (0..cfg.payload_bytes).map(|_| (rng.next_u64() & 0xff) as u8).collect();
        Generator { topics, columns, rng, payload }
    }

    /// The share of `cfg`'s whole feed (by popularity) that shard `shard` of
    /// `shards` carries.
    pub fn share(cfg: &GeneratorConfig, shard: usize, shards: usize) -> f64 {
        let w: Vec<(bool, f64)> = symbol_names(cfg.symbols.max(1))
            .iter()
            .enumerate()
            .map(|(k, t)| (shard_of(t.as_bytes(), shards) == shard, 1.0 / ((k + 1) as f64).powf(cfg.zipf_s)))
            .collect();
        let total: f64 = w.iter().map(|x| x.1).sum();
        w.iter().filter(|x| x.0).map(|x| x.1).sum::<f64>() / total
    }

    /// All topic names, most popular first.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Index of the next topic to send (into [`Generator::topics`]); 0 when
    /// this generator has no topics.
    #[inline]
    pub fn next_topic(&mut self) -> usize {
        let n = self.columns.len() as u64;
        let r = self.rng.next_u64();
        // (high half × n) >> 32 is below n; no column when there is none.
        let col = (((r >> 32) * n) >> 32) as usize;
        match self.columns.get(col) {
            Some(c) if (r & 0xffff_ffff) < c.threshold => col,
            Some(c) => c.alias as usize,
            None => 0,
        }
    }

    /// The payload for the next message: fixed size; its first 8 bytes vary.
    #[inline]
    pub fn payload(&mut self, counter: u64) -> &[u8] {
        let n = self.payload.len().min(8);
        self.payload[..n].copy_from_slice(&counter.to_le_bytes()[..n]);
        &self.payload
    }
}

/// One column of the alias table: its own topic below `threshold` (of
/// 2^32), else `alias`.
#[derive(Debug, Clone, Copy)]
struct Column {
    threshold: u64,
    alias: u32,
}

/// Vose's alias table for `weights` (any positive scale): `(prob, alias)`.
fn alias_table(weights: &[f64]) -> (Vec<f64>, Vec<u32>) {
    let n = weights.len();
    let total: f64 = weights.iter().sum();
    let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
    let mut prob = vec![1.0; n];
    let mut alias: Vec<u32> = (0..n as u32).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        prob[s] = scaled[s];
        alias[s] = l as u32;
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    (prob, alias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_out_of_range_is_refused_naming_the_setting() {
        let ok = GeneratorConfig::default();
        assert_eq!(ok.check(), Ok(()));
        let most = GeneratorConfig { symbols: MAX_SYMBOLS, ..Default::default() };
        assert_eq!(most.check(), Ok(()), "a million symbols of 100-byte payloads");
        let e = GeneratorConfig { symbols: 1_000_000_000_000, ..ok.clone() }.check().expect_err("symbols");
        assert_eq!(e, "`symbols` 1000000000000: too many: at most 1048576 symbols");
        let e = GeneratorConfig { symbols: 0, ..ok.clone() }.check().expect_err("no symbols");
        assert_eq!(e, "`symbols` 0: must be at least 1");
        let e = GeneratorConfig { payload_bytes: 10_000_000_000_000, ..ok.clone() }.check().expect_err("payload");
        assert!(e.starts_with("`payload_bytes` 10000000000000: too large: at most 16777216 bytes"), "{e}");
        let e = GeneratorConfig { zipf_s: -1.0, ..ok.clone() }.check().expect_err("zipf");
        assert!(e.starts_with("`zipf` -1: not a Zipf exponent"), "{e}");
        let e = GeneratorConfig { symbols: MAX_SYMBOLS, payload_bytes: 1000, ..ok }.check().expect_err("frames");
        assert!(
            e.contains(
                "1048576 symbols of 1000-byte payloads: 1048576 × (1000 + 64 bytes of topic and header) = 1064 MiB \
                 of frames"
            ) && e.contains("256 MiB"),
            "{e}"
        );
    }

    #[test]
    fn draws_follow_the_popularity() {
        let cfg = GeneratorConfig { symbols: 10, ..Default::default() };
        let mut g = Generator::new(&cfg);
        let mut counts = [0u32; 10];
        let n = 200_000;
        for _ in 0..n {
            counts[g.next_topic()] += 1;
        }
        let total: f64 = (1..=10).map(|k| 1.0 / k as f64).sum();
        for (k, &c) in counts.iter().enumerate() {
            let want = n as f64 / (k + 1) as f64 / total;
            assert!((c as f64 - want).abs() < 0.05 * want + 50.0, "topic {k}: {c} draws, expected ~{want:.0}");
        }
    }

    #[test]
    fn shard_generators_split_the_feed_by_topic() {
        let cfg = GeneratorConfig { symbols: 100, ..Default::default() };
        let mut seen = std::collections::HashSet::new();
        let mut share = 0.0;
        for k in 0..3 {
            let mut g = Generator::for_shard(&cfg, k, 3);
            assert!(g.topics().iter().all(|t| shard_of(t.as_bytes(), 3) == k));
            for _ in 0..1000 {
                let t = g.next_topic();
                assert!(t < g.topics().len());
            }
            seen.extend(g.topics().iter().cloned());
            share += Generator::share(&cfg, k, 3);
        }
        assert_eq!(seen.len(), 100, "every topic is on exactly one shard");
        assert!((share - 1.0).abs() < 1e-9, "shares add up to the whole feed: {share}");
    }

    #[test]
    fn generator_is_seeded_and_skewed() {
        let cfg = GeneratorConfig { symbols: 50, ..Default::default() };
        let mut a = Generator::new(&cfg);
        let mut b = Generator::new(&cfg);
        let draws: Vec<usize> = (0..10_000).map(|_| a.next_topic()).collect();
        assert!(draws.iter().all(|&d| d == b.next_topic()), "same seed, same feed");
        let top = draws.iter().filter(|&&d| d == 0).count();
        let tail = draws.iter().filter(|&&d| d == 49).count();
        assert!(top > 5 * tail.max(1), "most popular {top} vs least {tail}");
        assert!(draws.iter().all(|&d| d < 50));
    }

    #[test]
    fn symbols_are_unique_printable_topics() {
        let names = symbol_names(3000);
        let set: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len());
        assert!(names.iter().all(|n| n.bytes().all(|b| (0x21..=0x7e).contains(&b))));
        assert_eq!(names[0], "ESF6");
    }

    #[test]
    fn shard_split_is_stable_and_spread() {
        assert_eq!(shard_of(b"ESH6", 4), shard_of(b"ESH6", 4));
        assert_eq!(shard_of(b"anything", 1), 0);
        let mut counts = [0usize; 4];
        for n in symbol_names(400) {
            counts[shard_of(n.as_bytes(), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
    }
}
