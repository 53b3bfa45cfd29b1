//! A seeded TCP relay for fault injection (issue 13): it sits between two
//! mdsub parts (`A ──► relay ──► B`) and can delay, stall, cut or corrupt the
//! byte stream. Where a fault strikes is drawn from the seed per connection
//! (connection `i` uses `seed ^ i`), so a failing run is replayed exactly by
//! its seed; only the timing of the OS is not. Plain std threads: this is
//! test support, outside the library's one-runner rule.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What to do to the stream from the target back to the client ("down",
/// the direction market data and updates flow when the client subscribes).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub seed: u64,
    /// Sleep up to this long before forwarding each chunk (0: none).
    pub delay_max_us: u64,
    /// Stall the stream once, for this long, at a seeded offset in `range` bytes.
    pub stall: Option<(std::ops::Range<u64>, Duration)>,
    /// Cut the first `cuts` connections at a seeded offset in `range` bytes.
    pub cut: Option<(std::ops::Range<u64>, u64)>,
    /// Flip one byte at a seeded offset in `range` on each of the first `n` connections.
    pub corrupt: Option<(std::ops::Range<u64>, u64)>,
}

/// What the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub connections: u64,
    pub cuts: u64,
    pub stalls: u64,
    pub corrupted: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
}

#[derive(Default)]
struct Shared {
    connections: AtomicU64,
    cuts: AtomicU64,
    stalls: AtomicU64,
    corrupted: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    live: Mutex<Vec<TcpStream>>,
}

/// A running relay; stops (and drops every connection) when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// SplitMix64: the seeded choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn in_range(&mut self, r: &std::ops::Range<u64>) -> u64 {
        r.start + self.next() % (r.end - r.start).max(1)
    }
}

/// Where the faults strike on connection `i` (byte offsets of the down stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub cut_at: Option<u64>,
    pub stall_at: Option<u64>,
    pub corrupt_at: Option<u64>,
}

