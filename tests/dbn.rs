//! Databento DBN data as a replay source, with real processes and sockets.
//! Fixtures are generated here with the `dbn` crate's own encoder (MBO books
//! across several instruments, trades, a zstd copy, a truncated copy) and
//! checked against what a plain SUB socket receives: every record exactly
//! once and in per-instrument order, two files merged by receive time,
//! `--speed 10x` pacing, damage reported with its byte offset.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use dbn::encode::dbn::Encoder;
use dbn::encode::EncodeRecord;
use dbn::{rtype, FlagSet, MboMsg, Metadata, RecordHeader, RecordRef, Schema, TradeMsg};
use mdsub::feed::mbo_synth::{mbo, MboBooks};
use mdsub::wire::{self, Kind};

const T0: u64 = 1_700_000_000_000_000_000;

fn tmp_dir(name: &str) -> TempDir {
    temp_dir(&format!("dbn-{name}"))
}

/// Metadata mapping `symbols` (raw symbol, instrument id) as Databento does
/// for `stype_out = instrument_id`.
fn metadata(schema: Schema, symbols: &[(&str, u32)]) -> Metadata {
    mdsub::feed::dbn_source::symbology_metadata("XNAS.ITCH", schema, T0, symbols)
}

/// A deterministic MBO feed over `instruments` (ids 101..): the library's
/// synthetic books; receive times start at `T0 + offset` and step by `step` ns.
fn mbo_feed(instruments: u32, n: usize, offset: u64, step: u64) -> Vec<MboMsg> {
    MboBooks::new(instruments as usize, 101, 0x2545_F491_4F6C_DD1D).feed(n, T0 + offset, step)
}

fn bytes_of<T: dbn::HasRType>(r: &T) -> Vec<u8> {
    RecordRef::from(r).as_ref().to_vec()
}

/// Write `records` as DBN (zstd when `zstd`); returns the file's length.
fn write_dbn<T: dbn::HasRType<Header = RecordHeader>>(path: &Path, meta: &Metadata, records: &[T], zstd: bool) -> u64 {
    let refs: Vec<RecordRef> = records.iter().map(RecordRef::from).collect();
    write_refs(path, meta, &refs, zstd)
}

/// Write records of any types as DBN (zstd when `zstd`); returns the file's length.
fn write_refs(path: &Path, meta: &Metadata, records: &[RecordRef], zstd: bool) -> u64 {
    use dbn::encode::EncodeRecordRef;
    let f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    if zstd {
        let mut e = Encoder::with_zstd(f, meta).expect("encoder");
        for r in records {
            e.encode_record_ref(*r).expect("encode");
        }
        e.flush().expect("flush");
    } else {
        let mut e = Encoder::new(f, meta).expect("encoder");
        for r in records {
            e.encode_record_ref(*r).expect("encode");
        }
        e.flush().expect("flush");
    }
    std::fs::metadata(path).expect("stat").len()
}

/// A frame as received: topic, topic sequence, intended send time, payload.
struct Got {
    topic: String,
    topic_seq: u64,
    send_ns: u64,
    recv: Instant,
    payload: Vec<u8>,
}

/// Subscribe to every endpoint and collect data frames until each shard's end of stream.
fn collect(eps: &[String], deadline: Duration) -> Vec<Got> {
    let ctx = zmq::Context::new();
    let subs: Vec<zmq::Socket> = eps
        .iter()
        .map(|ep| {
            let s = ctx.socket(zmq::SUB).expect("sub");
            s.set_rcvhwm(0).expect("hwm");
            s.set_subscribe(b"").expect("subscribe");
            s.connect(ep).expect("connect");
            s
        })
        .collect();
    let mut ended = vec![false; subs.len()];
    let mut got = Vec::new();
    let end = Instant::now() + deadline;
    while ended.iter().any(|e| !e) {
        assert!(Instant::now() < end, "no end of stream on every shard within {deadline:?}; got {}", got.len());
        let mut items: Vec<zmq::PollItem> = subs.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
        zmq::poll(&mut items, 100).expect("poll");
        for (k, s) in subs.iter().enumerate() {
            while let Ok(f) = s.recv_bytes(zmq::DONTWAIT) {
                let recv = Instant::now();
                let v = wire::decode(&f).expect("an mdsub frame");
                match v.header.kind {
                    Kind::EndOfStream => ended[k] = true,
                    Kind::Heartbeat => {}
                    Kind::Data => got.push(Got {
                        topic: v.topic_str().to_string(),
                        topic_seq: v.header.topic_seq,
                        send_ns: v.header.send_time_ns,
                        recv,
                        payload: v.payload.to_vec(),
                    }),
                }
            }
        }
    }
    got
}

/// Run `mdsub replay` with `args` on `shards` shards; returns the frames, exit status and stdout+stderr.
fn replay(name: &str, shards: usize, args: &[&str]) -> (Vec<Got>, std::process::ExitStatus, String) {
    let mut cmd = mdsub();
    cmd.arg("replay");
    for _ in 0..shards {
        cmd.args(["--endpoint", "tcp://127.0.0.1:*"]);
    }
    cmd.args(args).stderr(std::process::Stdio::piped());
    let mut p = LineProc::spawn(name, &mut cmd);
    let mut stderr = p.proc.child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let eps: Vec<String> = (0..shards)
        .map(|k| {
            let l = p.line_starting(&format!("bound shard{k} "), Duration::from_secs(20));
            l.rsplit(' ').next().expect("endpoint").to_string()
        })
        .collect();
    let got = collect(&eps, Duration::from_secs(60));
    let (status, out) = p.finish(Duration::from_secs(30));
    let err = err_reader.join().expect("stderr reader");
    (got, status, format!("{out}{err}"))
}

#[test]
fn every_record_once_in_per_instrument_order_over_two_shards() {
    let dir = tmp_dir("once");
    let path = dir.join("mbo.dbn");
    let recs = mbo_feed(5, 3000, 0, 1_000);
    // Instrument 105 has no symbology: its topic is its id.
    let meta = metadata(Schema::Mbo, &[("AAPL", 101), ("MSFT", 102), ("NVDA", 103), ("TSLA", 104)]);
    // A system message in the middle is not market data: counted and skipped.
    let system = dbn::SystemMsg::new(T0, None, "heartbeat").expect("system msg");
    let mut refs: Vec<RecordRef> = recs.iter().map(RecordRef::from).collect();
    refs.insert(1500, RecordRef::from(&system));
    write_refs(&path, &meta, &refs, false);
    let (got, status, out) = replay("replay-dbn", 2, &["--from", path.to_str().expect("utf8"), "--speed", "max"]);
    assert!(status.success(), "replay failed: {out}");
    assert_eq!(got.len(), recs.len(), "every record once: {out}");
    assert!(out.contains("rtype 0x17: 1"), "the system record is counted as skipped: {out}");
    assert!(
        out.contains("replay: refused (unreplayed_rtype): system records (rtype 0x17) are not replayed"),
        "the skipped type is said when first met: {out}"
    );
    let names: HashMap<u32, &str> =
        [(101, "AAPL"), (102, "MSFT"), (103, "NVDA"), (104, "TSLA"), (105, "105")].into_iter().collect();
    let mut want: HashMap<&str, Vec<Vec<u8>>> = HashMap::new();
    for r in &recs {
        want.entry(names[&r.hd.instrument_id]).or_default().push(bytes_of(r));
    }
    let mut have: HashMap<&str, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for g in &got {
        let key = names.values().find(|n| **n == g.topic).unwrap_or_else(|| panic!("unexpected topic {}", g.topic));
        have.entry(key).or_default().push((g.topic_seq, g.payload.clone()));
    }
    for (topic, w) in &want {
        let h = &have[topic];
        assert_eq!(h.len(), w.len(), "{topic}: count");
        for (i, ((seq, payload), want)) in h.iter().zip(w).enumerate() {
            assert_eq!(*seq, i as u64 + 1, "{topic}: topic sequence");
            assert_eq!(payload, want, "{topic}: record {i} bytes and order");
        }
    }
}

