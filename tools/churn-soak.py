#!/usr/bin/env python3
"""Churn soak: run mdsub's long-lived parts for a while under churn and watch what grows.

  tools/churn-soak.py [--minutes 10] [--rate 5000] [--sample-s 5] [--out DIR] [--bin PATH]
                      [--engine-arg=FLAGS]

tools/soak.sh runs one steady feed; this one keeps everything changing, as a day of a live
feed does, and watches the memory, descriptors, threads and files of each long-lived process:

  publishers   two `mdsub replay` slots bound on fixed ports, each restarted every few
               seconds (a new session each time): slot A keeps its publisher id (one
               publisher restarting: it ends by its --duration with an end of stream, or is
               killed with SIGKILL mid-run, or starts a second session by --restart-at);
               slot B takes a new publisher id at each start (publishers coming and going).
               Each start publishes more symbols than the last (--symbols grows by
               --new-symbols, uniform popularity), so new topics keep appearing.
  engine       `mdsub engine` on both slots (one shard, --expect-eos 0: it runs until
               stopped), with --metrics-listen, --hlog (its interval log), --monitor and
               --store (its status published to the clone server every interval).
  lvc          `mdsub lvc` on both slots; short-lived subscribers (`mdsub engine
               --subscribe PREFIX --max-duration 2s`) connect to its backend, take their
               answers and leave, one after another.
  tap          `mdsub tap --subscribe-all --stats` on slot A.
  clone-server `mdsub clone-server --data-dir`; clients (`mdsub clone-client`) connect,
               set new keys with a --ttl, watch a subtree for a change, dump one, and leave,
               over and over.

Every --sample-s seconds it records, per long-lived process: RSS (VmRSS), open descriptors
(/proc/PID/fd), threads (/proc/PID/task); the sizes of the files they write (the engine's
hlog, the clone data dir) and of their stderr; the engine's /metrics text size and what its
sequence trackers hold (mdsub_shard_publishers_held, mdsub_shard_topics_held). At the end it prints a
table: each quantity at the first sample after warm-up (a fifth of the run, at least one
sample) and at the end, and its slope per hour fitted (least squares) over the second half
of the run: what still grows once the run has settled. Writes DIR/samples.tsv and every
process's stderr (DIR/*.err). Python standard library only.

Rates are modest on purpose (the default 5000 msg/s per slot): this is about growth over
time and churn, not throughput.
"""

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_base(span):
    """A base port P with P..P+span-1 free (the clone server uses four)."""
    for _ in range(200):
        p = free_port()
        if p + span >= 65535:
            continue
        socks = []
        try:
            for k in range(span):
                s = socket.socket()
                s.bind(("127.0.0.1", p + k))
                socks.append(s)
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    sys.exit("churn-soak: no run of free ports found")


def proc_stats(pid):
    """(rss_kib, fds, threads) of a live process, None when it is gone."""
    try:
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
        return rss, fds, threads
    except OSError:
        return None


