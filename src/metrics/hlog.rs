//! HdrHistogram files for other tools: the interval log (`.hlog`, one tagged
//! histogram per shard and stage per interval) and the end-of-run percentile
//! spectrum (`.hgrm`).
//!
//! Both follow what HdrHistogram's Java `HistogramLogWriter` and
//! `outputPercentileDistribution` write, because that is what other readers
//! (HistogramLogAnalyzer, the Python `hdrhistogram` package, the online
//! plotter) accept: the log's header lines (format version, `StartTime`,
//! `BaseTime`, the legend), then `Tag=T,start,length,max,HISTF…` lines whose
//! payload is the V2 deflate-compressed encoding (readers in other languages
//! accept only compressed histograms), base64. Values are recorded in ns; the
//! `Interval_Max` column is divided by [`MAX_VALUE_DIVISOR`] (so it reads in
//! ms, as the Java tools expect) and the log states the divisor.

use std::io::{self, Write};

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use super::{ahead_words, OutOfBounds, MAX_TRACKABLE_HUMAN};

/// The `Interval_Max` column is the interval's max in ns divided by this (ms).
pub const MAX_VALUE_DIVISOR: f64 = 1_000_000.0;
/// The `.hgrm` values are ns divided by this (ms), as the Java tools print them.
pub const HGRM_UNIT_RATIO: f64 = 1_000_000.0;
/// The interval log format version the Java writer states.
pub const LOG_FORMAT_VERSION: &str = "1.3";

/// Errors writing a histogram file.
#[derive(Debug, thiserror::Error)]
pub enum HlogError {
    #[error("writing {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("encoding a histogram: {0}")]
    Encode(String),
    #[error("`{0}` is not a valid tag (no commas, spaces or newlines)")]
    Tag(String),
}