#[test]
fn zstd_and_plain_files_merge_by_receive_time() {
    let dir = tmp_dir("merge");
    let (a, b) = (dir.join("mbo.dbn.zst"), dir.join("trades.dbn"));
    let books = mbo_feed(3, 1000, 0, 2_000); // even microsecond-ish steps
    let trades: Vec<TradeMsg> = (0..700u64)
        .map(|i| TradeMsg {
            hd: RecordHeader::new::<TradeMsg>(rtype::MBP_0, 1, 201, T0 + i * 2_900),
            price: 5_000_000_000 + i as i64,
            size: 1 + i as u32 % 7,
            action: b'T' as std::ffi::c_char,
            side: b'A' as std::ffi::c_char,
            flags: FlagSet::new(0),
            depth: 0,
            ts_recv: T0 + 1 + i * 2_900,
            ts_in_delta: 0,
            sequence: i as u32,
        })
        .collect();
    write_dbn(&a, &metadata(Schema::Mbo, &[("AAPL", 101), ("MSFT", 102), ("NVDA", 103)]), &books, true);
    write_dbn(&b, &metadata(Schema::Trades, &[("ESZ3", 201)]), &trades, false);
    let (got, status, out) = replay(
        "replay-dbn-merge",
        1,
        &["--from", a.to_str().expect("utf8"), b.to_str().expect("utf8"), "--speed", "max"],
    );
    assert!(status.success(), "replay failed: {out}");
    assert_eq!(got.len(), books.len() + trades.len(), "{out}");
    let ts: Vec<u64> = got.iter().map(|g| mdsub::feed::dbn_source::index_ts(&g.payload)).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "frames in receive-time order across both files");
    assert_eq!(got.iter().filter(|g| g.topic == "ESZ3").count(), trades.len());
}

#[test]
fn speed_10x_replays_a_2s_span_in_about_0_2s() {
    let dir = tmp_dir("speed");
    let path = dir.join("span.dbn");
    // 41 records 50 ms apart: a 2 s recorded span.
    let recs: Vec<MboMsg> =
        (0..41u64).map(|i| mbo(101, T0 + i * 50_000_000, i + 1, b'A', b'B', 1_000_000_000, 1)).collect();
    write_dbn(&path, &metadata(Schema::Mbo, &[("AAPL", 101)]), &recs, false);
    let (got, status, out) = replay("replay-dbn-speed", 1, &["--from", path.to_str().expect("utf8"), "--speed", "10x"]);
    assert!(status.success(), "replay failed: {out}");
    assert_eq!(got.len(), 41);
    let (first, last) = (&got[0], &got[40]);
    let scheduled_ns = last.send_ns - first.send_ns;
    assert!(
        (199_000_000..=201_000_000).contains(&scheduled_ns),
        "intended send times span the recorded 2 s / 10 = 0.2 s, got {scheduled_ns} ns"
    );
    let took = last.recv - first.recv;
    // The pacer never sends early; a loaded box may make it late, hence the generous upper bound.
    // The span is measured at the receiver, so a first message read late shortens it (CI saw
    // 187 ms on a loaded box): the lower bound only has to tell 10x from 20x (100 ms) and flat out.
    assert!(took >= Duration::from_millis(150), "sent too fast: {took:?}");
    assert!(took < Duration::from_millis(1500), "far slower than 10x: {took:?}");
}

/// A recorded pace the publisher cannot keep is said, as a `--rate` it cannot reach is: the
/// engine measures latency from the schedule, so a replay far behind it makes the engine look
/// slow. Before, `--speed 10x` of a feed this box sends at 58% of that pace said nothing.
#[test]
fn a_recorded_pace_the_replay_cannot_keep_is_said_with_how_far_behind() {
    let dir = tmp_dir("pace");
    let path = dir.join("dense.dbn");
    // 100 000 records 1 µs apart: 100 ms recorded, due in 100 µs at 1000x: no publisher sends
    // 100 000 frames that fast.
    write_dbn(&path, &metadata(Schema::Mbo, &[("AAPL", 101)]), &mbo_feed(1, 100_000, 0, 1_000), false);
    let (got, status, out) =
        replay("replay-dbn-pace", 1, &["--from", path.to_str().expect("utf8"), "--speed", "1000x"]);
    assert!(status.success(), "replay failed: {out}");
    assert_eq!(got.len(), 100_000);
    let note = out.lines().find(|l| l.starts_with("pace not kept: ")).unwrap_or_else(|| panic!("no pace note: {out}"));
    for part in ["recorded at 1000x were due in ", "; sending took ", "behind the recorded schedule"] {
        assert!(note.contains(part), "{part:?} in {note}");
    }
    let file = path.to_str().expect("utf8");

    // `--json` has it as a field (before: in the text summary only), and no rate note (no --rate).
    let (replay, eps) = start_replay("replay-dbn-pace-json", 1, &["--json", "--from", file, "--speed", "1000x"]);
    assert_eq!(collect(&eps, Duration::from_secs(60)).len(), 100_000);
    let (status, out) = replay.finish(Duration::from_secs(30));
    assert!(status.success(), "{out}");
    let r = json(&out);
    let field = r["pace_note"].as_str().unwrap_or_else(|| panic!("a pace_note field: {r}"));
    assert!(field.starts_with("pace not kept: ") && field.contains("recorded at 1000x were due in "), "{field}");
    assert!(r.get("rate_note").is_none(), "{r}");

    // `bench --from FILE --speed` says it too (before: only a rate not achieved was said), on
    // stderr for each run and in the run's publisher numbers.
    let args = ["bench", "--from", file, "--speed", "1000x", "--runs", "1", "--handoff", "batch", "--json"];
    let (code, out, err) = run_within("bench", mdsub().args(args), Duration::from_secs(180));
    assert_eq!(code, Some(0), "{err}");
    let said: Vec<&str> = err.lines().filter(|l| l.contains(": publisher: pace not kept: ")).collect();
    assert!(!said.is_empty() && said.iter().all(|l| l.starts_with("bench: run 1 ")), "{err}");
    let r = bench_result("bench", &out);
    let runs = r["publisher_runs"].as_array().unwrap_or_else(|| panic!("publisher_runs: {r}"));
    assert!(!runs.is_empty(), "{r}");
    for run in runs {
        let note = run["note"].as_str().unwrap_or_else(|| panic!("a note in {run}"));
        assert!(note.starts_with("pace not kept: "), "{note}");
    }
}

/// Replay the damaged DBN file `path` (one shard): the run fails, says the damage once, on a
/// `replay: refused (REASON): ` line, and counts it under `reason`. Returns what a subscriber
/// received, that line, and everything the replay printed.
fn replay_damaged(name: &str, path: &Path, reason: &str) -> (Vec<Got>, String, String) {
    let (got, status, out) = replay(name, 1, &["--from", path.to_str().expect("utf8")]);
    assert!(!status.success(), "a damaged file is an error: {out}");
    let head = format!("replay: refused ({reason}): ");
    let said: Vec<&str> = out.lines().filter(|l| l.starts_with(&head)).collect();
    assert_eq!(said.len(), 1, "the damage said once, when met: {out}");
    assert!(out.contains(&format!("damaged input (refused: {reason}=1)")), "counted under its reason: {out}");
    (got, said[0].to_string(), out)
}

#[test]
fn truncated_file_replays_its_prefix_and_names_the_offset() {
    let dir = tmp_dir("trunc");
    let (whole, cut) = (dir.join("whole.dbn"), dir.join("cut.dbn"));
    let recs = mbo_feed(2, 100, 0, 1_000);
    let len = write_dbn(&whole, &metadata(Schema::Mbo, &[("AAPL", 101), ("MSFT", 102)]), &recs, false);
    let rec_len = std::mem::size_of::<MboMsg>() as u64;
    let meta_len = len - rec_len * recs.len() as u64;
    // Keep 60 whole records and half of the 61st.
    let keep = meta_len + 60 * rec_len + rec_len / 2;
    let bytes = std::fs::read(&whole).expect("read");
    std::fs::write(&cut, &bytes[..keep as usize]).expect("write");
    let (got, said, out) = replay_damaged("replay-dbn-trunc", &cut, "truncated_tail");
    // One file replayed alone: no `the other files go on` (said of every damaged file before).
    assert!(said.ends_with("; the file ends here"), "{said}");
    let offset = meta_len + 60 * rec_len;
    assert!(out.contains(&format!("damaged at byte {offset}")), "offset {offset} named: {out}");
    assert!(out.contains("truncated"), "reason given: {out}");
    assert!(out.contains("record 61;"), "the record is named: {out}");
    assert_eq!(got.len(), 60, "everything before the damage was replayed");
    let want: Vec<Vec<u8>> = recs[..60].iter().map(bytes_of).collect();
    let have: Vec<Vec<u8>> = got.iter().map(|g| g.payload.clone()).collect();
    assert_eq!(have, want);
    // Merged with a whole file, the whole one goes on after the cut one ended, and that is said.
    let files = [cut.to_str().expect("utf8"), whole.to_str().expect("utf8")];
    let (got, _, out) = replay("replay-dbn-trunc-two", 1, &["--from", files[0], files[1]]);
    assert!(out.contains("; the file ends here, the other files go on"), "{out}");
    assert_eq!(got.len(), 60 + recs.len(), "the cut file's prefix and the whole file: {out}");
}

