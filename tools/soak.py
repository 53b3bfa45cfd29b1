#!/usr/bin/env python3
"""Soak-run helper for tools/soak.sh: sample a running engine, and plot the samples.

  soak.py sample --pid PID --metrics URL --interval S --path NAME --out FILE [--lvc-pid PID]
      Every S seconds until PID exits, append one tab-separated line to FILE:
      path, t_s, rss_kib (engine), cpu_pct (engine, of one core, over the interval),
      msgs_per_s (received by the engine over the interval), p99_ms (total stage, last
      metrics interval, worst shard), gaps (cumulative), lvc_rss_kib (the LVC's RSS, 0
      on the direct path).

  soak.py plot --in FILE --out SVG [--title TEXT]
      Write a small SVG: RSS, CPU, p99 and gaps against time, one line per path.

Only the standard library: the plot is hand-written SVG, so CI needs no pip package.
"""

import argparse
import os
import re
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is state (field 3); utime, stime are fields 14, 15.
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


METRIC = re.compile(r'^(\w+)\{([^}]*)\}\s+(\S+)$')


def scrape(url):
    """Sum of received and gaps over shards, worst total-stage p99 of the last interval."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    received = gaps = 0
    p99 = 0.0
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        if name == "mdsub_shard_received_total":
            received += int(float(value))
        elif name == "mdsub_shard_gaps_total":
            gaps += int(float(value))
        elif name == "mdsub_latency_interval_seconds" and 'stage="total"' in labels and 'quantile="0.99"' in labels:
            p99 = max(p99, float(value))
    return received, gaps, p99


def sample(a):
    new = not os.path.exists(a.out) or os.path.getsize(a.out) == 0
    with open(a.out, "a") as out:
        if new:
            cols = ["path", "t_s", "rss_kib", "cpu_pct", "msgs_per_s", "p99_ms", "gaps", "lvc_rss_kib"]
            out.write("\t".join(cols) + "\n")
        t0 = time.monotonic()
        last_t, last_cpu, last_rx = t0, cpu_s(a.pid), None
        while True:
            time.sleep(a.interval)
            now = time.monotonic()
            rss, cpu, m = rss_kib(a.pid), cpu_s(a.pid), scrape(a.metrics)
            if rss is None or cpu is None:
                break  # the engine has ended
            if m is None:
                continue  # not serving yet
            rx, gaps, p99 = m
            dt = now - last_t
            cpu_pct = 100.0 * (cpu - last_cpu) / dt if last_cpu is not None else 0.0
            rate = (rx - last_rx) / dt if last_rx is not None else 0.0
            row = [a.path, f"{now - t0:.1f}", str(rss), f"{cpu_pct:.1f}", f"{rate:.0f}", f"{p99 * 1e3:.3f}", str(gaps)]
            row.append(str(rss_kib(a.lvc_pid) or 0) if a.lvc_pid else "0")
            out.write("\t".join(row) + "\n")
            out.flush()
            last_t, last_cpu, last_rx = now, cpu, rx


def read_rows(path):
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    rows, header = [], None
    for l in lines:
        if l[0] == "path":
            header = l
            continue
        if header is None:
            continue
        rows.append(dict(zip(header, l)))
    return rows


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def plot(a):
    rows = read_rows(a.inp)
    if not rows:
        sys.exit(f"soak.py: no samples in {a.inp}")
    paths = list(dict.fromkeys(r["path"] for r in rows))
    panels = [("rss_kib", "engine RSS (MiB)", 1 / 1024), ("cpu_pct", "engine CPU (% of a core)", 1),
              ("p99_ms", "p99 per interval (ms)", 1), ("gaps", "messages lost (gaps, cumulative)", 1)]
    w, ph, pad_l, pad_t = 720, 150, 70, 40
    h = pad_t + len(panels) * (ph + 40) + 20
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{pad_l}" y="20" font-size="13">{esc(a.title)}</text>']
    tmax = max(float(r["t_s"]) for r in rows) or 1.0
    for i, (col, label, scale) in enumerate(panels):
        y0 = pad_t + i * (ph + 40)
        vals = [float(r[col]) * scale for r in rows]
        vmax = max(vals) * 1.1 or 1.0
        pw = w - pad_l - 20
        svg.append(f'<rect x="{pad_l}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        svg.append(f'<text x="{pad_l}" y="{y0 - 4}">{esc(label)}</text>')
        svg.append(f'<text x="{pad_l - 4}" y="{y0 + 10}" text-anchor="end">{vmax:.3g}</text>')
        svg.append(f'<text x="{pad_l - 4}" y="{y0 + ph}" text-anchor="end">0</text>')
        svg.append(f'<text x="{pad_l + pw}" y="{y0 + ph + 12}" text-anchor="end">{tmax:.0f} s</text>')
        for k, p in enumerate(paths):
            pts = [(float(r["t_s"]), float(r[col]) * scale) for r in rows if r["path"] == p]
            coords = " ".join(f"{pad_l + pw * t / tmax:.1f},{y0 + ph - ph * v / vmax:.1f}" for t, v in pts)
            colour = COLOURS[k % len(COLOURS)]
            svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
            if i == 0:
                svg.append(f'<text x="{pad_l + 10 + 160 * k}" y="{y0 + 14}" fill="{colour}">{esc(p)}</text>')
    svg.append("</svg>")
    with open(a.out, "w") as f:
        f.write("\n".join(svg) + "\n")


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--interval", type=float, default=10.0)
    s.add_argument("--path", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--lvc-pid", type=int, default=0)
    p = sub.add_parser("plot")
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="mdsub soak")
    a = ap.parse_args()
    sample(a) if a.cmd == "sample" else plot(a)


if __name__ == "__main__":
    main()
