//! Write a synthetic Databento MBO file (DBN, zstd when the name ends in
//! `.zst`) for `mdsub bench --from` and `mdsub replay --from`: instruments
//! with Zipf popularity (the feed generator's) and the library's synthetic
//! books (`mdsub::feed::mbo_synth`: adds, full and partial cancels, modifies,
//! fills and trades near each instrument's mid price).
//!
//! ```text
//! cargo run --release --example gen_mbo -- OUT.dbn[.zst] [RECORDS] [INSTRUMENTS] [SPAN_S]
//! ```
//! Defaults: 1000000 records, 100 instruments, a 10 s recorded span (the metadata's `end`).

use std::io::BufWriter;

use dbn::encode::dbn::Encoder;
use dbn::encode::EncodeRecord;
use dbn::Schema;
use mdsub::feed::dbn_source::symbology_metadata;
use mdsub::feed::mbo_synth::{spread_ts, MboBooks};
use mdsub::feed::{symbol_names, Generator, GeneratorConfig};

const T0: u64 = 1_700_000_000_000_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: gen_mbo OUT.dbn[.zst] [RECORDS] [INSTRUMENTS] [SPAN_S]");
        std::process::exit(2);
    };
    let num = |i: usize, d: u64| -> Result<u64, String> {
        args.get(i).map_or(Ok(d), |s| s.parse().map_err(|_| format!("`{s}` is not a whole number")))
    };
    let (records, instruments, span_s) = (num(1, 1_000_000)?, num(2, 100)?.max(1) as usize, num(3, 10)?.max(1));
    let names = symbol_names(instruments);
    let ids: Vec<(&str, u32)> = names.iter().enumerate().map(|(i, s)| (s.as_str(), 1000 + i as u32)).collect();
    let mut meta = symbology_metadata("GLBX.MDP3", Schema::Mbo, T0, &ids);
    // The span the records cover, as a query's end (a replay's bar goes by it).
    meta.end = std::num::NonZeroU64::new(T0 + span_s * 1_000_000_000);
    let file = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let w: Box<dyn std::io::Write> = if out.ends_with(".zst") {
        Box::new(zstd::stream::write::Encoder::new(file, 3)?.auto_finish())
    } else {
        Box::new(file)
    };
    let mut enc = Encoder::new(w, &meta)?;
    let mut gen = Generator::new(&GeneratorConfig { symbols: instruments, zipf_s: 1.0, payload_bytes: 0, seed: 7 });
    let mut books = MboBooks::new(instruments, 1000, 11);
    // Every receive time inside the span (a replay refuses one past the metadata's end).
    let span_ns = span_s * 1_000_000_000;
    for n in 0..records {
        let mut m = books.next_for(gen.next_topic(), spread_ts(T0, span_ns, records, n));
        m.sequence = n as u32;
        enc.encode_record(&m)?;
    }
    enc.flush()?;
    drop(enc);
    eprintln!("wrote {records} MBO records over {instruments} instruments, {span_s} s recorded, to {out}");
    Ok(())
}