#[test]
fn a_cut_off_zstd_file_is_a_truncated_tail_too() {
    // Before, zstd's `incomplete frame` was counted `bad_record` ("nothing after a damaged record
    // can be trusted") while the same cut in a plain file is `truncated_tail`.
    let dir = tmp_dir("trunc-zst");
    let (whole, cut) = (dir.join("whole.dbn.zst"), dir.join("cut.dbn.zst"));
    let recs = mbo_feed(2, 10_000, 0, 1_000);
    write_dbn(&whole, &metadata(Schema::Mbo, &[("AAPL", 101), ("MSFT", 102)]), &recs, true);
    let bytes = std::fs::read(&whole).expect("read");
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 5]).expect("write");
    let (got, status, out) = replay("replay-dbn-trunc-zst", 1, &["--from", cut.to_str().expect("utf8")]);
    assert!(!status.success(), "a damaged file is an error: {out}");
    assert!(out.contains("replay: refused (truncated_tail): "), "counted as a cut-off file: {out}");
    assert!(out.contains("the file ends inside a zstd frame"), "the reason in words: {out}");
    assert!(out.contains("damaged input (refused: truncated_tail=1)"), "counted under its reason: {out}");
    assert!(!got.is_empty() && got.len() < recs.len(), "the prefix was replayed: {}", got.len());
    let want: Vec<Vec<u8>> = recs[..got.len()].iter().map(bytes_of).collect();
    let have: Vec<Vec<u8>> = got.iter().map(|g| g.payload.clone()).collect();
    assert_eq!(have, want);
}

type PxSize = (i64, u64);

/// The book an independent, naive model of Databento's MBO semantics ends
/// with: per instrument, resting orders, then levels summed at the end.
struct ModelBook {
    orders: HashMap<u64, (u8, i64, u32)>,
}

impl ModelBook {
    fn apply(&mut self, m: &MboMsg) {
        let (action, side) = (m.action as u8, m.side as u8);
        match action {
            b'A' => {
                self.orders.insert(m.order_id, (side, m.price, m.size));
            }
            b'C' => {
                if let Some(o) = self.orders.get_mut(&m.order_id) {
                    o.2 -= m.size.min(o.2);
                    if o.2 == 0 {
                        self.orders.remove(&m.order_id);
                    }
                }
            }
            b'M' => {
                self.orders.insert(m.order_id, (side, m.price, m.size));
            }
            b'R' => self.orders.clear(),
            _ => {}
        }
    }

    /// (best bid, best ask, bid levels, ask levels, orders)
    fn summary(&self) -> (Option<PxSize>, Option<PxSize>, usize, usize, usize) {
        let mut bids: std::collections::BTreeMap<i64, u64> = Default::default();
        let mut asks: std::collections::BTreeMap<i64, u64> = Default::default();
        for (side, price, size) in self.orders.values() {
            let book = if *side == b'B' { &mut bids } else { &mut asks };
            *book.entry(*price).or_default() += *size as u64;
        }
        let best_bid = bids.iter().next_back().map(|(p, s)| (*p, *s));
        let best_ask = asks.iter().next().map(|(p, s)| (*p, *s));
        (best_bid, best_ask, bids.len(), asks.len(), self.orders.len())
    }
}

/// `path` replayed flat out, in this process, over `shards` endpoints into an engine of as many
/// shards and two workers with the book handler: its report.
fn books_of(path: std::path::PathBuf, shards: usize) -> mdsub::metrics::RunReport {
    use mdsub::bench::run::{run_once, RunSpec, Subscriber};
    use mdsub::engine::handler::HandlerSpec;
    use mdsub::engine::{EngineConfig, ShardConfig};
    use mdsub::replay::{Limits, Pacing, PublisherConfig, Source};

    let spec = RunSpec {
        publisher: PublisherConfig { endpoints: vec!["tcp://127.0.0.1:*".into(); shards], ..Default::default() },
        source: Source::Dbn { paths: vec![path] },
        pacing: Pacing::FlatOut,
        limits: Limits { max_msgs: None, duration: None },
        subscriber: Subscriber::Engine(Box::new(EngineConfig {
            shards: vec![ShardConfig::default(); shards],
            worker_cores: vec![None, None],
            handler: HandlerSpec::Book,
            ..Default::default()
        })),
        drain_timeout: Duration::from_secs(60),
        say_refusals: true,
    };
    run_once(&spec, &mdsub::agent::StopFlag::new(), &mut |_, _| {}).expect("run").report
}

#[test]
fn book_handler_ends_with_the_books_an_independent_model_computes() {
    let dir = tmp_dir("book");
    let path = dir.join("mbo.dbn.zst");
    let recs = mbo_feed(4, 20_000, 0, 1_000);
    let symbols = [("AAPL", 101), ("MSFT", 102), ("NVDA", 103), ("TSLA", 104)];
    write_dbn(&path, &metadata(Schema::Mbo, &symbols), &recs, true);
    let mut models: HashMap<u32, ModelBook> = HashMap::new();
    for r in &recs {
        models.entry(r.hd.instrument_id).or_insert_with(|| ModelBook { orders: HashMap::new() }).apply(r);
    }
    let report = books_of(path, 2);
    assert_eq!(report.delivered, recs.len() as u64, "{}", report.render());
    let h = &report.handler;
    assert_eq!(h["instruments"], 4);
    let count = |a: u8| recs.iter().filter(|r| r.action as u8 == a).count() as u64;
    assert_eq!(h["mbo_add"], count(b'A'));
    assert_eq!(h["mbo_cancel"], count(b'C'));
    assert_eq!(h["mbo_modify"], count(b'M'));
    assert_eq!(h["mbo_fill"] + h["mbo_trade"], count(b'F') + count(b'T'));
    let anomalies: u64 = h.iter().filter(|(k, _)| k.starts_with("anomaly_")).map(|(_, v)| v).sum();
    assert_eq!(anomalies, 0, "a consistent feed has no anomalies: {h:?}");
    let lvl = |l: Option<(i64, u64)>| match l {
        Some((p, s)) => format!("{} x {s}", dbn::pretty::fmt_px(p)),
        None => "-".into(),
    };
    let (mut bid_levels, mut ask_levels) = (0, 0);
    for (sym, id) in symbols {
        let (bid, ask, nb, na, orders) = models[&id].summary();
        assert!(
            nb > 1 && na > 1 && orders > 10,
            "{sym}: the feed builds real books ({nb}/{na} levels, {orders} orders)"
        );
        bid_levels += nb;
        ask_levels += na;
        let want = format!("book {sym} id={id} bid={} ask={} levels={nb}/{na} orders={orders}", lvl(bid), lvl(ask));
        let line = report
            .handler_summary
            .iter()
            .find(|l| l.starts_with(&format!("book {sym} ")))
            .unwrap_or_else(|| panic!("no summary line for {sym}: {:?}", report.handler_summary));
        assert!(line.starts_with(&want), "{sym}: engine `{line}`, model `{want}`");
    }
    assert_eq!((h["bid_levels"], h["ask_levels"]), (bid_levels as u64, ask_levels as u64));
}

/// `path`: an MBO file of `n` records over two instruments (AAPL 101, MSFT 102) with the
/// length byte of its record `damaged` (1-based) set to `length`. Returns the records and the
/// byte offset of the damaged one.
fn mbo_file_with_length(path: &Path, n: usize, damaged: u64, length: u8) -> (Vec<MboMsg>, u64) {
    let recs = mbo_feed(2, n, 0, 1_000);
    let len = write_dbn(path, &metadata(Schema::Mbo, &[("AAPL", 101), ("MSFT", 102)]), &recs, false);
    let rec_len = std::mem::size_of::<MboMsg>() as u64;
    let offset = len - rec_len * n as u64 + (damaged - 1) * rec_len;
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset as usize] = length;
    std::fs::write(path, &bytes).expect("write");
    (recs, offset)
}

