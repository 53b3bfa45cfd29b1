//! Write a synthetic Databento MBO file (DBN, zstd when the name ends in
//! `.zst`) for `mdsub bench --from` and `mdsub replay --from`: instruments
//! with Zipf popularity (the feed generator's), books that stay near their
//! mid price, and the mix of a busy order book (adds, cancels, modifies,
//! fills and trades).
//!
//! ```text
//! cargo run --release --example gen_mbo -- OUT.dbn[.zst] [RECORDS] [INSTRUMENTS] [SPAN_S]
//! ```
//! Defaults: 1000000 records, 100 instruments, a 10 s recorded span.

use std::io::BufWriter;

use dbn::encode::dbn::Encoder;
use dbn::encode::EncodeRecord;
use dbn::{rtype, FlagSet, MboMsg, RecordHeader, Schema};
use mdsub::feed::dbn_source::symbology_metadata;
use mdsub::feed::{symbol_names, Generator, GeneratorConfig, SplitMix64};

const T0: u64 = 1_700_000_000_000_000_000;
const TICK: i64 = 250_000_000; // 0.25 in DBN's 1e-9 units

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
    let meta = symbology_metadata("GLBX.MDP3", Schema::Mbo, T0, &ids);
    let file = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let w: Box<dyn std::io::Write> = if out.ends_with(".zst") {
        Box::new(zstd::stream::write::Encoder::new(file, 3)?.auto_finish())
    } else {
        Box::new(file)
    };
    let mut enc = Encoder::new(w, &meta)?;
    let mut gen = Generator::new(&GeneratorConfig { symbols: instruments, zipf_s: 1.0, payload_bytes: 0, seed: 7 });
    let mut rng = SplitMix64::new(11);
    // Resting orders per instrument: (order id, ask, price, size).
    let mut live: Vec<Vec<(u64, bool, i64, u32)>> = vec![Vec::new(); instruments];
    let step_ns = (span_s * 1_000_000_000 / records.max(1)).max(1);
    let mut next_id = 1u64;
    for n in 0..records {
        let k = gen.next_topic();
        let r = rng.next_u64();
        let ts = T0 + n * step_ns;
        let mid = 4_000_000_000_000i64 + k as i64 * 10_000_000_000;
        let book = &mut live[k];
        let pick = (r % 100) as u32;
        let (oid, action, ask, price, size) = if book.len() < 20 || pick < 45 {
            let ask = r >> 8 & 1 == 1;
            let away = 1 + ((r >> 9) % 20) as i64;
            let price = if ask { mid + away * TICK } else { mid - away * TICK };
            let size = 1 + ((r >> 16) % 20) as u32;
            book.push((next_id, ask, price, size));
            next_id += 1;
            (next_id - 1, b'A', ask, price, size)
        } else {
            let j = ((r >> 24) as usize) % book.len();
            let (oid, ask, price, size) = book[j];
            match pick {
                45..=84 => {
                    book.swap_remove(j);
                    (oid, b'C', ask, price, size)
                }
                85..=94 => {
                    let size = 1 + ((r >> 40) % 20) as u32;
                    book[j].3 = size;
                    (oid, b'M', ask, price, size)
                }
                95..=97 => (oid, b'F', ask, price, 1),
                _ => (0, b'T', ask, price, 1),
            }
        };
        let side = match (action, ask) {
            (b'T', _) => b'N',
            (_, true) => b'A',
            (_, false) => b'B',
        };
        let m = MboMsg {
            hd: RecordHeader::new::<MboMsg>(rtype::MBO, 1, 1000 + k as u32, ts),
            order_id: oid,
            price,
            size,
            flags: FlagSet::new(0x80),
            channel_id: 0,
            action: action as std::ffi::c_char,
            side: side as std::ffi::c_char,
            ts_recv: ts + 500,
            ts_in_delta: 0,
            sequence: n as u32,
        };
        enc.encode_record(&m)?;
    }
    enc.flush()?;
    drop(enc);
    eprintln!("wrote {records} MBO records over {instruments} instruments, {span_s} s recorded, to {out}");
    Ok(())
}
