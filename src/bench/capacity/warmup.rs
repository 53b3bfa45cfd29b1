//! The warm-up's end marked in a trial run's interval log (`.hlog`).
//!
//! The engine logs from its start, so a run's `.hlog` holds the warm-up as well as the hold,
//! while its `.hgrm` and the summary hold only the hold: read whole, the log disagreed with them
//! (p99 6.23 ms against 1.99 ms on one passing trial) and nothing in it said why. Once the run is
//! over, its intervals that are all warm-up get the tag `warmup.TAG` (`warmup.shard0.total`), so
//! a reader that takes a tag (`shard0.total`) takes only the hold, and one `#[Warm-up end: …]`
//! comment line, where the warm-up ends, says when (seconds after the log's `BaseTime`, as the
//! interval lines count) and how many messages it had. HdrHistogram's log readers (Java's and
//! Python's `HistogramLogReader`) keep every line's `Tag=` and skip `#` lines.
//!
//! Where the warm-up ended is read from the counts, not from a clock: the run's warm-up is the
//! total stage's cumulative histogram at the worker report that reached the warm-up's count, and
//! the collector ends the interval being logged at that report
//! ([`Cut`](crate::metrics::collector::Cut)), so the warm-up's count (the log's total less the
//! hold's) ends at the end of an interval: the intervals after it hold exactly the hold, and add
//! up to the run's `.hgrm` and the summary's percentiles. (An interval the warm-up ended inside,
//! in a log not cut so, keeps its hold tag, and the comment says how many of its messages were
//! the warm-up's: the hold's intervals then disagreed with the summary, p99 7.34 ms against
//! 305 µs on one trial.)

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;

/// Put before the tag of an interval that is all warm-up.
pub const TAG_PREFIX: &str = "warmup.";

/// One interval of the log: its start and length as written (seconds after `BaseTime`), the
/// messages its total-stage histograms count over every slot, and its lines' range in the log.
struct Interval<'a> {
    start: &'a str,
    length: &'a str,
    count: u64,
    lines: std::ops::Range<usize>,
}

/// `Tag=TAG,START,LENGTH,MAX,PAYLOAD` → (TAG, START, LENGTH, PAYLOAD).
fn interval_line(line: &str) -> Option<(&str, &str, &str, &str)> {
    let rest = line.strip_prefix("Tag=")?;
    let mut f = rest.trim_end().splitn(5, ',');
    Some((f.next()?, f.next()?, f.next()?, f.nth(1)?))
}

/// `#[Clamped: Tag=TAG,StartTimestamp=START,…` or `#[Ahead: …`: a note on the interval at START.
fn note_line(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("#[Clamped: Tag=").or_else(|| line.strip_prefix("#[Ahead: Tag="))?;
    rest.split(',').nth(1)?.strip_prefix("StartTimestamp=")
}

fn count_of(payload: &str) -> Result<u64, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| format!("an interval's histogram is not base64: {e}"))?;
    let h: hdrhistogram::Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("an interval's histogram does not decode: {e:?}"))?;
    Ok(h.len())
}