#[test]
fn corrupt_record_length_is_reported_at_its_offset() {
    let dir = tmp_dir("corrupt");
    let path = dir.join("bad.dbn");
    // Record 31's length: shorter than a header.
    let (_, offset) = mbo_file_with_length(&path, 100, 31, 0);
    let (got, _, out) = replay_damaged("replay-dbn-corrupt", &path, "bad_record");
    assert!(out.contains(&format!("damaged at byte {offset}: ")), "offset {offset} named: {out}");
    assert!(out.contains("impossible length"), "reason given: {out}");
    // Not truncation: bytes follow the damaged record (before: `the file ends here`).
    assert!(out.contains("; replay of this file stops here: nothing after a damaged record can be trusted"), "{out}");
    assert_eq!(got.len(), 30, "everything before the damage was replayed");
}

/// A record whose length byte is wrong for its type is damage at that record, said there, and
/// nothing from it on is sent: before, the decoder took any length past a header, so an MBO
/// record with its length byte at 0xff went out as a 1020-byte "MBO" (0x04: a 16-byte one) and
/// the damage was said later, at a wrong offset.
#[test]
fn a_record_length_wrong_for_its_type_is_damage_at_that_record() {
    let dir = tmp_dir("len");
    let rec_len = std::mem::size_of::<MboMsg>();
    for (byte, bytes) in [(0xffu8, 1020), (0x04, 16)] {
        let bad_path = dir.join(format!("len{byte:02x}.dbn"));
        let (recs, offset) = mbo_file_with_length(&bad_path, 200, 101, byte);
        let (got, said, out) = replay_damaged(&format!("replay-dbn-len{byte:02x}"), &bad_path, "bad_record");
        let want = format!(
            "damaged at byte {offset}: its length byte 0x{byte:02x} ({bytes} bytes) is wrong for its type: mbo \
             records (rtype 0xa0) are {rec_len} bytes in DBN version 3 (record 101;"
        );
        assert!(said.contains(&want), "want `{want}`: {out}");
        assert_eq!(got.len(), 100, "the 100 records before it, nothing from it on");
        assert!(got.iter().zip(&recs).all(|(g, r)| g.payload == bytes_of(r)), "each as it was");
    }
}

/// `path`: a `.dbn.zst` of `n` MBO records (AAPL 101, MSFT 102; the metadata's span ending
/// just after the last), compressed with no zstd checksum (zstd's default, as any `zstd::Encoder`
/// writes it), whose record `damaged` (1-based) had its receive time set by `ts_recv(old)` before
/// compressing: what a corrupted checksum-less file decompresses to. Returns the records and the
/// damaged record's offset in the decompressed stream.
fn zst_without_checksum_with_ts_recv(
    path: &Path,
    n: usize,
    damaged: usize,
    ts_recv: impl Fn(u64) -> u64,
) -> (Vec<MboMsg>, u64) {
    let recs = mbo_feed(2, n, 0, 1_000);
    let mut meta = metadata(Schema::Mbo, &[("AAPL", 101), ("MSFT", 102)]);
    meta.end = std::num::NonZeroU64::new(recs.last().map(|r| r.ts_recv).expect("records") + 1);
    let plain = path.with_extension("plain");
    let len = write_dbn(&plain, &meta, &recs, false);
    let rec_len = std::mem::size_of::<MboMsg>();
    let offset = len as usize - rec_len * n + (damaged - 1) * rec_len;
    let mut bytes = std::fs::read(&plain).expect("read");
    let at = offset + std::mem::offset_of!(MboMsg, ts_recv);
    let old = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    bytes[at..at + 8].copy_from_slice(&ts_recv(old).to_le_bytes());
    let zst = zstd::encode_all(&bytes[..], 3).expect("zstd");
    assert_eq!(zst[4] & 0x04, 0, "no content checksum in the frame header");
    std::fs::write(path, &zst).expect("write");
    (recs, offset as u64)
}

/// A `.dbn.zst` without a zstd checksum hands corrupted bytes on as data. A record whose receive
/// time is outside the span its metadata gives (a high bit flipped: 36 years on) is damage at that
/// record, said there, and nothing from it on is sent; before, it went out, and at a recorded
/// pace the replay would have waited for it for 36 years.
#[test]
fn a_corrupted_zstd_file_without_a_checksum_stops_at_a_receive_time_outside_its_span() {
    let dir = tmp_dir("span");
    let path = dir.join("flipped.dbn.zst");
    let (recs, offset) = zst_without_checksum_with_ts_recv(&path, 100, 41, |t| t ^ (1 << 60));
    let (got, said, out) = replay_damaged("replay-dbn-span", &path, "bad_record");
    let want = format!("damaged at byte {offset} of the decompressed stream: its receive time ");
    assert!(said.contains(&want), "want `{want}`: {out}");
    assert!(
        said.contains("is outside the span the file's metadata gives its data (2023-11-14T22:13:20.000Z to "),
        "{said}"
    );
    assert!(said.contains("(record 41;"), "{said}");
    assert_eq!(got.len(), 40, "the 40 records before it, nothing from it on");
    assert!(got.iter().zip(&recs).all(|(g, r)| g.payload == bytes_of(r)), "each as it was");
}

/// A record received before the one ahead of it in its file (a low bit flipped, within the span)
/// is sent as it is, counted and the first said once: DBN files are written in receive-time
/// order. Before, nothing was said.
#[test]
fn a_record_received_before_the_one_ahead_of_it_is_counted_and_said_once() {
    let dir = tmp_dir("back");
    let path = dir.join("back.dbn.zst");
    let (recs, offset) = zst_without_checksum_with_ts_recv(&path, 100, 41, |t| t - 30_500);
    let (got, status, out) = replay("replay-dbn-back", 1, &["--from", path.to_str().expect("utf8")]);
    assert!(status.success(), "sent, not refused: {out}");
    assert_eq!(got.len(), recs.len(), "every record sent: {out}");
    let said: Vec<&str> = out.lines().filter(|l| l.contains("before the record ahead of it")).collect();
    assert_eq!(said.len(), 1, "said once: {out}");
    let want = format!("record 41 (byte {offset} of the decompressed stream) is received at ");
    assert!(said[0].contains(&want) && said[0].contains("29.5µs before the record ahead of it"), "{}", said[0]);
    assert!(said[0].contains("the file is corrupted"), "{}", said[0]);
    assert!(out.contains("replay: 1 DBN records were received before the record ahead of them"), "counted: {out}");
}

/// The one case where a record is longer than its struct: the live gateway's send time
/// (`ts_out`, 8 bytes) after every record of a stream whose metadata says so. Such a file
/// replays whole, each record with its `ts_out`.
#[test]
fn records_with_ts_out_are_whole_records() {
    let dir = tmp_dir("ts-out");
    let path = dir.join("live.dbn");
    let mut meta = metadata(Schema::Mbo, &[("AAPL", 101), ("MSFT", 102)]);
    meta.ts_out = true;
    let recs: Vec<dbn::WithTsOut<MboMsg>> =
        mbo_feed(2, 50, 0, 1_000).into_iter().enumerate().map(|(i, r)| dbn::WithTsOut::new(r, T0 + i as u64)).collect();
    write_dbn(&path, &meta, &recs, false);
    let (got, status, out) = replay("replay-dbn-ts-out", 1, &["--from", path.to_str().expect("utf8")]);
    assert!(status.success(), "{out}");
    assert_eq!(got.len(), recs.len(), "{out}");
    assert!(got.iter().zip(&recs).all(|(g, r)| g.payload == bytes_of(r)), "each record with its ts_out");
    assert_eq!(got[0].payload.len(), std::mem::size_of::<MboMsg>() + 8);
}