/// What a clamped count means, in the files' words.
fn clamped_words(n: u64) -> String {
    let (these, were) = if n == 1 { ("latency", "was") } else { ("latencies", "were") };
    format!("{these} above {MAX_TRACKABLE_HUMAN} {were} recorded as {MAX_TRACKABLE_HUMAN}, the highest value tracked")
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> HlogError {
    move |source| HlogError::Io { what, source }
}

/// An interval log being written.
pub struct HlogWriter<W: Write> {
    out: W,
    serializer: V2DeflateSerializer,
    buf: Vec<u8>,
    text: String,
    base_ns: u64,
    /// Bytes handed to `out` so far, the header's included.
    written: u64,
}

impl<W: Write> HlogWriter<W> {
    /// Write the header: a comment saying what the log holds, the format
    /// version, `StartTime` and `BaseTime` (both `start_ns` cut to the ms, as
    /// the UTC stamp beside it is; interval timestamps are seconds since it),
    /// the divisor and the legend.
    pub fn new(mut out: W, start_ns: u64, comment: &str) -> Result<Self, HlogError> {
        // To the ms, cut as the UTC stamp beside it and a closed file's name are cut (not
        // rounded): a run that finds this file again names it as its rotation would have.
        let secs = format!("{}.{:03}", start_ns / 1_000_000_000, start_ns / 1_000_000 % 1000);
        let mut head = String::new();
        for line in comment.lines() {
            head.push_str(&format!("#{line}\n"));
        }
        head.push_str(&format!("#[Histogram log format version {LOG_FORMAT_VERSION}]\n"));
        head.push_str(&format!(
            "#[StartTime: {secs} (seconds since epoch), {}]\n",
            crate::clock::utc_iso8601(start_ns)
        ));
        head.push_str(&format!("#[BaseTime: {secs} (seconds since epoch)]\n"));
        head.push_str(&format!("#[MaxValueDivisor: {MAX_VALUE_DIVISOR:.3}]\n"));
        head.push_str("\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n");
        out.write_all(head.as_bytes()).map_err(io_err("the interval log header"))?;
        Ok(HlogWriter {
            out,
            serializer: V2DeflateSerializer::new(),
            buf: Vec::new(),
            text: String::new(),
            // The BaseTime as written: a reader adds each line's seconds to it.
            base_ns: start_ns / 1_000_000 * 1_000_000,
            written: head.len() as u64,
        })
    }

    /// One interval histogram `[start_ns, end_ns)` tagged `tag`.
    pub fn write(&mut self, tag: &str, start_ns: u64, end_ns: u64, h: &Histogram<u64>) -> Result<(), HlogError> {
        if tag.is_empty() || tag.contains([',', ' ', '\n', '\r']) {
            return Err(HlogError::Tag(tag.to_string()));
        }
        self.buf.clear();
        self.serializer.serialize(h, &mut self.buf).map_err(|e| HlogError::Encode(format!("{e:?}")))?;
        self.text.clear();
        let start = start_ns.saturating_sub(self.base_ns) as f64 / 1e9;
        let length = end_ns.saturating_sub(start_ns) as f64 / 1e9;
        let max = if h.is_empty() { 0.0 } else { h.max() as f64 / MAX_VALUE_DIVISOR };
        self.text.push_str(&format!("Tag={tag},{start:.3},{length:.3},{max:.3},"));
        base64::engine::general_purpose::STANDARD.encode_string(&self.buf, &mut self.text);
        self.text.push('\n');
        self.out.write_all(self.text.as_bytes()).map_err(io_err("an interval histogram"))?;
        self.written += self.text.len() as u64;
        Ok(())
    }

    /// Comment lines after `tag`'s histogram of the interval starting at `start_ns`, for what it
    /// holds at a bound (none when `b` counts nothing): `#[Clamped …]` when `b.clamped` of its
    /// latencies were above [`MAX_TRACKABLE_NS`](super::MAX_TRACKABLE_NS) and are in it as that
    /// bound, so its top bin and `Interval_Max` read low; `#[Ahead …]` when `b.ahead` were below
    /// 0 and are in it as 1 ns. Readers skip `#` lines (Java's and Python's `HistogramLogReader`
    /// read only `#[StartTime` and `#[BaseTime` of them).
    pub fn note_out_of_bounds(&mut self, tag: &str, start_ns: u64, b: OutOfBounds) -> Result<(), HlogError> {
        let start = start_ns.saturating_sub(self.base_ns) as f64 / 1e9;
        let mut lines = String::new();
        if b.clamped > 0 {
            let n = b.clamped;
            lines.push_str(&format!(
                "#[Clamped: Tag={tag},StartTimestamp={start:.3},Count={n} ({})]\n",
                clamped_words(n)
            ));
        }
        if b.ahead > 0 {
            let n = b.ahead;
            lines.push_str(&format!("#[Ahead: Tag={tag},StartTimestamp={start:.3},Count={n} ({})]\n", ahead_words(&b)));
        }
        self.out.write_all(lines.as_bytes()).map_err(io_err("an interval histogram"))?;
        self.written += lines.len() as u64;
        Ok(())
    }

    /// Bytes written so far (to the writer: a buffered one holds some until [`flush`](Self::flush)).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flush what was written to the file.
    pub fn flush(&mut self) -> Result<(), HlogError> {
        self.out.flush().map_err(io_err("the interval log"))
    }
}

/// Write `h`'s percentile spectrum as HdrHistogram's Java
/// `outputPercentileDistribution` does (5 ticks per half distance, values
/// divided by [`HGRM_UNIT_RATIO`]): the column header, one row per step
/// (`Value Percentile TotalCount 1/(1-Percentile)`), and the footer lines
/// (`#[Mean …, StdDeviation …]`, `#[Max …, Total count …]`, `#[Buckets …,
/// SubBuckets …]`) that plotting tools read; then, when `b.clamped` of the values were above
/// [`MAX_TRACKABLE_NS`](super::MAX_TRACKABLE_NS) (and are in `h` as that bound), a `#[Clamped …]` line saying so,
/// and when `b.ahead` were below 0 (in `h` as 1 ns), an `#[Ahead …]` line.
pub fn write_hgrm<W: Write>(mut out: W, h: &Histogram<u64>, b: OutOfBounds) -> Result<(), HlogError> {
    use std::fmt::Write as _;
    let d = usize::from(h.sigfig());
    let r = HGRM_UNIT_RATIO;
    let mut s = String::new();
    let _ = write!(s, "{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / r;
            if q < 1.0 {
                let _ = writeln!(s, "{value:>12.d$} {q:>2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(s, "{value:>12.d$} {q:>2.12} {total:>10}");
            }
        }
    }
    let (mean, sd, max) =
        if h.is_empty() { (0.0, 0.0, 0.0) } else { (h.mean() / r, h.stdev() / r, h.max() as f64 / r) };
    let sub_buckets = 2u64.pow((2.0 * 10f64.powi(d as i32)).log2().ceil() as u32);
    let _ = writeln!(s, "#[Mean    = {mean:>12.d$}, StdDeviation   = {sd:>12.d$}]");
    let _ = writeln!(s, "#[Max     = {max:>12.d$}, Total count    = {:>12}]", h.len());
    let _ = writeln!(s, "#[Buckets = {:>12}, SubBuckets     = {sub_buckets:>12}]", h.buckets());
    if b.clamped > 0 {
        let _ = writeln!(s, "#[Clamped = {:>12} ({})]", b.clamped, clamped_words(b.clamped));
    }
    if b.ahead > 0 {
        let _ = writeln!(s, "#[Ahead   = {:>12} ({})]", b.ahead, ahead_words(&b));
    }
    out.write_all(s.as_bytes()).map_err(io_err("the percentile spectrum"))?;
    out.flush().map_err(io_err("the percentile spectrum"))
}

/// What an earlier run left at `--hgrm FILE`, judged by its first bytes
/// ([`crate::outfile::judge_earlier`]): a percentile spectrum ([`write_hgrm`]'s, or HdrHistogram's
/// `outputPercentileDistribution`, in its text or its CSV form: its first line is the column
/// header, `Value Percentile TotalCount …` or `"Value","Percentile","TotalCount",…`) is kept,
/// named by the file's modification time (a spectrum says no start: that is when it was last
/// written, the end of its run); blank lines only are nothing to lose; anything else is not one.
/// The CSV form was refused as not a spectrum, though HdrHistogram's own tools write it.
pub fn earlier_hgrm(head: &[u8], whole: bool) -> Result<crate::outfile::Earlier, String> {
    let text = String::from_utf8_lossy(head);
    let Some(first) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return match whole {
            true => Ok(crate::outfile::Earlier::Nothing),
            false => Err("no column header in its first 64 KiB".into()),
        };
    };
    let columns = ["Value", "Percentile", "TotalCount"];
    let csv = first.split(',').map(|c| c.trim().trim_matches('"')).take(3);
    if first.split_whitespace().take(3).eq(columns) || csv.eq(columns) {
        Ok(crate::outfile::Earlier::Keep(None))
    } else {
        let shown: String = first.chars().take(40).collect();
        Err(format!("its first line is not the column header `Value Percentile TotalCount …`: {shown:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;

    fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, super::super::MAX_TRACKABLE_NS, 3).expect("bounds");
        for v in values {
            h.record(v).expect("in range");
        }
        h
    }

    /// An earlier spectrum is kept in either form HdrHistogram writes: text (mdsub's) or CSV
    /// (`outputPercentileDistribution(…, useCsvFormat = true)`). The CSV form was refused.
    #[test]
    fn an_earlier_spectrum_is_kept_as_text_or_csv_and_anything_else_is_not_one() {
        use crate::outfile::Earlier;
        let mut text = Vec::new();
        write_hgrm(&mut text, &hist(1..=100u64), Default::default()).expect("spectrum");
        let csv = b"\"Value\",\"Percentile\",\"TotalCount\",\"1/(1-Percentile)\"\n1.000,0.000000000000,1,1.00\n";
        for (head, kept) in [(&text[..], true), (&csv[..], true), (b"Value,Percentile\n", false), (b"notes\n", false)] {
            assert_eq!(
                earlier_hgrm(head, true).ok(),
                kept.then_some(Earlier::Keep(None)),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        assert_eq!(earlier_hgrm(b"\n \n", true).ok(), Some(Earlier::Nothing));
    }

    #[test]
    fn log_has_the_java_header_and_decodable_lines() {
        let mut out = Vec::new();
        let start = 1_700_000_000_000_000_000;
        let mut w = HlogWriter::new(&mut out, start, "mdsub test").expect("header");
        let h = hist(1..=1000u64);
        w.write("shard0.total", start, start + 1_000_000_000, &h).expect("line");
        assert!(matches!(w.write("a b", start, start, &h), Err(HlogError::Tag(_))));
        w.flush().expect("flush");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#mdsub test");
        assert_eq!(lines[1], "#[Histogram log format version 1.3]");
        assert!(lines[2].starts_with("#[StartTime: 1700000000.000 (seconds since epoch), 2023-11-14T"), "{}", lines[2]);
        assert_eq!(lines[3], "#[BaseTime: 1700000000.000 (seconds since epoch)]");
        assert_eq!(lines[4], "#[MaxValueDivisor: 1000000.000]");
        assert!(lines[5].starts_with("\"StartTimestamp\""));
        let row = lines[6].strip_prefix("Tag=shard0.total,0.000,1.000,0.001,").expect("row prefix");
        assert!(row.starts_with("HISTF"), "V2 compressed payloads start HISTF: {row}");
        let bytes = base64::engine::general_purpose::STANDARD.decode(row).expect("base64");
        let back: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).expect("decodes");
        assert_eq!((back.len(), back.value_at_quantile(0.99)), (h.len(), h.value_at_quantile(0.99)));
    }

    #[test]
    fn hgrm_has_rows_and_both_footers() {
        let mut out = Vec::new();
        write_hgrm(&mut out, &hist((1..=100u64).map(|v| v * 1_000_000)), OutOfBounds::default()).expect("written");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"), "{text}");
        // Values print at their bin's highest equivalent (3 significant digits).
        assert!(text.contains("#[Mean    =       50.499, StdDeviation   =       28.866]"), "{text}");
        assert!(text.contains("#[Max     =      100.008, Total count    =          100]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        let last = text.lines().rfind(|l| !l.starts_with('#') && !l.is_empty()).expect("rows");
        let cols: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(cols, ["100.008", "1.000000000000", "100"], "the 100% row has no 1/(1-p)");
        assert!(!text.contains("Clamped"), "nothing clamped, nothing said: {text}");
        let mut empty = Vec::new();
        write_hgrm(&mut empty, &hist([]), OutOfBounds::default())
            .expect("an empty spectrum is still a file with footers");
        assert!(String::from_utf8(empty).expect("utf8").contains("Total count    =            0]"));
    }

    #[test]
    fn clamped_latencies_are_noted_in_both_files() {
        let mut h = hist([1_000_000]);
        h.record_n(super::super::MAX_TRACKABLE_NS, 3).expect("the bound is in range");
        let mut out = Vec::new();
        write_hgrm(&mut out, &h, OutOfBounds { clamped: 3, ..Default::default() }).expect("written");
        let text = String::from_utf8(out).expect("utf8");
        let last = text.lines().last().expect("lines");
        assert_eq!(
            last,
            "#[Clamped =            3 (latencies above 60 s were recorded as 60 s, the highest value tracked)]"
        );

        let mut out = Vec::new();
        let start = 1_700_000_000_000_000_000;
        let mut w = HlogWriter::new(&mut out, start, "mdsub test").expect("header");
        w.write("shard0.queue", start + 2_000_000_000, start + 3_000_000_000, &h).expect("line");
        w.note_out_of_bounds("shard0.queue", start + 2_000_000_000, OutOfBounds { clamped: 1, ..Default::default() })
            .expect("note");
        w.note_out_of_bounds("shard0.queue", start + 2_000_000_000, OutOfBounds::default()).expect("nothing to note");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        // The top bin reads back as its highest equivalent value.
        assert!(lines[6].starts_with("Tag=shard0.queue,2.000,1.000,60028.879,HISTF"), "{}", lines[6]);
        assert_eq!(
            lines[7],
            "#[Clamped: Tag=shard0.queue,StartTimestamp=2.000,Count=1 (latency above 60 s was recorded as 60 s, \
             the highest value tracked)]"
        );
        assert_eq!(lines.len(), 8, "nothing out of bounds, nothing said: {text}");
    }

    /// Send times ahead of this host's clock: the latencies are in the histograms as 1 ns, and
    /// both files say how many and by how much (before: 1 ns with no word).
    #[test]
    fn latencies_below_zero_are_noted_in_both_files() {
        let mut h = hist([1_000_000]);
        h.record_n(1, 2).expect("1 ns is in range");
        let b = OutOfBounds { clamped: 1, ahead: 2, ahead_max_ns: 30_000_000_000 };
        let mut out = Vec::new();
        write_hgrm(&mut out, &h, b).expect("written");
        let text = String::from_utf8(out).expect("utf8");
        let tail: Vec<&str> = text.lines().rev().take(2).collect();
        assert_eq!(
            tail,
            [
                "#[Ahead   =            2 (latencies below 0, down to -30.00s, were recorded as 1 ns: a send time \
                 ahead of this host's clock, or this clock stepped back)]",
                "#[Clamped =            1 (latency above 60 s was recorded as 60 s, the highest value tracked)]",
            ]
        );
        let mut out = Vec::new();
        let start = 1_700_000_000_000_000_000;
        let mut w = HlogWriter::new(&mut out, start, "mdsub test").expect("header");
        w.write("shard0.wire", start, start + 1_000_000_000, &h).expect("line");
        w.note_out_of_bounds("shard0.wire", start, OutOfBounds { ahead: 1, ahead_max_ns: 4_100, ..b }).expect("note");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[7].starts_with("#[Clamped: Tag=shard0.wire,StartTimestamp=0.000,Count=1 "), "{text}");
        assert_eq!(
            lines[8],
            "#[Ahead: Tag=shard0.wire,StartTimestamp=0.000,Count=1 (latency below 0, at -4.1µs, was recorded as 1 ns: \
             a send time ahead of this host's clock, or this clock stepped back)]"
        );
    }
}