impl Faults {
    /// The plan for connection `i`: a pure function of the seed and `i`.
    pub fn plan(&self, i: u64) -> Plan {
        let mut rng = Rng(self.seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let cut_at = self.cut.as_ref().and_then(|(r, cuts)| {
            let at = rng.in_range(r);
            (i < *cuts).then_some(at)
        });
        let stall_at = self.stall.as_ref().map(|(r, _)| rng.in_range(r));
        let corrupt_at = self.corrupt.as_ref().and_then(|(r, n)| {
            let at = rng.in_range(r);
            (i < *n).then_some(at)
        });
        Plan { cut_at, stall_at, corrupt_at }
    }
}

impl Relay {
    /// Listen on an ephemeral port of 127.0.0.1 and relay to `target`.
    pub fn start(target: SocketAddr, faults: Faults) -> Relay {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), target, faults)
    }

    /// Listen on `listen` and relay to `target`.
    pub fn start_on(listen: SocketAddr, target: SocketAddr, faults: Faults) -> Relay {
        let (listener, addr) = listen_on(listen, "relay");
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let (s, sh) = (stop.clone(), shared.clone());
        let acceptor = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Some((client, server)) = pair_with(client, target) else { continue };
                        sh.connections.fetch_add(1, Relaxed);
                        connect_pair(client, server, i, &faults, &sh);
                        i += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay { addr, stop, shared, acceptor: Some(acceptor) }
    }

    /// `tcp://127.0.0.1:PORT`, for a connect endpoint.
    pub fn endpoint(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Cut every live connection now (the clients see the link go down).
    pub fn cut_all(&self) {
        shut_down(&self.shared.live);
        self.shared.cuts.fetch_add(1, Relaxed);
    }

    pub fn stats(&self) -> RelayStats {
        let s = &self.shared;
        RelayStats {
            connections: s.connections.load(Relaxed),
            cuts: s.cuts.load(Relaxed),
            stalls: s.stalls.load(Relaxed),
            corrupted: s.corrupted.load(Relaxed),
            bytes_down: s.bytes_down.load(Relaxed),
            bytes_up: s.bytes_up.load(Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        stop_relaying(&self.stop, &self.shared.live, &mut self.acceptor);
    }
}

/// A relay's end: its threads told to stop, every live connection shut down, its acceptor
/// joined.
fn stop_relaying(stop: &AtomicBool, live: &Mutex<Vec<TcpStream>>, acceptor: &mut Option<JoinHandle<()>>) {
    stop.store(true, Relaxed);
    shut_down(live);
    if let Some(a) = acceptor.take() {
        let _ = a.join();
    }
}

/// Shut down every connection in `live` (their peers see them end), and forget them.
fn shut_down(live: &Mutex<Vec<TcpStream>>) {
    if let Ok(mut live) = live.lock() {
        for s in live.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A non-blocking listener on `at` (port 0: an ephemeral one) for `who`, and its address.
fn listen_on(at: SocketAddr, who: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(at).unwrap_or_else(|e| panic!("{who}: binding {at}: {e}"));
    listener.set_nonblocking(true).expect("nonblocking listener");
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{who}: its address: {e}"));
    (listener, addr)
}

/// `client`, just accepted, and a fresh connection to `target` for it (both blocking, no
/// Nagle); None, the client closed, when the target does not answer (it tries again).
fn pair_with(client: TcpStream, target: SocketAddr) -> Option<(TcpStream, TcpStream)> {
    let Ok(server) = TcpStream::connect(target) else {
        let _ = client.shutdown(Shutdown::Both);
        return None;
    };
    let _ = client.set_nonblocking(false);
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    Some((client, server))
}

/// Start the two pumps of one relayed connection.
fn connect_pair(client: TcpStream, server: TcpStream, i: u64, faults: &Faults, shared: &Arc<Shared>) {
    let clones = (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone());
    let (Ok(c_read), Ok(s_write), Ok(c_keep), Ok(s_keep)) = clones else { return };
    if let Ok(mut live) = shared.live.lock() {
        live.push(c_keep);
        live.push(s_keep);
    }
    // Up: client → server, untouched.
    let sh = shared.clone();
    let none = Plan { cut_at: None, stall_at: None, corrupt_at: None };
    let untouched = Faults::default();
    std::thread::spawn(move || pump(c_read, s_write, none, &untouched, &sh, false));
    // Down: server → client, with the faults.
    let sh = shared.clone();
    let plan = faults.plan(i);
    let faults = Faults { seed: faults.seed ^ i, ..faults.clone() };
    std::thread::spawn(move || pump(server, client, plan, &faults, &sh, true));
}

/// Copy `from` to `to` until either side closes, applying `plan` (down only).
fn pump(mut from: TcpStream, mut to: TcpStream, plan: Plan, faults: &Faults, shared: &Shared, down: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut offset = 0u64;
    let mut rng = Rng(faults.seed);
    let delay_max_us = if down { faults.delay_max_us } else { 0 };
    let stall = faults.stall.as_ref().map(|s| s.1);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (start, end) = (offset, offset + n as u64);
        let within = |at: Option<u64>| at.filter(|&a| a >= start && a < end).map(|a| (a - start) as usize);
        if delay_max_us > 0 {
            std::thread::sleep(Duration::from_micros(rng.next() % delay_max_us));
        }
        if let Some(i) = within(plan.corrupt_at) {
            buf[i] ^= 0xff;
            shared.corrupted.fetch_add(1, Relaxed);
        }
        let mut chunk = &buf[..n];
        if let Some(i) = within(plan.cut_at) {
            let _ = to.write_all(&chunk[..i]);
            shared.cuts.fetch_add(1, Relaxed);
            let _ = (from.shutdown(Shutdown::Both), to.shutdown(Shutdown::Both));
            break;
        }
        if let (Some(i), Some(d)) = (within(plan.stall_at), stall) {
            if to.write_all(&chunk[..i]).is_err() {
                break;
            }
            shared.stalls.fetch_add(1, Relaxed);
            std::thread::sleep(d);
            chunk = &chunk[i..];
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        let counter = if down { &shared.bytes_down } else { &shared.bytes_up };
        counter.fetch_add(n as u64, Relaxed);
        offset = end;
    }
    let _ = (from.shutdown(Shutdown::Both), to.shutdown(Shutdown::Both));
}

/// A relay whose first connection dies without a close, as a path that went down does: once
/// `cut_at` bytes went down, the client's side is closed (the client sees its link go and
/// reconnects) while the target's side stays open and is read on, what the target sends
/// swallowed (to the target the connection lives on). The client's next connections are held
/// (their connects wait in the listen backlog) until `until` has appeared in the swallowed
/// bytes, then each is relayed to a fresh connection to the target, untouched.
pub struct BlackHole {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    shared: Arc<HoleShared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct HoleShared {
    /// Bytes of the first connection's down stream swallowed after the cut.
    swallowed: AtomicU64,
    /// `until` was seen among them.
    seen: AtomicBool,
    /// Client connections relayed to a connected target (the first included).
    relayed: AtomicU64,
    live: Mutex<Vec<TcpStream>>,
}

/// What a [`BlackHole`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoleStats {
    pub swallowed: u64,
    pub seen: bool,
    pub relayed: u64,
}

impl BlackHole {
    /// Listen on an ephemeral port of 127.0.0.1 and relay to `target` as the type says.
    pub fn start(target: SocketAddr, cut_at: u64, until: Vec<u8>) -> BlackHole {
        let (listener, addr) = listen_on("127.0.0.1:0".parse().expect("addr"), "black hole");
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(HoleShared::default());
        let (stop2, sh) = (stop.clone(), shared.clone());
        let acceptor = std::thread::spawn(move || {
            let mut first = true;
            while !stop2.load(Relaxed) {
                let held = !first && !sh.seen.load(Relaxed);
                let accepted = if held { None } else { listener.accept().ok() };
                let Some((client, _)) = accepted else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Some((client, server)) = pair_with(client, target) else { continue };
                for st in [&client, &server] {
                    let _ = st.set_read_timeout(Some(Duration::from_millis(100)));
                }
                let (Ok(c_up), Ok(s_up), Ok(c_keep), Ok(s_keep)) =
                    (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                if let Ok(mut live) = sh.live.lock() {
                    live.extend([c_keep, s_keep]);
                }
                sh.relayed.fetch_add(1, Relaxed);
                let (up_stop, down_stop, down_sh) = (stop2.clone(), stop2.clone(), sh.clone());
                // Up: the first connection's ends at the cut and leaves the target's side open.
                let close_target = !first;
                std::thread::spawn(move || copy_until_stopped(c_up, s_up, &up_stop, close_target));
                if first {
                    let until = until.clone();
                    std::thread::spawn(move || swallow_after(server, client, cut_at, &until, &down_sh, &down_stop));
                } else {
                    std::thread::spawn(move || copy_until_stopped(server, client, &down_stop, true));
                }
                first = false;
            }
        });
        BlackHole { addr, stop, shared, acceptor: Some(acceptor) }
    }

    /// `tcp://127.0.0.1:PORT`, for a connect endpoint.
    pub fn endpoint(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    pub fn stats(&self) -> HoleStats {
        let s = &self.shared;
        HoleStats { swallowed: s.swallowed.load(Relaxed), seen: s.seen.load(Relaxed), relayed: s.relayed.load(Relaxed) }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        stop_relaying(&self.stop, &self.shared.live, &mut self.acceptor);
    }
}

/// Copy `from` to `to` until `from` ends or `stop` is set; then close `from`, and `to` too
/// when `close_to`.
fn copy_until_stopped(mut from: TcpStream, mut to: TcpStream, stop: &AtomicBool, close_to: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if to.write_all(&buf[..n]).is_ok() => {}
            Ok(_) => break,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    if close_to {
        let _ = to.shutdown(Shutdown::Both);
    }
}

/// The first connection's down stream: `cut_at` bytes from `target` go to `client`, which is
/// then closed; the rest is read and swallowed, watched for `until`, until the target closes
/// or `stop` is set.
fn swallow_after(
    mut target: TcpStream,
    client: TcpStream,
    cut_at: u64,
    until: &[u8],
    sh: &HoleShared,
    stop: &AtomicBool,
) {
    let mut client = Some(client);
    let mut buf = vec![0u8; 16 * 1024];
    let (mut passed, mut tail) = (0u64, Vec::new());
    while !stop.load(Relaxed) {
        let n = match target.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let mut chunk = &buf[..n];
        if let Some(c) = &mut client {
            let take = (cut_at.saturating_sub(passed) as usize).min(n);
            let _ = c.write_all(&chunk[..take]);
            passed += take as u64;
            chunk = &chunk[take..];
            if passed >= cut_at {
                let _ = c.shutdown(Shutdown::Both);
                client = None;
            }
        }
        if client.is_none() && !chunk.is_empty() {
            sh.swallowed.fetch_add(chunk.len() as u64, Relaxed);
            tail.extend_from_slice(chunk);
            if tail.windows(until.len().max(1)).any(|w| w == until) {
                sh.seen.store(true, Relaxed);
            }
            let keep = tail.len().saturating_sub(until.len());
            tail.drain(..keep);
        }
    }
}