/// `bench --from` a damaged file follows the rule for damaged input (docs/REFUSALS.md): every
/// run replays what comes before the damage, the damage is said once however many runs there
/// are, the result says it is not one (`error`, and `refused` by reason, in `--json`; no `--save`
/// file) and the exit status is 1. A file with no records is refused before any run. Before, both
/// exited 0: the damage said once per run and in neither the result nor the saved JSON, the empty
/// file with `0.000 M msg/s`, `cpu 712029 ns/msg` and `throughput NaNx`.
#[test]
fn bench_from_a_damaged_or_empty_file_is_not_a_result() {
    let dir = tmp_dir("bench-damaged");
    let path = dir.join("mbo.dbn");
    mbo_file_with_length(&path, 200, 101, 0xff);
    let save = dir.join("bench.json");
    let (p, s) = (path.to_str().expect("utf8"), save.to_str().expect("utf8"));
    let args = ["bench", "--from", p, "--runs", "2", "--handoff", "batch", "--json", "--save", s];
    let (code, out, err) = run_within("bench", mdsub().args(args), Duration::from_secs(180));
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.matches("replay: refused (bad_record): ").count(), 1, "said once, not once per run: {err}");
    assert!(err.contains("mdsub: error: bench: damaged input (refused: bad_record=1)"), "{err}");
    let v = json(&out);
    assert!(v["error"].as_str().is_some_and(|e| e.contains("damaged input")), "{v}");
    assert_eq!(v["refused"]["bad_record"], 1, "{v}");
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4, "2 runs of the baseline and the engine: {v}");
    assert!(runs.iter().all(|r| r["sent"] == 100), "each replayed the 100 records before the damage: {v}");
    assert!(!save.exists(), "not a result: no --save file");

    let empty = dir.join("empty.dbn");
    write_dbn::<MboMsg>(&empty, &metadata(Schema::Mbo, &[("AAPL", 101)]), &[], false);
    let e = empty.to_str().expect("utf8");
    let (code, out, err) =
        run_within("bench", mdsub().args(["bench", "--from", e, "--runs", "1"]), Duration::from_secs(60));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("empty.dbn: no records to replay (metadata only)"), "{err}");
    assert!(!out.contains("run 1"), "refused before any run: {out}");
    let replay = ["replay", "--from", e, "--subscribers", "0", "--endpoint", "tcp://127.0.0.1:*"];
    let (code, out, err) = run_within("replay", mdsub().args(replay), Duration::from_secs(60));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("no records to replay (metadata only)") && !out.contains("bound"), "before binding: {err}");
}

#[test]
fn two_instrument_ids_of_one_symbol_share_one_topic_sequence() {
    let dir = tmp_dir("shared-symbol");
    let path = dir.join("roll.dbn");
    // The same symbol under two instrument ids (as across days of a multi-day file).
    let recs: Vec<MboMsg> =
        (0..40u64).map(|i| mbo(301 + (i % 2) as u32, T0 + i * 1_000, i + 1, b'A', b'B', 1_000_000_000, 1)).collect();
    write_dbn(&path, &metadata(Schema::Mbo, &[("ESZ3", 301), ("ESZ3", 302)]), &recs, false);
    let (got, status, out) = replay("replay-dbn-shared", 2, &["--from", path.to_str().expect("utf8")]);
    assert!(status.success(), "replay failed: {out}");
    assert!(got.iter().all(|g| g.topic == "ESZ3"), "one topic");
    let seqs: Vec<u64> = got.iter().map(|g| g.topic_seq).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>(), "one gap-free topic sequence");
}

#[test]
fn a_file_cut_inside_its_metadata_is_said_in_words() {
    // Before: `not a readable DBN file: IO error: Kind(UnexpectedEof) while decoding metadata`.
    let dir = tmp_dir("dbn-cut-meta");
    let path = dir.join("cut.dbn");
    let meta = metadata(Schema::Mbo, &[("ESH6", 1)]);
    write_dbn::<MboMsg>(&path, &meta, &[], false);
    let whole = std::fs::read(&path).expect("read");
    std::fs::write(&path, &whole[..whole.len() / 2]).expect("cut");
    let p = path.to_str().expect("utf8");
    let (code, _out, err) = run_within(
        "replay",
        mdsub().args(["replay", "--from", p, "--subscribers", "0", "--endpoint", "tcp://127.0.0.1:*"]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    // Its metadata length, read before anything is taken on trust, is more than the file holds.
    let want = format!(
        "its metadata length ({} bytes, at bytes 4-7) is larger than the file ({} bytes)",
        whole.len() - 8,
        whole.len() / 2
    );
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains("Kind("), "no Debug text: {err}");
}

/// Run `mdsub replay --from PATH` with its address space limited to 1 GiB (a replay of a
/// small file needs far less): an allocation sized by a length field fails under it.
fn replay_within_1gib(path: &Path) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = mdsub();
    cmd.args([
        "replay",
        "--from",
        path.to_str().expect("utf8"),
        "--subscribers",
        "0",
        "--endpoint",
        "tcp://127.0.0.1:*",
    ]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 1 << 30, rlim_max: 1 << 30 };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, _out, err) = run_within("replay", &mut cmd, Duration::from_secs(20));
    (code, err)
}

#[test]
fn a_metadata_length_beyond_the_file_or_the_limit_is_refused_before_any_allocation() {
    // A 0xFFFFFFF0 metadata length in a small file made the `dbn` crate allocate 4 GiB:
    // `memory allocation of 4294967288 bytes failed`, a backtrace, exit 134 (review 19).
    let dir = tmp_dir("metalen");
    let plain = dir.join("good.dbn");
    write_dbn(&plain, &metadata(Schema::Mbo, &[("ESH6", 101)]), &mbo_feed(1, 20, 0, 1_000), false);
    let mut bytes = std::fs::read(&plain).expect("read");
    let huge = 0xFFFF_FFF0u32;
    bytes[4..8].copy_from_slice(&huge.to_le_bytes());
    let lying = dir.join("metalen_huge.dbn");
    std::fs::write(&lying, &bytes).expect("write");
    let (code, err) = replay_within_1gib(&lying);
    assert_eq!(code, Some(1), "{err}");
    let want = format!(
        "DBN input {}: its metadata length ({huge} bytes, at bytes 4-7) is larger than the file ({} bytes)",
        lying.display(),
        bytes.len()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // A `.dbn.zst` has no size to check against: its metadata length is bounded by mdsub's limit.
    let zst = dir.join("metalen_huge.dbn.zst");
    std::fs::write(&zst, zstd::encode_all(&bytes[..], 3).expect("zstd")).expect("write");
    let (code, err) = replay_within_1gib(&zst);
    assert_eq!(code, Some(1), "{err}");
    let limit = mdsub::feed::dbn_source::MAX_METADATA_LEN;
    let want = format!("its metadata length ({huge} bytes, at bytes 4-7) is over mdsub's limit of {limit} bytes");
    assert!(err.contains(&want) && err.lines().count() == 1, "{err}");
    // Under the limit, what is read grows with the bytes that arrive, not with the length field.
    let declared = limit - 8;
    bytes[4..8].copy_from_slice(&declared.to_le_bytes());
    std::fs::write(&zst, zstd::encode_all(&bytes[..], 3).expect("zstd")).expect("write");
    let (code, err) = replay_within_1gib(&zst);
    assert_eq!(code, Some(1), "{err}");
    let want = format!(
        "the decompressed stream ends inside its metadata: {} of the {declared} bytes its length field declares",
        bytes.len() - 8
    );
    assert!(err.contains(&want) && err.lines().count() == 1, "{err}");
}

/// The positions a replay of `source` shows its progress display, sampled at each progress
/// call, and the one after the run.
fn positions(source: &mdsub::replay::Source, speed: f64) -> (Vec<mdsub::replay::progress::Extent>, Option<u64>) {
    use mdsub::replay::{Limits, Pacing, Publisher, PublisherConfig};
    let ctx = zmq::Context::new();
    let mut publisher = Publisher::bind(&ctx, &PublisherConfig::default()).expect("publisher");
    let position = publisher.position();
    let mut seen = Vec::new();
    let never = mdsub::agent::StopFlag::new();
    let limits = Limits { max_msgs: None, duration: None };
    publisher
        .run(source, Pacing::Recorded { speed }, limits, &never, &mut |_| seen.extend(position.extent()))
        .expect("replay");
    seen.extend(position.extent());
    (seen, position.market_ns())
}

#[test]
fn a_dbn_replay_whose_metadata_ends_past_its_data_is_whole_at_its_last_record() {
    use mdsub::replay::progress::{estimate, Basis, Extent};
    let dir = tmp_dir("position");
    // 150 records 2 ms apart (0.3 s at 1x), the metadata's end 0.1 s after the last (a daily
    // file's end is midnight, its data's hours before): by market time alone the replay ended
    // at 75% (`(last - first) / (end - first)`), and the bar jumped from there to done.
    let recs = mbo_feed(3, 150, 0, 2_000_000);
    let last = recs.last().map(|r| r.ts_recv).expect("records");
    let end = last + 100_000_000;
    let mut meta = metadata(Schema::Mbo, &[("AAPL", 101)]);
    meta.end = std::num::NonZeroU64::new(end);
    for zstd in [false, true] {
        let path = dir.join(if zstd { "mbo.dbn.zst" } else { "mbo.dbn" });
        write_dbn(&path, &meta, &recs, zstd);
        let size = std::fs::metadata(&path).expect("stat").len();
        let source = mdsub::replay::Source::Dbn { paths: vec![path] };
        let (seen, market) = positions(&source, 1.0);
        assert_eq!(market, Some(last));
        // A sample before the sending thread loaded its first record: no market time yet.
        let seen: Vec<Extent> = seen.into_iter().filter(|e| !matches!(e, Extent::Market { now_ns: 0, .. })).collect();
        assert!(seen.len() >= 10, "sampled about every 5 ms: {seen:?}");
        let mut fractions = Vec::new();
        for e in &seen {
            let Extent::Market { start_ns: T0, end_ns, bytes: Some(b), .. } = e else {
                panic!("by market time from the first record to the metadata's end, within the bytes: {e:?}")
            };
            assert_eq!((*end_ns, b.total), (end, size), "{e:?}");
            let (fraction, basis) = e.fraction().expect("a span");
            if !zstd {
                // A plain file is read record by record: its bytes are its position.
                assert_eq!((b.ahead, basis), (0, Basis::BytesRead), "{e:?}");
                assert_eq!(fraction, b.read as f64 / size as f64, "{e:?}");
            }
            assert_eq!(estimate(*e, 1.0, Some(1.0)).map(|x| x.fraction), Some(fraction.min(1.0)));
            fractions.push(fraction);
        }
        assert!(fractions[0] < 0.5, "zstd {zstd}: {fractions:?}");
        assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "zstd {zstd}: never backwards: {fractions:?}");
        // Whole once the last record is read, though market time stopped 0.1 s short of the end.
        assert_eq!(fractions.last(), Some(&1.0), "zstd {zstd}: {fractions:?}");
        // At the last record, market time alone says a quarter is left.
        let by_market = (last - T0) as f64 / (end - T0) as f64;
        assert!((by_market - 0.75).abs() < 0.01, "{by_market}");
        // A small `.dbn.zst` is read whole in opening it: its read-ahead leaves market time
        // the measure until its end.
        if zstd {
            let (f, basis) = seen[0].fraction().expect("a span");
            assert_eq!(basis, Basis::MarketTime, "{:?}", seen[0]);
            assert!(f < 0.5, "not done at the first record: {f}");
        }
    }
}