def tree_bytes(path):
    total = 0
    if os.path.isfile(path):
        return os.path.getsize(path)
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def scrape(url):
    """The /metrics page's size, and the sums over shards of the sequence trackers' held
    publishers and topics (0 from a binary without those gauges); (-1, 0, 0) unanswered."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read()
    except OSError:
        return -1, 0, 0
    held = {b"mdsub_shard_publishers_held": 0, b"mdsub_shard_topics_held": 0}
    for line in text.splitlines():
        name, _, rest = line.partition(b"{")
        if name in held:
            try:
                held[name] += int(float(rest.rsplit(b" ", 1)[1]))
            except (IndexError, ValueError):
                pass
    return len(text), held[b"mdsub_shard_publishers_held"], held[b"mdsub_shard_topics_held"]


class Soak:
    def __init__(self, a):
        self.a = a
        self.bin = a.bin
        self.out = a.out
        self.procs = {}  # name -> Popen, the long-lived ones
        self.churn = []  # short-lived Popens (replays, clients, subscribers)
        self.rng = random.Random(a.seed)
        self.counts = {"replay_starts": 0, "replay_kills": 0, "lvc_subscribers": 0, "clone_clients": 0}

    def spawn(self, name, args, long_lived=True, stdout=subprocess.DEVNULL):
        err = open(os.path.join(self.out, f"{name}.err"), "ab")
        p = subprocess.Popen([self.bin] + args, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        if long_lived:
            self.procs[name] = p
        else:
            self.churn.append(p)
        return p

    def reap(self):
        self.churn = [p for p in self.churn if p.poll() is None]

    def stop_all(self):
        for p in self.churn:
            if p.poll() is None:
                p.kill()
        for p in self.churn:
            p.wait()
        for name, p in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        for name, p in self.procs.items():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"churn-soak: {name} did not stop on SIGINT within 15 s: killed", file=sys.stderr)
                p.kill()
                p.wait()

    def start(self):
        a = self.a
        self.slot_ports = {"A": free_port(), "B": free_port()}
        self.metrics_port = free_port()
        self.monitor_port = free_port()
        self.lvc_back = free_port()
        self.tap_back = free_port()
        self.clone_base = free_base(4)
        ep = lambda p: f"tcp://127.0.0.1:{p}"  # noqa: E731
        self.clone_dir = os.path.join(self.out, "clone-data")
        os.makedirs(self.clone_dir, exist_ok=True)
        self.spawn("clone-server", ["clone-server", "--endpoint", f"bind:{ep(self.clone_base)}",
                                    "--data-dir", self.clone_dir, "--quiet"])
        self.hlog = os.path.join(self.out, "engine.hlog")
        slots = ",".join(ep(p) for p in self.slot_ports.values())
        self.spawn("engine", ["engine", "--endpoint", f"connect:{slots}", "--expect-eos", "0",
                              "--snail", "warn", "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                              "--metrics-interval", "1s", "--hlog", self.hlog,
                              "--monitor", f"bind:{ep(self.monitor_port)}",
                              "--store", f"connect:{ep(self.clone_base)}", "--engine-id", "soak"]
                   + [x for arg in self.a.engine_arg for x in arg.split()])
        self.spawn("lvc", ["lvc", "--frontend", f"connect:{ep(self.slot_ports['A'])}",
                           "--frontend", f"connect:{ep(self.slot_ports['B'])}",
                           "--backend", f"bind:{ep(self.lvc_back)}", "--max-topics", str(a.lvc_max_topics)])
        self.spawn("tap", ["tap", "--frontend", f"connect:{ep(self.slot_ports['A'])}",
                           "--backend", f"bind:{ep(self.tap_back)}", "--subscribe-all", "--stats"])
        self.symbols = 100
        self.next_id = {"A": 1, "B": 1000}
        self.replay = {"A": None, "B": None}
        self.replay_kill_at = {"A": None, "B": None}

    def start_replay(self, slot, now):
        a = self.a
        self.symbols = min(self.symbols + a.new_symbols, 1_000_000)
        pid_arg = self.next_id[slot]
        if slot == "B":
            self.next_id["B"] += 1
        secs = self.rng.uniform(2.0, 6.0)
        args = ["replay", "--endpoint", f"bind:tcp://127.0.0.1:{self.slot_ports[slot]}",
                "--rate", str(a.rate), "--duration", f"{int(secs * 1000)}ms", "--symbols", str(self.symbols),
                "--zipf", "0", "--seed", str(self.rng.randrange(1 << 30)), "--publisher-id", str(pid_arg),
                "--subscribers", "0", "--eos-wait", "0s", "--payload-bytes", "64"]
        if self.rng.random() < 0.3:
            args += ["--restart-at", str(max(1, int(a.rate * secs / 2)))]
        self.replay[slot] = self.spawn(f"replay-{slot}", args, long_lived=False)
        self.replay_kill_at[slot] = now + self.rng.uniform(0.5, secs) if self.rng.random() < 0.3 else None
        self.counts["replay_starts"] += 1

    def tick_replays(self, now):
        for slot in ("A", "B"):
            p = self.replay[slot]
            if p is not None and p.poll() is None:
                if self.replay_kill_at[slot] is not None and now >= self.replay_kill_at[slot]:
                    p.kill()
                    p.wait()
                    self.counts["replay_kills"] += 1
                else:
                    continue
            self.start_replay(slot, now)

    def tick_lvc_subscriber(self):
        prefix = self.rng.choice(["ES", "NQ", "CL", "GC", "6E", "ZN", "FDAX", "VX", "Z", "HG"])
        self.spawn("lvc-sub", ["engine", "--endpoint", f"connect:tcp://127.0.0.1:{self.lvc_back}",
                               "--subscribe", prefix, "--expect-eos", "0", "--max-duration", "2s",
                               "--snail", "off", "--workers", "1"], long_lived=False)
        self.counts["lvc_subscribers"] += 1

    def tick_clone_client(self, i):
        server = ["--store", f"tcp://127.0.0.1:{self.clone_base}", "--timeout", "5s"]
        kind = i % 4
        if kind in (0, 1):
            args = ["clone-client"] + server + ["set", f"/soak/s{i % 50}/k{i}", f"v{i}", "--ttl", "3s"]
        elif kind == 2:
            args = ["clone-client"] + server + ["watch", f"/soak/s{i % 50}/", "--count", "1"]
        else:
            args = ["clone-client"] + server + ["dump", f"/soak/s{i % 50}/"]
        p = self.spawn("clone-client", args, long_lived=False)
        if kind == 2:
            p.kill_at = time.monotonic() + 2.0
        self.counts["clone_clients"] += 1

    def sample(self, t, tsv):
        for name in ("engine", "lvc", "tap", "clone-server"):
            p = self.procs[name]
            st = proc_stats(p.pid)
            if st is None:
                continue
            files = {"engine": self.hlog, "clone-server": self.clone_dir}.get(name)
            fbytes = tree_bytes(files) if files else 0
            errb = tree_bytes(os.path.join(self.out, f"{name}.err"))
            metrics = (0, 0, 0)
            if name == "engine":
                metrics = scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")
            m = "\t".join(str(v) for v in metrics)
            tsv.write(f"{name}\t{t:.1f}\t{st[0]}\t{st[1]}\t{st[2]}\t{fbytes}\t{errb}\t{m}\n")
        tsv.flush()

    def run(self):
        a = self.a
        self.start()
        t0 = time.monotonic()
        end = t0 + a.minutes * 60
        next_sample = t0 + 2
        next_sub = t0 + 3
        next_client = t0 + 3
        client_i = 0
        tsv_path = os.path.join(self.out, "samples.tsv")
        with open(tsv_path, "w") as tsv:
            tsv.write("proc\tt_s\trss_kib\tfds\tthreads\tfile_bytes\tstderr_bytes\tmetrics_bytes"
                      "\tpublishers_held\ttopics_held\n")
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                for name, p in self.procs.items():
                    if p.poll() is not None:
                        print(f"churn-soak: {name} exited early with {p.returncode} (see {self.out}/{name}.err)",
                              file=sys.stderr)
                        return tsv_path, False
                self.tick_replays(now)
                if now >= next_sub:
                    self.tick_lvc_subscriber()
                    next_sub = now + a.subscriber_every_s
                if now >= next_client:
                    self.tick_clone_client(client_i)
                    client_i += 1
                    next_client = now + a.client_every_s
                for p in self.churn:
                    if getattr(p, "kill_at", None) is not None and now >= p.kill_at and p.poll() is None:
                        p.kill()
                self.reap()
                if now >= next_sample:
                    self.sample(now - t0, tsv)
                    next_sample += a.sample_s
                time.sleep(0.05)
        return tsv_path, True


def fit_slope(points):
    """Least-squares slope of (t, v) points, per second."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (v - mv) for t, v in points) / den


