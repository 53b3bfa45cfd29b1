#!/usr/bin/env python3
"""Independent readers for tests/dashboards.rs: mdsub wrote none of this.

  check.py hlog FILE   read an HdrHistogram interval log with the `hdrhistogram`
                       package's HistogramLogReader; print per tag the total
                       count, p99 (ns), the number of intervals and each
                       interval's count and [start, end] (ms since the epoch,
                       as the reader computes them from the header), as JSON.
  check.py hgrm FILE   read a percentile spectrum (HdrHistogram's
                       outputPercentileDistribution: a `Value Percentile
                       TotalCount 1/(1-Percentile)` header, rows, `#[...]`
                       footers), refusing one that is not whole: rows in
                       order, the last at percentile 1 with the footer's
                       total; print the total count, rows and max, as JSON.
  check.py promql BASE QUERY
                       ask a Prometheus server at BASE (http://HOST:PORT) for
                       the instant QUERY through its HTTP API; print the
                       result vector as [[labels, value], …] in JSON.
  check.py scrape URL [TOKEN]
                       GET URL with urllib (with TOKEN: as a bearer token),
                       parse the body with prometheus_client's text-format
                       parser; print every sample as [name, labels, value]
                       (value null for NaN) and every family as
                       [name, type, samples] in the order read, in JSON.
  check.py status URL SOURCE
                       GET URL with http.client from the local address
                       SOURCE (e.g. 127.0.0.2), no token; print the answer's
                       status as JSON ({"status": 403}).
"""
import json
import math
import sys


def at_rank(h, rank):
    """The value (highest equivalent) where the cumulative count reaches
    `rank`: HdrHistogram's Java and Rust rank ceil(q*N); the Python
    package's get_value_at_percentile rounds q*N half up instead."""
    total = 0
    for item in h.get_recorded_iterator():
        total += item.count_added_in_this_iter_step
        if total >= max(rank, 1):
            return h.get_highest_equivalent_value(item.value_iterated_to)
    return 0


def hlog(path):
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    reference = HdrHistogram(1, 60_000_000_000, 3)
    reader = HistogramLogReader(path, reference)
    acc, intervals, counts, spans = {}, {}, {}, {}
    while True:
        h = reader.get_next_interval_histogram()
        if h is None:
            break
        tag = h.get_tag()
        if tag not in acc:
            acc[tag] = HdrHistogram(1, 60_000_000_000, 3)
            intervals[tag] = 0
            counts[tag] = []
            spans[tag] = []
        acc[tag].add(h)
        intervals[tag] += 1
        counts[tag].append(h.get_total_count())
        spans[tag].append([h.get_start_time_stamp(), h.get_end_time_stamp()])
    out = {
        tag: {
            "count": h.get_total_count(),
            "p99": h.get_value_at_percentile(99.0) if h.get_total_count() else 0,
            "p99_ceil_rank": at_rank(h, math.ceil(0.99 * h.get_total_count())),
            "ceil_ranks": {str(q): at_rank(h, math.ceil(q * h.get_total_count())) for q in (0.5, 0.99, 0.999)},
            "intervals": intervals[tag],
            "interval_counts": counts[tag],
            "spans": spans[tag],
        }
        for tag, h in acc.items()
    }
    print(json.dumps({"start_time_sec": reader.start_time_sec, "base_time_sec": reader.base_time_sec, "tags": out}))


def hgrm(path):
    with open(path) as f:
        lines = [l.rstrip("\n") for l in f]
    if not lines or lines[0].split() != ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]:
        sys.exit(f"{path}: no column header: {lines[:1]}")
    rows, footers = [], {}
    for l in lines[1:]:
        if not l.strip():
            continue
        if l.startswith("#["):
            for part in l.strip("#[]").split(","):
                key, _, value = part.partition("=")
                footers[key.strip()] = value.strip()
            continue
        if footers:
            sys.exit(f"{path}: a row after the footers: {l!r}")
        cols = l.split()
        if len(cols) not in (3, 4):
            sys.exit(f"{path}: not a row: {l!r}")
        value, q, total = float(cols[0]), float(cols[1]), int(cols[2])
        if len(cols) == 4 and abs(float(cols[3]) - 1 / (1 - q)) > 0.01 * (1 / (1 - q)) + 0.01:
            sys.exit(f"{path}: 1/(1-Percentile) disagrees with its percentile: {l!r}")
        if rows and (value < rows[-1][0] or q < rows[-1][1] or total < rows[-1][2]):
            sys.exit(f"{path}: a row out of order: {l!r}")
        rows.append((value, q, total))
    for key in ("Mean", "Max", "Total count", "Buckets", "SubBuckets"):
        if key not in footers:
            sys.exit(f"{path}: no {key} footer (a file cut short?): {footers}")
    count = int(footers["Total count"])
    if count and (not rows or rows[-1][1] != 1.0 or rows[-1][2] != count):
        sys.exit(f"{path}: the last row is not percentile 1 at the total count {count}: {rows[-1:]}")
    print(json.dumps({"count": count, "rows": len(rows), "max": float(footers["Max"])}))


def scrape(url, token=None):
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=10) as r:
        ctype = r.headers.get("Content-Type", "")
        body = r.read().decode("utf-8")
    samples = []
    types = {}
    families = []
    for family in text_string_to_metric_families(body):
        types[family.name] = family.type
        families.append([family.name, family.type, len(family.samples)])
        for s in family.samples:
            # NaN (a quantile of an interval without observations) as null: JSON has no NaN.
            value = s.value if math.isfinite(s.value) else None
            samples.append([s.name, s.labels, value])
    print(json.dumps({"content_type": ctype, "types": types, "families": families, "samples": samples}))


def status(url, source):
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10, source_address=(source, 0))
    conn.request("GET", u.path)
    print(json.dumps({"status": conn.getresponse().status}))
    conn.close()


def promql(base, query):
    import urllib.parse
    import urllib.request

    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        answer = json.load(r)
    if answer.get("status") != "success":
        raise SystemExit("query failed: %r" % answer)
    def num(v):
        f = float(v)
        return f if math.isfinite(f) else None  # NaN (e.g. a quantile of zero rates) as null

    print(json.dumps([[x["metric"], num(x["value"][1])] for x in answer["data"]["result"]]))


if __name__ == "__main__":
    {"hlog": hlog, "hgrm": hgrm, "scrape": scrape, "status": status, "promql": promql}[sys.argv[1]](*sys.argv[2:])