/// `bench --from FILE --count N` on a terminal: how far each measurement is by its count, which
/// ends it, not by the file's bytes or market time.
#[test]
fn a_bench_over_a_file_for_a_count_says_how_far_by_the_count() {
    // Before: `9.9% by bytes read` of the whole file when the count's 4000 messages were half
    // sent, and the time left to the file's end.
    let test = "a_bench_over_a_file_for_a_count_says_how_far_by_the_count";
    let dir = tmp_dir("bench-count");
    let path = dir.join("mbo.dbn");
    let recs = mbo_feed(3, 40_000, 0, 1_000);
    let mut meta = metadata(Schema::Mbo, &[("AAPL", 101)]);
    meta.end = std::num::NonZeroU64::new(recs.last().map(|r| r.ts_recv).expect("records") + 1);
    write_dbn(&path, &meta, &recs, false);
    let file = path.to_str().expect("a UTF-8 path");
    let args = ["bench", "--from", file, "--count", "4000", "--rate", "4000", "--runs", "1", "--handoff", "batch"];
    let Some((code, lines)) = on_a_terminal(test, 120, &args, Duration::from_secs(120)) else { return };
    assert_eq!(code, Some(0), "{lines:#?}");
    let bars: Vec<&String> = lines.iter().filter(|l| l.starts_with("bench ")).collect();
    for variant in ["baseline (1/2)", "engine/batch (2/2)"] {
        let mine: Vec<&&String> = bars.iter().filter(|l| l.contains(&format!("run 1/1 {variant}: "))).collect();
        let under_way = |l: &&&String| l.contains("% of 4000 msgs, ") && !l.contains(" 0.0% of");
        assert!(mine.iter().any(under_way), "{variant}: {bars:#?}");
    }
    assert!(!bars.iter().any(|l| l.contains(" by bytes read") || l.contains(" by market time")), "{bars:#?}");
}

/// `bench --from`: each measurement shows which run it is and how far its replay is in the file,
/// by the bytes read when the metadata's end is past the last record (before: no progress at all,
/// a no-op callback).
#[test]
fn a_bench_over_a_dbn_file_says_each_run_and_how_far_its_replay_is() {
    use mdsub::bench::engine::{run, Compare, EngineBenchConfig};
    use mdsub::engine::reader::HandOff;
    use mdsub::replay::{Limits, Pacing, PublisherConfig, Source};
    let dir = tmp_dir("bench-progress");
    let path = dir.join("mbo.dbn");
    let recs = mbo_feed(3, 3000, 0, 1_000);
    let last = recs.last().map(|r| r.ts_recv).expect("records");
    let mut meta = metadata(Schema::Mbo, &[("AAPL", 101)]);
    // The query's end, an hour past the data's.
    meta.end = std::num::NonZeroU64::new(last + 3_600_000_000_000);
    write_dbn(&path, &meta, &recs, false);
    let profile = mdsub::profile::Profile::builtin();
    let shards = profile.shards.len();
    let cfg = EngineBenchConfig {
        profile,
        handoffs: vec![HandOff::Batch],
        compare: Compare::default(),
        curve: false,
        outputs: None,
        publisher: PublisherConfig { endpoints: vec!["tcp://127.0.0.1:*".into(); shards], ..Default::default() },
        source: Source::Dbn { paths: vec![path] },
        pacing: Pacing::FlatOut,
        limits: Limits { max_msgs: None, duration: None },
        runs: 2,
        machine: mdsub::bench::stamp::Machine::here(),
        settings: serde_json::json!({}),
    };
    // (run, measurement, of, variant, sent, fraction, basis) at each call.
    let mut seen = Vec::new();
    let result = run(&cfg, &mdsub::agent::StopFlag::new(), &mut |_, _| {}, &mut |u| {
        let f = u.position.extent().and_then(|e| e.fraction());
        seen.push((u.rep, u.k, u.of, u.runs, u.variant.to_string(), u.sent, f));
    })
    .expect("bench")
    .expect("whole runs");
    assert_eq!(result.runs.len(), 4, "2 runs of baseline and engine/batch");
    let measurements = [(1, 1, "baseline"), (1, 2, "engine/batch"), (2, 1, "baseline"), (2, 2, "engine/batch")];
    for (rep, k, variant) in measurements {
        let mine: Vec<_> = seen.iter().filter(|s| (s.0, s.1) == (rep, k)).collect();
        assert!(!mine.is_empty(), "run {rep} measurement {k}: {seen:?}");
        assert!(mine.iter().all(|s| s.2 == 2 && s.3 == 2 && s.4 == variant), "{mine:?}");
        assert!(mine.windows(2).all(|w| w[0].5 <= w[1].5), "sent never backwards: {mine:?}");
        let fractions: Vec<f64> = mine.iter().filter_map(|s| s.6.map(|f| f.0)).collect();
        assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "never backwards: {fractions:?}");
        // Its last call: every record sent, the whole file read, though market time stopped an
        // hour short of the metadata's end (by it, 0.0008%).
        let end = mine.last().expect("calls");
        assert_eq!(end.5, recs.len() as u64, "{end:?}");
        assert_eq!(end.6, Some((1.0, mdsub::replay::progress::Basis::BytesRead)), "{end:?}");
    }
    // In the order measured.
    let order: Vec<(usize, usize)> = seen.iter().map(|s| (s.0, s.1)).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
}