def table(tsv_path):
    rows = [line.rstrip("\n").split("\t") for line in open(tsv_path)]
    hdr, rows = rows[0], rows[1:]
    cols = ["rss_kib", "fds", "threads", "file_bytes", "stderr_bytes", "metrics_bytes", "publishers_held", "topics_held"]
    print(f"\n{'process':<13} {'quantity':<13} {'warm':>12} {'end':>12} {'slope/h (2nd half)':>19}")
    for name in ("engine", "lvc", "tap", "clone-server"):
        rs = [dict(zip(hdr, r)) for r in rows if r[0] == name]
        if len(rs) < 3:
            print(f"{name:<13} only {len(rs)} samples")
            continue
        warm = rs[max(1, len(rs) // 5)]
        t_end = float(rs[-1]["t_s"])
        second = [r for r in rs if float(r["t_s"]) >= t_end / 2]
        for c in cols:
            if all(int(r[c]) == 0 for r in rs):
                continue
            slope_h = fit_slope([(float(r["t_s"]), int(r[c])) for r in second]) * 3600
            print(f"{name:<13} {c:<13} {int(warm[c]):>12} {int(rs[-1][c]):>12} {slope_h:>19.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10, help="how long to run (default 10)")
    ap.add_argument("--rate", type=int, default=5000, help="msg/s of each publisher slot (default 5000)")
    ap.add_argument("--sample-s", type=float, default=5, help="seconds between samples (default 5)")
    ap.add_argument("--new-symbols", type=int, default=200, help="symbols added at each publisher start (default 200)")
    ap.add_argument("--lvc-max-topics", type=int, default=100_000, help="the lvc's --max-topics (default its own, 100000)")
    ap.add_argument("--subscriber-every-s", type=float, default=1.0, help="a new LVC subscriber this often (default 1)")
    ap.add_argument("--client-every-s", type=float, default=0.25, help="a new clone client this often (default 0.25)")
    ap.add_argument("--engine-arg", action="append", default=[],
                    help="more flags for the engine, split at spaces (repeatable; give it with =, e.g. --engine-arg='--forget-silent-after 1m')")
    ap.add_argument("--seed", type=int, default=1, help="seed of the churn's choices (default 1)")
    ap.add_argument("--out", default=None, help="folder for samples.tsv and each process's stderr (default: a new /tmp folder)")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--bin", default=os.path.join(here, "..", "target", "release", "mdsub"), help="the mdsub binary (default: target/release/mdsub)")
    a = ap.parse_args()
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"churn-soak: no mdsub binary at {a.bin} (cargo build --release, or --bin)")
    a.out = a.out or tempfile.mkdtemp(prefix="mdsub-churn-soak.")
    os.makedirs(a.out, exist_ok=True)
    print(f"churn-soak: {a.minutes} min, {a.rate} msg/s per publisher slot, sampled every {a.sample_s} s -> {a.out}")
    s = Soak(a)
    ok = False
    try:
        tsv, ok = s.run()
    finally:
        s.stop_all()
    print("churn-soak: " + ", ".join(f"{k}={v}" for k, v in s.counts.items()))
    table(os.path.join(a.out, "samples.tsv"))
    print(f"churn-soak: samples {a.out}/samples.tsv, stderr of each process {a.out}/*.err")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