/// The log `text` with the warm-up marked, given `hold_count`, the messages the run's hold
/// counted (its `.hgrm`'s total). A hold that counted more than the whole log is refused: the
/// log is not the run's, or not whole.
pub fn mark(text: &str, hold_count: u64) -> Result<String, String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut intervals: Vec<Interval<'_>> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let (start, length, payload) = match (interval_line(line), note_line(line)) {
            (Some((tag, start, length, payload)), _) => (start, length, tag.ends_with(".total").then_some(payload)),
            (None, Some(start)) => (start, "", None),
            (None, None) => continue,
        };
        let count = payload.map(count_of).transpose()?.unwrap_or(0);
        match intervals.last_mut() {
            Some(last) if last.start == start => {
                last.count += count;
                last.lines.end = i + 1;
            }
            _ => intervals.push(Interval { start, length, count, lines: i..i + 1 }),
        }
    }
    let total: u64 = intervals.iter().map(|v| v.count).sum();
    let warm = total.checked_sub(hold_count).ok_or_else(|| {
        format!("the hold counted {hold_count} messages, the whole interval log {total}: the log is not whole")
    })?;
    // The intervals that are all warm-up, and what is left of the warm-up after them.
    let (mut whole, mut before) = (0, 0u64);
    while warm > 0 && whole < intervals.len() && before + intervals[whole].count <= warm {
        before += intervals[whole].count;
        whole += 1;
        if before == warm {
            break;
        }
    }
    let seconds = |s: &str| s.parse::<f64>().unwrap_or(0.0);
    let end = match (warm, intervals.get(whole)) {
        (0, _) => "#[Warm-up end: the warm-up delivered no messages: every interval is the hold's]\n".to_string(),
        (_, Some(next)) if before < warm => format!(
            "#[Warm-up end: inside the next interval ({} to {:.3} s after BaseTime): the first {} of its {} \
             messages are the warm-up's last; the intervals before this line, tagged {TAG_PREFIX}*, hold the rest \
             of the warm-up; its {warm} messages are not in the run's .hgrm nor the capacity summary]\n",
            next.start,
            seconds(next.start) + seconds(next.length),
            warm - before,
            next.count
        ),
        _ => format!(
            "#[Warm-up end: {:.3} s after BaseTime; the intervals before this line, tagged {TAG_PREFIX}*, are the \
             warm-up: its {warm} messages are not in the run's .hgrm nor the capacity summary]\n",
            intervals[..whole].last().map_or(0.0, |v| seconds(v.start) + seconds(v.length))
        ),
    };
    let warm_lines = intervals[..whole].last().map_or(0, |v| v.lines.end);
    // Before the hold's first interval; after the last line when the warm-up is all there is.
    let at = intervals.get(whole).map_or(lines.len(), |v| v.lines.start);
    let mut out = String::with_capacity(text.len() + end.len() + 16 * warm_lines);
    for (i, line) in lines.iter().enumerate() {
        if i == at {
            out.push_str(&end);
        }
        let tagged = if i < warm_lines && interval_line(line).is_some() {
            Some(("Tag=", &line[4..]))
        } else if i < warm_lines && note_line(line).is_some() {
            line.find("Tag=").map(|p| (&line[..p + 4], &line[p + 4..]))
        } else {
            None
        };
        match tagged {
            Some((head, rest)) => {
                out.push_str(head);
                out.push_str(TAG_PREFIX);
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
    }
    if at >= lines.len() {
        out.push_str(&end);
    }
    Ok(out)
}

/// [`mark`] the run's log at `path` in place.
pub fn mark_file(path: &Path, hold_count: u64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: reading the interval log to mark its warm-up", path.display()))?;
    let marked = mark(&text, hold_count)
        .map_err(|e| anyhow::anyhow!("{}: marking the interval log's warm-up: {e}", path.display()))?;
    std::fs::write(path, marked)
        .with_context(|| format!("{}: writing the interval log, its warm-up marked", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::hlog::HlogWriter;
    use crate::metrics::OutOfBounds;
    use hdrhistogram::Histogram;

    const S: u64 = 1_000_000_000;

    fn hist(n: u64) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60 * S, 3).expect("bounds");
        for v in 0..n {
            h.record(1000 + v).expect("in range");
        }
        h
    }

    /// A two-shard log of 100 ms intervals with `counts` messages on each shard, a `wire` stage
    /// beside each total and a clamped note on shard0's total of the first interval.
    fn log(counts: &[u64]) -> String {
        let base = 1_700_000_000 * S;
        let mut buf = Vec::new();
        let mut w = HlogWriter::new(&mut buf, base, "[test]").expect("header");
        for (i, &n) in counts.iter().enumerate() {
            let (a, b) = (base + i as u64 * S / 10, base + (i as u64 + 1) * S / 10);
            for shard in ["shard0", "shard1"] {
                w.write(&format!("{shard}.wire"), a, b, &hist(n)).expect("wire");
                w.write(&format!("{shard}.total"), a, b, &hist(n)).expect("total");
                if i == 0 && shard == "shard0" {
                    let b = OutOfBounds { clamped: 1, ..Default::default() };
                    w.note_out_of_bounds("shard0.total", a, b).expect("note");
                }
            }
        }
        w.flush().expect("flush");
        drop(w);
        String::from_utf8(buf).expect("utf8")
    }

    fn tags(text: &str) -> Vec<String> {
        text.lines().filter_map(interval_line).filter(|l| l.0.ends_with("total")).map(|l| l.0.to_string()).collect()
    }

    #[test]
    fn the_intervals_before_the_warm_up_end_are_tagged_and_the_end_is_said_there() {
        // 3 intervals of 2 x 10: a hold of 20 leaves a warm-up of the first two, ending at 0.2 s.
        let text = log(&[10, 10, 10]);
        let marked = mark(&text, 20).expect("marked");
        assert_eq!(
            tags(&marked),
            ["warmup.shard0.total", "warmup.shard1.total", "warmup.shard0.total", "warmup.shard1.total"]
                .into_iter()
                .chain(["shard0.total", "shard1.total"])
                .collect::<Vec<_>>()
        );
        assert!(marked.contains("#[Clamped: Tag=warmup.shard0.total,StartTimestamp=0.000,"), "{marked}");
        let end =
            marked.lines().position(|l| l.starts_with("#[Warm-up end: 0.200 s after BaseTime;")).expect("{marked}");
        let next = marked.lines().position(|l| l.starts_with("Tag=shard0.wire,0.200,")).expect("the hold's first");
        assert_eq!(end + 1, next, "said where it ends: {marked}");
        assert!(marked.contains("its 40 messages are not in the run's .hgrm"), "{marked}");
        // Everything else as it was.
        assert_eq!(
            marked.replace("warmup.", "").lines().filter(|l| !l.starts_with("#[Warm-up")).count(),
            text.lines().count()
        );
    }

    #[test]
    fn a_warm_up_that_ends_inside_an_interval_says_how_much_of_it_is_warm_up() {
        // Warm-up of 50: the first two intervals (40) and 10 of the third's 20.
        let marked = mark(&log(&[10, 10, 10, 10]), 30).expect("marked");
        assert_eq!(tags(&marked).iter().filter(|t| t.starts_with("warmup.")).count(), 4, "{marked}");
        assert!(
            marked.contains(
                "#[Warm-up end: inside the next interval (0.200 to 0.300 s after BaseTime): the first 10 of its 20 \
                 messages are the warm-up's last;"
            ),
            "{marked}"
        );
        assert!(marked.contains("its 50 messages are not in the run's .hgrm"), "{marked}");
    }

    #[test]
    fn no_warm_up_and_an_all_warm_up_log_and_a_log_short_of_the_hold() {
        let none = mark(&log(&[10, 10]), 40).expect("marked");
        assert!(tags(&none).iter().all(|t| !t.starts_with("warmup.")), "{none}");
        assert!(none.contains("#[Warm-up end: the warm-up delivered no messages"), "{none}");
        let all = mark(&log(&[10, 10]), 0).expect("marked");
        assert!(tags(&all).iter().all(|t| t.starts_with("warmup.")), "{all}");
        assert!(all.trim_end().ends_with("the capacity summary]"), "said at the end: {all}");
        let short = mark(&log(&[10]), 21).expect_err("more held than logged");
        assert!(short.contains("the hold counted 21 messages, the whole interval log 20"), "{short}");
    }
}