/// Per record of `got` (an MBO payload), its instrument id, receive time and topic.
fn topics_by_record(got: &[Got]) -> Vec<(u32, u64, String)> {
    got.iter()
        .map(|g| {
            let p = &g.payload;
            assert_eq!((p.len(), p[1]), (std::mem::size_of::<MboMsg>(), rtype::MBO), "an MBO record");
            let field = |at: usize, n: usize| p[at..at + n].iter().rev().fold(0u64, |v, b| v << 8 | u64::from(*b));
            // The header's instrument id (bytes 4-7) and the record's ts_recv (bytes 40-47).
            (field(4, 4) as u32, field(40, 8), g.topic.clone())
        })
        .collect()
}

/// Write `refs` (of which `records` are MBO records) to `path` with `meta`, replay it on one
/// shard and return each record's instrument id, receive time and topic, and what replay said.
fn replayed_topics(
    name: &str,
    path: &Path,
    meta: &Metadata,
    refs: &[RecordRef],
    records: usize,
) -> (Vec<(u32, u64, String)>, String) {
    write_refs(path, meta, refs, false);
    let (got, status, out) = replay(name, 1, &["--from", path.to_str().expect("utf8")]);
    assert!(status.success(), "replay failed: {out}");
    let seen = topics_by_record(&got);
    assert_eq!(seen.len(), records, "{out}");
    (seen, out)
}

/// MBO metadata of GLBX.MDP3 from `T0`, raw symbols to instrument ids, ending at `end`.
fn glbx_mbo_metadata(end: Option<u64>, mappings: Vec<dbn::SymbolMapping>) -> Metadata {
    Metadata::builder()
        .dataset("GLBX.MDP3".to_string())
        .schema(Some(Schema::Mbo))
        .start(T0)
        .end(end.and_then(std::num::NonZeroU64::new))
        .stype_in(Some(dbn::SType::RawSymbol))
        .stype_out(dbn::SType::InstrumentId)
        .mappings(mappings)
        .build()
}

/// A record goes out under the symbol its instrument had when the record was received. A
/// two-day historical file whose symbology changes at midnight (instrument 41 is HHH on the
/// first day and III on the second, an id reused; JJJ is 42, then 43), and a live recording,
/// whose metadata maps nothing and whose symbol mapping records name its instruments as it
/// goes (51 is KKK, then LLL from a time on, in DBN version 1). Before, the first symbol an
/// id ever had named it all file long (III's records went out as HHH, subscribers of III got
/// nothing), and a live recording's symbol mapping records were skipped unread (its topics
/// were instrument ids).
#[test]
fn a_records_topic_is_its_symbol_when_it_was_received() {
    use dbn::{MappingInterval, SymbolMapping};
    const DAY_NS: u64 = 86_400_000_000_000;
    let dir = tmp_dir("remap");
    // T0 is 2023-11-14T22:13:20Z; the second day begins at the next midnight.
    let midnight = T0 - T0 % DAY_NS + DAY_NS;
    let day1 = time::Date::from_calendar_date(2023, time::Month::November, 14).expect("a date");
    let (day2, day3) = (day1.next_day().expect("day"), day1.next_day().and_then(|d| d.next_day()).expect("day"));
    let iv = |start_date, end_date, id: u32| MappingInterval { start_date, end_date, symbol: id.to_string() };
    let mappings = vec![
        SymbolMapping { raw_symbol: "HHH".into(), intervals: vec![iv(day1, day2, 41)] },
        SymbolMapping { raw_symbol: "III".into(), intervals: vec![iv(day2, day3, 41)] },
        SymbolMapping { raw_symbol: "JJJ".into(), intervals: vec![iv(day1, day2, 42), iv(day2, day3, 43)] },
    ];
    let meta = glbx_mbo_metadata(Some(midnight + DAY_NS), mappings);
    let mut recs: Vec<MboMsg> =
        (0..20u64).map(|i| mbo(41 + (i % 2) as u32, T0 + i * 1_000, i + 1, b'A', b'B', 1, 1)).collect();
    recs.extend(
        (0..20u64).map(|i| mbo([41, 43][i as usize % 2], midnight + 60_000 + i * 1_000, i + 100, b'A', b'B', 1, 1)),
    );
    let refs: Vec<RecordRef> = recs.iter().map(RecordRef::from).collect();
    let (seen, out) = replayed_topics("replay-dbn-remap", &dir.join("two-days.dbn"), &meta, &refs, recs.len());
    for (id, ts, topic) in &seen {
        let want = match (*id, *ts < midnight) {
            (41, true) => "HHH",
            (41, false) => "III",
            (42 | 43, _) => "JJJ",
            other => panic!("unexpected record {other:?}"),
        };
        assert_eq!(topic, want, "instrument {id} at {ts}: {out}");
    }

    // A live recording in DBN version 1: no mappings in its metadata, symbol mapping records
    // in the stream; a later one remaps 51 from T0 + 20 us; 52 is never named.
    let mut live = glbx_mbo_metadata(None, Vec::new());
    live.version = 1;
    live.symbol_cstr_len = dbn::compat::SYMBOL_CSTR_LEN_V1;
    let hour = 3_600_000_000_000;
    let kkk = dbn::v1::SymbolMappingMsg::new(51, T0, "KKK", "KKK", T0, T0 + hour).expect("mapping");
    let lll = dbn::v1::SymbolMappingMsg::new(51, T0 + 10_000, "LLL", "LLL", T0 + 20_000, T0 + hour).expect("mapping");
    let data: Vec<MboMsg> =
        (0..40u64).map(|i| mbo(51 + (i % 4 == 3) as u32, T0 + i * 1_000, i + 1, b'A', b'B', 1, 1)).collect();
    let mut refs: Vec<RecordRef> = vec![RecordRef::from(&kkk)];
    refs.extend(data[..11].iter().map(RecordRef::from));
    refs.push(RecordRef::from(&lll));
    refs.extend(data[11..].iter().map(RecordRef::from));
    let (seen, out) = replayed_topics("replay-dbn-live", &dir.join("live-v1.dbn"), &live, &refs, data.len());
    for (id, ts, topic) in &seen {
        let want = match (*id, *ts < T0 + 20_000) {
            (51, true) => "KKK",
            (51, false) => "LLL",
            (52, _) => "52",
            other => panic!("unexpected record {other:?}"),
        };
        assert_eq!(topic, want, "instrument {id} at {ts}: {out}");
    }
    assert!(out.contains("symbol-mapping records (rtype 0x16) are not replayed"), "{out}");
}

/// The `book` handler over several workers needs each instrument on one worker: round-robin
/// routing split every book between them (each worker's half-book reported as the
/// instrument's, anomalies counted, nothing said). Refused now, before anything runs: exit 2
/// with the flags named; by-topic over two workers runs.
#[test]
fn book_handler_with_round_robin_routing_over_workers_is_refused() {
    let out = mdsub()
        .args(["engine", "--endpoint", "tcp://127.0.0.1:1", "--handler", "book", "--workers", "2"])
        .args(["--routing", "round-robin", "--max-duration", "1s"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--handler book with --routing round-robin with --workers 2: the book handler with round-robin")
            && err.contains("wrong books"),
        "{err}"
    );
    let out = mdsub()
        .args(["engine", "--endpoint", "tcp://127.0.0.1:1", "--handler", "book", "--workers", "2"])
        .args(["--routing", "by-topic", "--max-duration", "200ms", "--silence", "0s"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("wrong books") && out.status.code() != Some(2), "{err}");
}

/// `mdsub bench` refuses the book handler wherever one of its engines would split books between
/// workers: `--compare routing`'s round-robin case, and a round-robin profile over two workers
/// given `--handler book` (the profile was checked before the flag changed its handler). Both
/// ran with main's binary (exit 0, the round-robin books wrong).
#[test]
fn bench_refuses_the_book_handler_where_an_engine_would_split_its_books() {
    let dir = tmp_dir("bench_split_books");
    let builtin = mdsub().args(["profile", "show", "builtin"]).output().expect("run");
    let text = String::from_utf8_lossy(&builtin.stdout)
        .replace("routing = \"by-topic\"", "routing = \"round-robin\"")
        .replace("[[workers]]\n", "[[workers]]\n\n[[workers]]\n");
    let rr = dir.join("rr.toml");
    std::fs::write(&rr, text).expect("write profile");
    let rr = rr.to_str().expect("utf8 path");
    let bench = |args: &[&str]| {
        let out = mdsub()
            .args(["bench", "--count", "1000", "--runs", "1", "--handoff", "batch"])
            .args(args)
            .output()
            .expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = bench(&["--compare", "routing", "--handler", "book"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--compare routing with --handler book") && err.contains("wrong books"), "{err}");
    let (code, err) = bench(&["--profile", rr, "--handler", "book"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--handler book with this profile") && err.contains("round-robin routing over 2"), "{err}");
    let (code, err) = bench(&["--profile", rr, "--compare", "routing"]);
    assert_eq!(code, Some(0), "the latency handler compares routing: {err}");
}

/// A live recording (DBN version 1, no mappings in its metadata) whose stream maps instrument 51
/// `MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT` + 50 times, alternately `SYMA` and `SYMB` for 10 ns
/// each from T0 (each of the first 4096 also sent twice more, as a repeat and a part of itself:
/// those add nothing), then 4 MBO records of 51: received in its first two mappings' times, in its last
/// kept one's, and in a dropped one's. Returns the path and the mapping records written.
fn many_mappings_file(dir: &Path) -> (std::path::PathBuf, usize) {
    use mdsub::feed::dbn_source::MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT as CAP;
    let mut live = glbx_mbo_metadata(None, Vec::new());
    live.version = 1;
    live.symbol_cstr_len = dbn::compat::SYMBOL_CSTR_LEN_V1;
    let maps: Vec<dbn::v1::SymbolMappingMsg> = (0..CAP as u64 + 50)
        .flat_map(|i| {
            let (from, sym) = (T0 + i * 10, if i % 2 == 0 { "SYMA" } else { "SYMB" });
            let spans = if i < CAP as u64 {
                &[(from, from + 10), (from, from + 10), (from + 5, from + 10)][..]
            } else {
                &[(from, from + 10)][..]
            };
            spans
                .iter()
                .map(|(a, b)| dbn::v1::SymbolMappingMsg::new(51, T0, sym, sym, *a, *b).expect("mapping"))
                .collect::<Vec<_>>()
        })
        .collect();
    let last_kept = T0 + (CAP as u64 - 1) * 10;
    let data: Vec<MboMsg> = [T0 + 1, T0 + 11, last_kept + 1, last_kept + 205]
        .iter()
        .enumerate()
        .map(|(i, ts)| mbo(51, *ts, i as u64 + 1, b'A', b'B', 1, 1))
        .collect();
    let mut refs: Vec<RecordRef> = maps.iter().map(RecordRef::from).collect();
    refs.extend(data.iter().map(RecordRef::from));
    let path = dir.join("many-mappings.dbn");
    write_refs(&path, &live, &refs, false);
    (path, maps.len())
}

/// An instrument's symbol mappings are bounded: past `MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT` (4096)
/// of one id, the later ones are dropped, counted and said once, and the id's records are named
/// from the ones kept (a record in a dropped mapping's time by the nearest kept one before it).
/// Repeats of a mapping count for none. Before, every mapping was kept (a list without bound,
/// each lookup outside the current span a scan of it) and nothing was said.
#[test]
fn symbol_mappings_past_the_cap_are_dropped_counted_and_said_once() {
    use mdsub::feed::dbn_source::MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT as CAP;
    let dir = tmp_dir("many-mappings");
    let (path, _) = many_mappings_file(&dir);
    let (got, status, out) = replay("replay-dbn-many-mappings", 1, &["--from", path.to_str().expect("utf8")]);
    assert!(status.success(), "{out}");
    let topics: Vec<&str> = got.iter().map(|g| g.topic.as_str()).collect();
    // Mapping CAP - 1 (odd) is SYMB; the last record's time is in a dropped (SYMA) one's.
    assert_eq!(topics, ["SYMA", "SYMB", "SYMB", "SYMB"], "{out}");
    let said: Vec<&str> = out.lines().filter(|l| l.contains("refused (symbol_mappings_full)")).collect();
    assert_eq!(said.len(), 1, "said once: {out}");
    assert!(said[0].contains(&format!("instrument 51 has {CAP} symbol mappings")), "{}", said[0]);
    assert!(out.contains("replay: 50 DBN symbol mappings were dropped (over 4096 per instrument id"), "counted: {out}");
}

/// `mdsub bench --from` reports what its replay skipped, per record type, and the symbol mappings
/// it dropped, in its report (stdout) and its `--json`, not only on stderr. Before, the report
/// had neither (a user comparing runs could not tell what was not sent).
#[test]
fn bench_reports_the_records_its_replay_skipped() {
    let dir = tmp_dir("bench-skipped");
    let (path, maps) = many_mappings_file(&dir);
    let p = path.to_str().expect("utf8");
    let args = ["bench", "--from", p, "--runs", "1", "--handoff", "batch"];
    let (code, out, err) = run_within("bench", mdsub().args(args).arg("--json"), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let v = json(&out);
    assert_eq!(v["skipped_by_rtype"]["0x16"], maps as u64, "{v}");
    assert_eq!(v["symbol_mappings_dropped"], 50, "{v}");
    let (code, out, err) = run_within("bench", mdsub().args(args), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let want = format!(
        "input: not replayed (each run), by record type: 0x16 symbol-mapping {maps}; symbol mappings dropped 50 \
         (over 4096 per instrument id or 16777216 in all)"
    );
    assert!(out.lines().any(|l| l == want), "stdout has `{want}`: {out}");
}

/// With by-topic routing over two workers, the book handler keeps a renamed instrument's book on
/// one worker: a live recording renames instrument 41 mid-stream (HHH, then a symbol the other
/// worker's topic hash takes), five of its bids are added before and cancelled after. The engine
/// holds one book for 41 (labelled by its last topic and its first), with no unknown orders.
/// Before, by topic, the rename moved 41 to the other worker: two books (HHH with every bid, the
/// new name with five cancels of unknown orders).
#[test]
fn a_renamed_instrument_keeps_one_book_across_workers() {
    let dir = tmp_dir("renamed-book");
    let by_worker = |t: &str| mdsub::wire::topic_hash(t.as_bytes()) % 2;
    let renamed = (0..64).map(|k| format!("III{k}")).find(|t| by_worker(t) != by_worker("HHH")).expect("a topic");
    let mut live = glbx_mbo_metadata(None, Vec::new());
    live.version = 1;
    live.symbol_cstr_len = dbn::compat::SYMBOL_CSTR_LEN_V1;
    let hour = 3_600_000_000_000;
    let hhh = dbn::v1::SymbolMappingMsg::new(41, T0, "HHH", "HHH", T0, T0 + hour).expect("mapping");
    let iii =
        dbn::v1::SymbolMappingMsg::new(41, T0 + 15_000, &renamed, &renamed, T0 + 20_000, T0 + hour).expect("mapping");
    let adds: Vec<MboMsg> = (0..10u64).map(|i| mbo(41, T0 + i * 1_000, i + 1, b'A', b'B', 100 + i as i64, 1)).collect();
    let mut after: Vec<MboMsg> =
        (0..5u64).map(|i| mbo(41, T0 + 20_000 + i * 1_000, i + 1, b'C', b'B', 100 + i as i64, 1)).collect();
    after.push(mbo(41, T0 + 30_000, 11, b'A', b'A', 200, 2));
    let mut refs: Vec<RecordRef> = vec![RecordRef::from(&hhh)];
    refs.extend(adds.iter().map(RecordRef::from));
    refs.push(RecordRef::from(&iii));
    refs.extend(after.iter().map(RecordRef::from));
    let path = dir.join("renamed.dbn");
    write_refs(&path, &live, &refs, false);
    let report = books_of(path, 1);
    assert_eq!(report.delivered, 16, "{}", report.render());
    let h = &report.handler;
    assert_eq!((h["instruments"], h["orders"], h["anomaly_unknown_order"]), (1, 6, 0), "{h:?}");
    let px = dbn::pretty::fmt_px;
    let want = format!("book {renamed} (first HHH) id=41 bid={} x 1 ask={} x 2 levels=5/1 orders=6", px(109), px(200));
    assert_eq!(report.handler_summary.len(), 1, "{:?}", report.handler_summary);
    assert!(report.handler_summary[0].starts_with(&want), "{:?} vs `{want}`", report.handler_summary);
}
