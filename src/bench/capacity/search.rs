//! The capacity search, socket-free: the pass rule and the rate finder
//! (bracket by doubling, bisect to a tolerance, confirm below the knee,
//! reopen on a failed confirmation) as a state machine fed with trial
//! results.
//!
//! The method is the one load-testing tools share (RFC 2544's binary search,
//! wrk2 and Aeron's LoadTestRig's open-loop schedule, JLBH's warm-up, the
//! OpenMessaging benchmark's rate finder): a trial offers a fixed rate on an
//! open-loop schedule (latency from the intended send time), it passes when
//! the publisher achieved the rate, nothing was lost and every SLA
//! percentile is within budget. A trial whose publisher fell short is
//! "rate not achieved": it bounds what this load generator can test, never
//! the engine. [`Search`] asks for rates ([`Search::next`]) and takes each
//! trial's [`Verdict`] ([`Search::on_result`]); the shell runs the trials.

use serde::{Deserialize, Serialize};

/// A latency budget: the `quantile` (0.99 = p99; 1.0 = max) must stay at or below `budget_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlaPoint {
    pub quantile: f64,
    pub budget_ns: u64,
}

impl SlaPoint {
    /// `p99`, `p99.9`, `p50`, `max`.
    pub fn name(&self) -> String {
        quantile_name(self.quantile)
    }
}

/// `p50`, `p99`, `p99.9`, `max` for 0.5, 0.99, 0.999, 1.0.
pub fn quantile_name(q: f64) -> String {
    if q >= 1.0 {
        return "max".into();
    }
    let pct = format!("{:.4}", q * 100.0);
    format!("p{}", pct.trim_end_matches('0').trim_end_matches('.'))
}

/// Parse `p99`, `p99.9`, `p50`, `max` into a quantile.
pub fn parse_quantile(s: &str) -> Result<f64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") || t.eq_ignore_ascii_case("p100") {
        return Ok(1.0);
    }
    match t.strip_prefix(['p', 'P']).map(str::parse::<f64>) {
        // Rounded, so `p99.9` is exactly the 0.999 the reports use.
        Some(Ok(v)) if v > 0.0 && v < 100.0 => Ok((v * 1e8).round() / 1e10),
        _ => Err("not a percentile; write p50, p99, p99.9 or max".into()),
    }
}

/// The pass rule: the SLA percentiles, the loss allowed and the share of the
/// offered rate the publisher must achieve.
#[derive(Debug, Clone, Serialize)]
pub struct Sla {
    pub points: Vec<SlaPoint>,
    /// Messages a trial may lose (0 by default: nothing lost).
    pub loss_budget_msgs: u64,
    /// Achieved / offered below this is "rate not achieved" (0.95).
    pub min_achieved_ratio: f64,
}

impl Default for Sla {
    fn default() -> Self {
        Sla { points: Vec::new(), loss_budget_msgs: 0, min_achieved_ratio: 0.95 }
    }
}

/// What one run of a trial measured (the hold only, warm-up excluded).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunMeasure {
    /// The rate offered (msg/s).
    pub offered: u64,
    /// What the publisher achieved (msg/s).
    pub achieved: f64,
    /// Messages lost (sent minus delivered by the end-of-stream counts); None when unknown
    /// (end of stream not seen, the engine did not drain).
    pub lost: Option<u64>,
    /// Sequence gaps seen.
    pub gaps: u64,
    /// Latency at each quantile asked for (quantile, ns), ascending; 1.0 is the max.
    pub latency_ns: Vec<(f64, u64)>,
    /// Messages in the held histogram.
    pub count: u64,
    /// Why the run could not be judged at all (engine error, croak), if so.
    pub error: Option<String>,
}

/// The latency at `q` in `latency_ns` (quantile, ns) ascending: the nearest
/// quantile measured at or above it.
fn latency_at(latency_ns: &[(f64, u64)], q: f64) -> Option<u64> {
    latency_ns.iter().find(|(k, _)| *k >= q - 1e-12).map(|&(_, v)| v)
}

impl RunMeasure {
    /// The latency at `q` (the nearest quantile measured at or above it).
    pub fn at(&self, q: f64) -> Option<u64> {
        latency_at(&self.latency_ns, q)
    }
}

/// A trial's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    /// The engine failed the rule: each reason (loss, a percentile over budget, an error).
    Fail {
        reasons: Vec<String>,
    },
    /// The publisher achieved less than the rule's share of the offered rate:
    /// the trial says nothing about the engine at this rate.
    RateNotAchieved {
        achieved: f64,
    },
}

impl Verdict {
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
    /// One word for tables.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail { .. } => "FAIL",
            Verdict::RateNotAchieved { .. } => "rate not achieved",
        }
    }
}

/// A trial: its runs summarised (medians) and judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialSummary {
    pub offered: u64,
    /// Median achieved rate over the runs.
    pub achieved: f64,
    /// Lost messages summed over the runs (None if any run's loss is unknown).
    pub lost: Option<u64>,
    pub gaps: u64,
    /// Median latency per quantile over the runs.
    pub latency_ns: Vec<(f64, u64)>,
    /// Per quantile: (lowest, highest) over the runs — the spread.
    pub spread_ns: Vec<(f64, u64, u64)>,
    pub runs: usize,
    pub verdict: Verdict,
}

impl TrialSummary {
    /// Median latency at `q`.
    pub fn at(&self, q: f64) -> Option<u64> {
        latency_at(&self.latency_ns, q)
    }
}

/// Summarise a trial's runs and judge it. The publisher's shortfall is
/// judged first: when it did not achieve the rate, the engine was not
/// offered it and nothing else about the trial counts.
pub fn judge(runs: &[RunMeasure], sla: &Sla) -> TrialSummary {
    let offered = runs.first().map_or(0, |r| r.offered);
    let achieved = super::super::median(runs.iter().map(|r| r.achieved).collect());
    let lost = runs.iter().try_fold(0u64, |acc, r| r.lost.map(|l| acc + l));
    let gaps = runs.iter().map(|r| r.gaps).sum();
    let mut quantiles: Vec<f64> = runs.iter().flat_map(|r| r.latency_ns.iter().map(|(q, _)| *q)).collect();
    quantiles.sort_by(|a, b| a.total_cmp(b));
    quantiles.dedup();
    let mut latency_ns = Vec::new();
    let mut spread_ns = Vec::new();
    for &q in &quantiles {
        let vals: Vec<u64> = runs.iter().filter_map(|r| r.at(q)).collect();
        if vals.is_empty() {
            continue;
        }
        latency_ns.push((q, super::super::median(vals.clone())));
        spread_ns.push((q, *vals.iter().min().unwrap_or(&0), *vals.iter().max().unwrap_or(&0)));
    }
    let mut reasons: Vec<String> = runs.iter().filter_map(|r| r.error.clone()).collect();
    let verdict = if reasons.is_empty() && offered > 0 && achieved < sla.min_achieved_ratio * offered as f64 {
        Verdict::RateNotAchieved { achieved }
    } else {
        match lost {
            None => reasons.push("loss unknown (end of stream not seen)".into()),
            Some(l) if l > sla.loss_budget_msgs => reasons.push(format!("lost {l} msgs")),
            Some(_) => {}
        }
        if gaps > 0 && sla.loss_budget_msgs == 0 {
            reasons.push(format!("{gaps} sequence gaps"));
        }
        for p in &sla.points {
            match latency_ns.iter().find(|(k, _)| (*k - p.quantile).abs() < 1e-12) {
                Some(&(_, v)) if v <= p.budget_ns => {}
                Some(&(_, v)) => reasons.push(format!(
                    "{} {} over {}",
                    p.name(),
                    crate::diag::human_ns(v),
                    crate::diag::human_ns(p.budget_ns)
                )),
                None => reasons.push(format!("{} not measured", p.name())),
            }
        }
        if reasons.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail { reasons }
        }
    };
    TrialSummary { offered, achieved, lost, gaps, latency_ns, spread_ns, runs: runs.len(), verdict }
}

/// The lowest rate the search offers (msg/s): halving ends with it (a half below it offers it
/// instead), and `--start-rate` and `--max-rate` are refused below it.
pub const MIN_RATE: u64 = 100;

/// Search settings.
#[derive(Debug, Clone, Serialize)]
pub struct SearchConfig {
    /// The first rate tried (msg/s).
    pub start_rate: u64,
    /// Stop bisecting when (fail − pass) ≤ tolerance × pass (0.05).
    pub tolerance: f64,
    /// The confirmation trial runs at this share of the knee (0.95).
    pub confirm_factor: f64,
    /// Never offer more than this (msg/s).
    pub max_rate: Option<u64>,
    /// Halve down to this (the last rate tried) when even the start rate fails.
    pub min_rate: u64,
    /// Reopenings after failed confirmations before giving up on confirming.
    pub max_reopens: usize,
    /// A rate known to fail above the start (`--failed-at`: the run this one carries on failed
    /// it): the bracket's upper end from the start, never offered again. Dropped once a rate at
    /// or above it passes here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<u64>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            start_rate: 10_000,
            tolerance: 0.05,
            confirm_factor: 0.95,
            max_rate: None,
            min_rate: MIN_RATE,
            max_reopens: 2,
            failed_at: None,
        }
    }
}

/// Why a trial is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// Doubling up (or halving down) to bracket the knee.
    Bracket,
    /// Between the highest pass and the lowest fail.
    Bisect,
    /// At `confirm_factor` × the knee.
    Confirm,
}

impl Purpose {
    /// The name a person reads (and the JSON's): `bracket`, `bisect`, `confirm`.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Bracket => "bracket",
            Purpose::Bisect => "bisect",
            Purpose::Confirm => "confirm",
        }
    }
}

/// What the search wants next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Trial { rate: u64, purpose: Purpose },
    Done,
}

/// Two results that contradict a monotonic engine: a pass above a failure (per failure, the
/// highest pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contradiction {
    pub passed_at: u64,
    pub failed_at: u64,
}

/// A rate the run a search carries on found failing (`--failed-at`), as summary.json says it
/// ([`Outcome::known_failure`]): no trial of this run's is at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownFailure {
    /// The rate, msg/s.
    pub rate: u64,
    /// The lowest rate at or above it that passed here, which dropped it: absent while it counts
    /// as this search's failure (in `lowest_fail`, `failed_above`, `bracket_above`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dropped_by_pass_at: Option<u64>,
    /// The maximum rate (`--max-rate`) it is above: the search offers nothing there, so it bounds
    /// nothing and never counts as this search's failure (not in `lowest_fail`, `failed_above`,
    /// `bracket_above`; before, it was in all three, and summary.md called it a failure above the
    /// knee of a search that ended with the maximum rate passed). Absent at or below the maximum.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub above_max_rate: Option<u64>,
}

/// How a search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// Bracketed, bisected to the tolerance and confirmed.
    Confirmed,
    /// The confirmation kept failing after every reopening: the knee is unconfirmed (none when
    /// no rate below the failed confirmation passed: halved down to the lowest rate, every one
    /// failed, and the pass above them is contradicted).
    Unconfirmed,
    /// Even the lowest rate tried failed: no knee.
    NoPass,
    /// The publisher could not offer more: the knee is at least the highest pass
    /// (a bound of the load generator, not the engine's limit).
    PublisherLimited,
    /// The maximum rate passed: the knee is above it.
    AboveMaxRate,
    /// The time cap ended the search early (with no knee unless a rate above the highest pass
    /// had already failed: see [`Outcome::at_least`]).
    Capped,
    /// A stop (Ctrl-C, SIGTERM) ended the search early.
    Interrupted,
    /// A trial could not run (a file, a socket: the harness, not the engine under test), which
    /// ended the whole run.
    Failed,
}

/// The search's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// The highest rate that passed and (with [`Ending::Confirmed`]) whose
    /// 0.95× confirmation passed too. A search stopped early (the time cap, Ctrl-C, a trial
    /// that could not run) has one only when a rate above that pass had failed (or was not
    /// achieved): before, its highest pass is [`Outcome::at_least`], not a knee.
    pub knee: Option<u64>,
    /// A search stopped early before any rate above its highest pass failed: that pass, a
    /// lower bound of the knee ("at least N msg/s"), which is no knee and wins nothing.
    pub at_least: Option<u64>,
    pub ending: Ending,
    /// The lowest rate that failed the engine's rule.
    pub lowest_fail: Option<u64>,
    /// The lowest rate the publisher did not achieve.
    pub rate_not_achieved_at: Option<u64>,
    /// The confirmation trial's rate, if it passed.
    pub confirmed_at: Option<u64>,
    /// The lowest rate above the knee (above the highest pass when there is no knee; any rate
    /// when nothing passed) that failed the engine's rule: the engine's limit is below it. None
    /// when nothing there failed (the maximum rate passed, only the publisher fell short above
    /// the knee, the search stopped first): the limit may be any higher.
    pub failed_above: Option<u64>,
    /// The lowest rate above the knee that failed or was not achieved: the upper end of the
    /// bracket the knee was bisected in.
    pub bracket_above: Option<u64>,
    /// The knee is found to the tolerance: `bracket_above` is within `tolerance` of it (or the
    /// knee is the maximum rate). A search stopped early may have a knee it had not narrowed.
    pub narrowed: bool,
    pub contradictions: Vec<Contradiction>,
    /// Each knee the search found whose 0.95x confirmation then failed, in the order tried: the
    /// knee as `passed_at`, its confirmation as `failed_at`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub failed_confirmations: Vec<Contradiction>,
    /// The rate `--failed-at` gave this search: it failed in the run carried on, and it is not
    /// offered again, so no trial row is at it. Before, only summary.md said so: a tool reading
    /// summary.json saw `lowest_fail` at a rate no trial had failed. Absent without one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub known_failure: Option<KnownFailure>,
    pub trials: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Up,
    Down,
    Bisect,
    Confirm,
    Done(Ending),
}

/// The rate finder: call [`Search::next`], run that trial, give its verdict
/// to [`Search::on_result`], until `next` says [`Next::Done`].
#[derive(Debug, Clone)]
pub struct Search {
    cfg: SearchConfig,
    phase: Phase,
    /// Highest pass (below the lowest fail while bisecting).
    lo: Option<u64>,
    /// Lowest fail or rate-not-achieved (the upper end of the bracket).
    hi: Option<u64>,
    next_rate: u64,
    history: Vec<(u64, Purpose, Verdict)>,
    reopens: usize,
    failed_confirmations: Vec<Contradiction>,
    confirmed_at: Option<u64>,
}

impl Search {
    pub fn new(cfg: SearchConfig) -> Search {
        let start = cfg.start_rate.max(cfg.min_rate).max(1);
        let start = cfg.max_rate.map_or(start, |m| start.min(m));
        Search {
            cfg,
            phase: Phase::Up,
            lo: None,
            hi: None,
            next_rate: start,
            history: Vec::new(),
            reopens: 0,
            failed_confirmations: Vec::new(),
            confirmed_at: None,
        }
    }

    /// The trial to run next, or done.
    pub fn next(&self) -> Next {
        let purpose = match self.phase {
            Phase::Done(_) => return Next::Done,
            Phase::Up | Phase::Down => Purpose::Bracket,
            Phase::Bisect => Purpose::Bisect,
            Phase::Confirm => Purpose::Confirm,
        };
        Next::Trial { rate: self.next_rate, purpose }
    }

    /// Every trial so far: rate, purpose, verdict.
    pub fn history(&self) -> &[(u64, Purpose, Verdict)] {
        &self.history
    }

    /// Stop where the search is: the time cap.
    pub fn cap(&mut self) {
        self.end_early(Ending::Capped);
    }

    /// Stop where the search is: Ctrl-C.
    pub fn interrupt(&mut self) {
        self.end_early(Ending::Interrupted);
    }

    /// Stop where the search is: a trial could not run.
    pub fn fail(&mut self) {
        self.end_early(Ending::Failed);
    }

    fn end_early(&mut self, ending: Ending) {
        if !matches!(self.phase, Phase::Done(_)) {
            self.phase = Phase::Done(ending);
        }
    }

    /// Take the verdict of the trial [`Search::next`] asked for.
    pub fn on_result(&mut self, rate: u64, verdict: Verdict) {
        let purpose = match self.next() {
            Next::Trial { purpose, .. } => purpose,
            Next::Done => return,
        };
        self.history.push((rate, purpose, verdict.clone()));
        match (self.phase, &verdict) {
            (Phase::Up, Verdict::Pass) => {
                self.lo = Some(rate);
                match (self.cfg.max_rate, self.known_fail()) {
                    (Some(m), _) if rate >= m => self.phase = Phase::Done(Ending::AboveMaxRate),
                    // Doubling would reach a rate known to fail: bisect below it instead (one
                    // above the maximum is none: the search doubles to the maximum).
                    (_, Some(f)) if rate.saturating_mul(2) >= f => {
                        self.hi = Some(f);
                        self.bisect_or_confirm();
                    }
                    (Some(m), _) => self.next_rate = rate.saturating_mul(2).min(m),
                    (None, _) => self.next_rate = rate.saturating_mul(2),
                }
            }
            (Phase::Up, _) => {
                self.hi = Some(rate);
                if self.lo.is_some() {
                    self.bisect_or_confirm();
                } else {
                    self.phase = Phase::Down;
                    self.halve(rate);
                }
            }
            (Phase::Down | Phase::Bisect, Verdict::Pass) => {
                self.lo = Some(rate);
                self.bisect_or_confirm();
            }
            (Phase::Down, _) => {
                self.hi = Some(rate);
                self.halve(rate);
            }
            (Phase::Bisect, _) => {
                self.hi = Some(rate);
                self.bisect_or_confirm();
            }
            (Phase::Confirm, Verdict::Pass) => {
                self.confirmed_at = Some(rate);
                self.phase = Phase::Done(Ending::Confirmed);
            }
            (Phase::Confirm, _) => {
                // The knee's own confirmation failed: the knee is not where the
                // search put it. Reopen below the failure.
                if let Some(knee) = self.lo {
                    self.failed_confirmations.push(Contradiction { passed_at: knee, failed_at: rate });
                }
                self.hi = Some(rate);
                self.lo = self.highest_pass_below(rate);
                if self.reopens >= self.cfg.max_reopens {
                    self.phase = Phase::Done(Ending::Unconfirmed);
                    return;
                }
                self.reopens += 1;
                match self.lo {
                    Some(_) => self.bisect_or_confirm(),
                    None => {
                        self.phase = Phase::Down;
                        self.halve(rate);
                    }
                }
            }
            (Phase::Done(_), _) => {}
        }
    }

    /// The next rate down after a failure at `rate` with nothing passed below it: half of it,
    /// or the lowest rate when half would be below that (so the lowest rate is always tried
    /// before the search says no rate passed). A rate that passed above them all (a knee whose
    /// confirmation failed, reopened down to the lowest rate) is contradicted, not absent: the
    /// search ends unconfirmed, without a knee.
    fn halve(&mut self, rate: u64) {
        let lowest = self.cfg.min_rate.max(1);
        if rate <= lowest {
            let passed = self.history.iter().any(|(_, _, v)| v.is_pass());
            self.phase = Phase::Done(if passed { Ending::Unconfirmed } else { Ending::NoPass });
        } else {
            self.next_rate = (rate / 2).max(lowest);
        }
    }

    fn bisect_or_confirm(&mut self) {
        let (Some(lo), Some(hi)) = (self.lo, self.hi) else {
            return;
        };
        if hi.saturating_sub(lo) as f64 > self.cfg.tolerance * lo as f64 && hi > lo + 1 {
            self.phase = Phase::Bisect;
            self.next_rate = lo + (hi - lo) / 2;
        } else {
            self.phase = Phase::Confirm;
            self.next_rate = ((lo as f64 * self.cfg.confirm_factor) as u64).max(1);
        }
    }

    /// [`SearchConfig::failed_at`], while no rate at or above it passed here; none above the
    /// maximum rate, which bounds nothing the search may offer ([`KnownFailure::above_max_rate`]).
    fn known_fail(&self) -> Option<u64> {
        let offered = |f: &u64| self.cfg.max_rate.is_none_or(|m| *f <= m);
        self.cfg.failed_at.filter(offered).filter(|&f| self.lowest_pass_from(f).is_none())
    }

    /// The lowest rate at or above `rate` that passed here: one that drops a known failure.
    fn lowest_pass_from(&self, rate: u64) -> Option<u64> {
        self.history.iter().filter(|(r, _, v)| v.is_pass() && *r >= rate).map(|h| h.0).min()
    }

    fn highest_pass_below(&self, rate: u64) -> Option<u64> {
        self.history.iter().filter(|(r, _, v)| v.is_pass() && *r < rate).map(|(r, _, _)| *r).max()
    }

    /// The failures below a pass, which contradict a monotonic engine (rate-not-achieved trials
    /// say nothing): each failed rate once, ascending, with the highest pass above it. Every
    /// pass/fail pair was one line: 10 for 3 passes and 4 failures.
    fn contradictions(&self) -> Vec<Contradiction> {
        let Some(passed_at) = self.highest_pass_below(u64::MAX) else { return Vec::new() };
        let mut failed: Vec<u64> = self
            .history
            .iter()
            .filter(|(r, _, v)| matches!(v, Verdict::Fail { .. }) && *r < passed_at)
            .map(|(r, _, _)| *r)
            .collect();
        failed.sort_unstable();
        failed.dedup();
        failed.into_iter().map(|failed_at| Contradiction { passed_at, failed_at }).collect()
    }

    /// The result (meaningful once [`Search::next`] says done; before, it
    /// describes the search so far).
    pub fn outcome(&self) -> Outcome {
        let rna = self
            .history
            .iter()
            .filter(|(_, _, v)| matches!(v, Verdict::RateNotAchieved { .. }))
            .map(|(r, _, _)| *r)
            .min();
        // A rate known to fail (`failed_at`) counts as this search's failure.
        let known = self.known_fail();
        let fails = || {
            let tried = self.history.iter().filter(|(_, _, v)| matches!(v, Verdict::Fail { .. })).map(|(r, _, _)| *r);
            tried.chain(known)
        };
        let lowest_fail = fails().min();
        let mut ending = match self.phase {
            Phase::Done(e) => e,
            _ => Ending::Capped,
        };
        let highest_pass = self.lo.or_else(|| self.highest_pass_below(u64::MAX));
        let (knee, at_least) = match ending {
            Ending::NoPass => (None, None),
            // Its confirmation failed and no rate below it passed: no knee.
            Ending::Unconfirmed if self.lo.is_none() => (None, None),
            // Stopped before any rate above the highest pass failed (or went unachieved): the
            // search had not found where the engine stops passing, only that it passes there.
            Ending::Capped | Ending::Interrupted | Ending::Failed if self.hi.or(known).is_none() => {
                (None, highest_pass)
            }
            // The knee passed and was confirmed; only a pass below every
            // failure counts (a contradicting pass above one is flagged, not taken).
            _ => (highest_pass, None),
        };
        // The bracket's upper end was the publisher's shortfall, not an engine
        // failure: the knee is only a lower bound of the engine's limit.
        if ending == Ending::Confirmed && rna.is_some() && lowest_fail.is_none_or(|f| rna.is_some_and(|r| r < f)) {
            ending = Ending::PublisherLimited;
        }
        let base = knee.or(at_least).unwrap_or(0);
        let not_passed = self.history.iter().filter(|(_, _, v)| !v.is_pass()).map(|(r, _, _)| *r).chain(known);
        let failed_above = fails().filter(|&r| r > base).min();
        let bracket_above = not_passed.filter(|&r| r > base).min();
        let narrowed = match (knee, bracket_above) {
            (Some(_), _) if ending == Ending::AboveMaxRate => true,
            (Some(k), Some(hi)) => hi.saturating_sub(k) as f64 <= self.cfg.tolerance * k as f64 || hi <= k + 1,
            _ => false,
        };
        Outcome {
            knee,
            at_least,
            ending,
            lowest_fail,
            rate_not_achieved_at: rna,
            confirmed_at: self.confirmed_at,
            failed_above,
            bracket_above,
            narrowed,
            contradictions: self.contradictions(),
            failed_confirmations: self.failed_confirmations.clone(),
            known_failure: self.cfg.failed_at.map(|rate| KnownFailure {
                rate,
                dropped_by_pass_at: self.lowest_pass_from(rate),
                above_max_rate: self.cfg.max_rate.filter(|&m| rate > m),
            }),
            trials: self.history.len(),
        }
    }

    /// A rough count of the trials still to come (for a progress estimate).
    pub fn trials_left_estimate(&self) -> usize {
        match self.phase {
            Phase::Done(_) => 0,
            Phase::Confirm => 1,
            Phase::Up | Phase::Down => 2 + self.bisect_steps(self.next_rate / 2, self.next_rate),
            Phase::Bisect => {
                1 + self.bisect_steps(self.lo.unwrap_or(self.next_rate / 2), self.hi.unwrap_or(self.next_rate))
            }
        }
    }

    fn bisect_steps(&self, lo: u64, hi: u64) -> usize {
        let (mut lo, hi) = (lo.max(1) as f64, hi as f64);
        let mut n = 0;
        while hi - lo > self.cfg.tolerance * lo && n < 64 {
            lo = (lo + hi) / 2.0;
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Verdict {
        Verdict::Fail { reasons: vec!["p99 over".into()] }
    }

    /// Drive a search against an engine that passes below `limit` and a
    /// publisher that tops out at `pub_limit`.
    fn drive(cfg: SearchConfig, limit: u64, pub_limit: u64) -> Search {
        let mut s = Search::new(cfg);
        for _ in 0..100 {
            let Next::Trial { rate, .. } = s.next() else { break };
            let v = if rate > pub_limit {
                Verdict::RateNotAchieved { achieved: pub_limit as f64 }
            } else if rate <= limit {
                Verdict::Pass
            } else {
                fail()
            };
            s.on_result(rate, v);
        }
        assert_eq!(s.next(), Next::Done, "the search ends");
        s
    }

    #[test]
    fn brackets_bisects_and_confirms_a_known_limit() {
        let s = drive(SearchConfig::default(), 37_000, u64::MAX);
        let o = s.outcome();
        assert_eq!(o.ending, Ending::Confirmed);
        let knee = o.knee.expect("a knee");
        assert!(knee <= 37_000 && knee as f64 >= 37_000.0 / 1.05, "knee {knee} within 5% below 37k");
        assert_eq!(o.confirmed_at, Some((knee as f64 * 0.95) as u64));
        // 10k, 20k, 40k bracket it; the last trial is the confirmation.
        let rates: Vec<u64> = s.history().iter().map(|h| h.0).collect();
        assert_eq!(&rates[..3], &[10_000, 20_000, 40_000]);
        assert_eq!(s.history().last().map(|h| h.1), Some(Purpose::Confirm));
        assert!(o.contradictions.is_empty());
        assert_eq!(o.lowest_fail, Some(rates.iter().copied().filter(|r| *r > 37_000).min().expect("a fail")));
    }

    /// A search carried on from its highest pass (2000) that knows the rate above it failed
    /// (4000, `--failed-at`) bisects below that rate and never offers it: before, it doubled
    /// from 2000 to 4000 again, a trial spent on a known failure. Stopped early, the known
    /// failure bounds its knee (not `at least`); a pass at or above it drops it.
    #[test]
    fn a_carried_on_search_never_offers_the_rate_known_to_fail() {
        let known = SearchConfig { start_rate: 2_000, tolerance: 0.1, failed_at: Some(4_000), ..Default::default() };
        let s = drive(known.clone(), 3_000, u64::MAX);
        let rates: Vec<u64> = s.history().iter().map(|h| h.0).collect();
        assert_eq!(&rates[..2], &[2_000, 3_000], "bisected at once: {rates:?}");
        assert!(rates.iter().all(|&r| r < 4_000), "{rates:?}");
        let o = s.outcome();
        assert_eq!((o.ending, o.knee, o.narrowed), (Ending::Confirmed, Some(3_000), true), "{o:?}");
        // Without it, the search offered 4000 again.
        let unknown = drive(SearchConfig { failed_at: None, ..known.clone() }, 3_000, u64::MAX);
        assert_eq!(unknown.history()[1].0, 4_000);
        // Capped after the start passed (1000, the failure at 4000 known): a knee not narrowed,
        // bounded by the known failure, not a lower bound.
        let mut capped = Search::new(SearchConfig { start_rate: 1_000, ..known.clone() });
        capped.on_result(1_000, Verdict::Pass);
        assert_eq!(capped.next(), Next::Trial { rate: 2_000, purpose: Purpose::Bracket });
        capped.cap();
        let o = capped.outcome();
        assert_eq!((o.knee, o.at_least, o.failed_above, o.narrowed), (Some(1_000), None, Some(4_000), false));
        // summary.json says the known failure that bounds it, though no trial row is at it
        // (before, only summary.md did).
        let json = serde_json::to_value(&o).expect("json");
        assert_eq!(json["known_failure"], serde_json::json!({ "rate": 4_000 }), "{json}");
        // A pass at the known failure contradicts it: it is dropped, and the search doubles on.
        let mut passed = Search::new(SearchConfig { start_rate: 4_000, ..known });
        passed.on_result(4_000, Verdict::Pass);
        assert_eq!(passed.next(), Next::Trial { rate: 8_000, purpose: Purpose::Bracket });
        let json = serde_json::to_value(passed.outcome()).expect("json");
        assert_eq!(json["known_failure"], serde_json::json!({ "rate": 4_000, "dropped_by_pass_at": 4_000 }), "{json}");
        let unknown = serde_json::to_value(unknown.outcome()).expect("json");
        assert!(unknown.get("known_failure").is_none(), "{unknown}");
    }

    /// A rate known to fail above `--max-rate` (5000, the failure at 8000) bounds nothing the
    /// search may offer: before, the pass at 4000 bisected towards 8000 and offered 6000, above
    /// the maximum; it doubles to the maximum as without it.
    #[test]
    fn a_known_failure_above_the_maximum_rate_never_makes_the_search_offer_more() {
        let cfg =
            SearchConfig { start_rate: 4_000, max_rate: Some(5_000), failed_at: Some(8_000), ..Default::default() };
        let s = drive(cfg.clone(), u64::MAX, u64::MAX);
        let rates: Vec<u64> = s.history().iter().map(|h| h.0).collect();
        assert!(rates.iter().all(|&r| r <= 5_000), "offered above the maximum: {rates:?}");
        let o = s.outcome();
        assert_eq!(o.ending, Ending::AboveMaxRate, "{rates:?}");
        // Nor is it this search's failure: nothing failed, nothing bounds the knee from above
        // (before, 8000 was `lowest_fail`, `failed_above` and `bracket_above`). summary.json
        // keeps it, saying it is above the maximum.
        assert_eq!((o.lowest_fail, o.failed_above, o.bracket_above), (None, None, None), "{o:?}");
        let json = serde_json::to_value(&o).expect("json");
        assert_eq!(json["known_failure"], serde_json::json!({ "rate": 8_000, "above_max_rate": 5_000 }), "{json}");
        // Capped after its start passed: a lower bound, not a knee bounded by 8000.
        let mut capped = Search::new(cfg.clone());
        capped.on_result(4_000, Verdict::Pass);
        capped.cap();
        let o = capped.outcome();
        assert_eq!((o.knee, o.at_least, o.failed_above), (None, Some(4_000), None), "{o:?}");
        // The maximum failing: the bracket is below the maximum, not 8000.
        let o = drive(cfg.clone(), 4_500, u64::MAX).outcome();
        let at_most_max = |r: Option<u64>| r.is_some_and(|r| r <= 5_000);
        assert!(at_most_max(o.lowest_fail) && at_most_max(o.failed_above) && at_most_max(o.bracket_above), "{o:?}");
        // At the maximum, it bounds the search as below it: 5000 is never offered.
        let at_max = drive(SearchConfig { failed_at: Some(5_000), ..cfg }, u64::MAX, u64::MAX);
        assert!(at_max.history().iter().all(|h| h.0 < 5_000), "{:?}", at_max.history());
        let o = at_max.outcome();
        assert_eq!((o.failed_above, o.known_failure.and_then(|k| k.above_max_rate)), (Some(5_000), None), "{o:?}");
    }

    #[test]
    fn halves_when_the_start_fails_and_reports_no_pass() {
        let o = drive(SearchConfig { start_rate: 8_000, ..Default::default() }, 1_500, u64::MAX).outcome();
        assert_eq!(o.ending, Ending::Confirmed);
        assert!(o.knee.is_some_and(|k| (1_429..=1_500).contains(&k)), "{o:?}");
        let none = drive(SearchConfig { start_rate: 800, min_rate: 100, ..Default::default() }, 50, u64::MAX);
        assert_eq!((none.outcome().ending, none.outcome().knee), (Ending::NoPass, None));
    }

    #[test]
    fn publisher_shortfall_is_never_the_knee() {
        let o = drive(SearchConfig::default(), 1_000_000, 30_000).outcome();
        assert_eq!(o.ending, Ending::PublisherLimited, "{o:?}");
        assert_eq!(o.lowest_fail, None, "no engine failure was seen");
        assert!(o.rate_not_achieved_at.is_some_and(|r| r > 30_000));
        assert!(o.knee.is_some_and(|k| k <= 30_000));
    }

    #[test]
    fn max_rate_caps_the_bracket() {
        let o = drive(SearchConfig { max_rate: Some(25_000), ..Default::default() }, u64::MAX, u64::MAX).outcome();
        assert_eq!((o.ending, o.knee), (Ending::AboveMaxRate, Some(25_000)));
    }

    /// A noisy engine: failures below passes are each named once, with the highest pass; every
    /// pass/fail pair was named before (10 lines for 3 passes and 4 failures).
    #[test]
    fn a_non_monotonic_search_names_each_failure_below_a_pass_once() {
        let mut s = Search::new(SearchConfig::default());
        // A limit of 31250 msg/s, and a band below it that fails: 30000 and 31250 pass above it.
        for _ in 0..100 {
            let Next::Trial { rate, .. } = s.next() else { break };
            let pass = rate <= 31_250 && !(25_000..30_000).contains(&rate);
            s.on_result(rate, if pass { Verdict::Pass } else { fail() });
        }
        let o = s.outcome();
        let h = s.history();
        let passes: Vec<u64> = h.iter().filter(|t| t.2.is_pass()).map(|t| t.0).collect();
        let top = passes.iter().copied().max().expect("a pass");
        let mut below: Vec<u64> = h.iter().filter(|t| !t.2.is_pass() && t.0 < top).map(|t| t.0).collect::<Vec<_>>();
        below.sort_unstable();
        below.dedup();
        let pairs =
            h.iter().filter(|f| !f.2.is_pass()).map(|f| passes.iter().filter(|&&p| p > f.0).count()).sum::<usize>();
        assert!(!below.is_empty() && pairs > below.len(), "a search with more pairs than failures below a pass: {h:?}");
        let want: Vec<Contradiction> = below.iter().map(|&f| Contradiction { passed_at: top, failed_at: f }).collect();
        assert_eq!(o.contradictions, want, "{h:?}");
        // Said once: `passed at 31250 msg/s but failed below it at 29687 and … msg/s`.
        let said = crate::bench::capacity::contradictions_text(&o.contradictions);
        let failed: Vec<String> = below.iter().map(u64::to_string).collect();
        assert!(said.starts_with(&format!("passed at {top} msg/s but failed below it at ")), "{said}");
        assert_eq!(said.matches("passed").count(), 1, "{said}");
        assert!(failed.iter().all(|f| said.matches(f.as_str()).count() == 1), "{said}");
    }

    #[test]
    fn a_failed_confirmation_reopens_and_is_flagged() {
        // Passes at 40k and at 20k, fails at 80k and — noisily — at 0.95x the knee once.
        let mut s = Search::new(SearchConfig::default());
        let mut failed_confirm_once = false;
        for _ in 0..100 {
            let Next::Trial { rate, purpose } = s.next() else { break };
            let v = if purpose == Purpose::Confirm && !failed_confirm_once {
                failed_confirm_once = true;
                fail()
            } else if rate <= 41_000 {
                Verdict::Pass
            } else {
                fail()
            };
            s.on_result(rate, v);
        }
        let o = s.outcome();
        assert!(failed_confirm_once);
        assert!(!o.contradictions.is_empty(), "a fail below a pass is flagged: {o:?}");
        let c = o.contradictions[0];
        assert!(c.failed_at < c.passed_at);
        assert_eq!(o.ending, Ending::Confirmed, "the reopened search confirmed a lower knee: {o:?}");
        assert!(o.knee.is_some_and(|k| k < c.failed_at), "the knee lies below the failed confirmation: {o:?}");
        let confirms = s.history().iter().filter(|h| h.1 == Purpose::Confirm).count();
        assert_eq!(confirms, 2, "one failed, one passed");
    }

    #[test]
    fn confirmation_that_always_fails_ends_unconfirmed() {
        let mut s = Search::new(SearchConfig { max_reopens: 1, ..Default::default() });
        for _ in 0..100 {
            let Next::Trial { rate, purpose } = s.next() else { break };
            let v = if purpose == Purpose::Confirm || rate > 30_000 { fail() } else { Verdict::Pass };
            s.on_result(rate, v);
        }
        assert_eq!(s.outcome().ending, Ending::Unconfirmed);
    }

    #[test]
    fn cap_stops_where_it_is() {
        let mut s = Search::new(SearchConfig::default());
        s.on_result(10_000, Verdict::Pass);
        s.cap();
        assert_eq!(s.next(), Next::Done);
        let o = s.outcome();
        assert_eq!((o.ending, o.trials), (Ending::Capped, 1));
    }

    /// The audit's run: one trial at 10000 msg/s passed, then the time cap came; the search called
    /// 10000 the knee and the run wrote it as the winner. Nothing above it had failed: it is only
    /// a lower bound.
    #[test]
    fn a_search_stopped_before_any_failure_has_a_lower_bound_not_a_knee() {
        for stop in [Search::cap, Search::interrupt, Search::fail] {
            let mut s = Search::new(SearchConfig::default());
            s.on_result(10_000, Verdict::Pass);
            s.on_result(20_000, Verdict::Pass);
            stop(&mut s);
            let o = s.outcome();
            assert_eq!((o.knee, o.at_least), (None, Some(20_000)), "{o:?}");
        }
        // Once a rate above the highest pass failed, the knee is bracketed: a stop in the
        // bisection keeps it (unbisected, unconfirmed: the ending says so).
        let mut s = Search::new(SearchConfig::default());
        s.on_result(10_000, Verdict::Pass);
        s.on_result(20_000, fail());
        s.cap();
        let o = s.outcome();
        assert_eq!((o.ending, o.knee, o.at_least), (Ending::Capped, Some(10_000), None), "{o:?}");
        // So does a publisher that fell short above it (a bound the full search would report too).
        let mut s = Search::new(SearchConfig::default());
        s.on_result(10_000, Verdict::Pass);
        s.on_result(20_000, Verdict::RateNotAchieved { achieved: 15_000.0 });
        s.interrupt();
        assert_eq!((s.outcome().knee, s.outcome().at_least), (Some(10_000), None));
        // Stopped with nothing passed yet: neither.
        let mut s = Search::new(SearchConfig::default());
        s.on_result(10_000, fail());
        s.cap();
        assert_eq!((s.outcome().knee, s.outcome().at_least), (None, None));
        // A search that ran to its end keeps its knee, whatever bounded it.
        let o = drive(SearchConfig { max_rate: Some(25_000), ..Default::default() }, u64::MAX, u64::MAX).outcome();
        assert_eq!((o.knee, o.at_least), (Some(25_000), None));
    }

    /// `--start-rate` says the search halves down to 100 msg/s, but it stopped when the next half
    /// fell below 100: from 10000 it tried 156 and said `no rate passed`, never offering 100.
    #[test]
    fn halving_ends_with_the_lowest_rate_itself() {
        let rates = |s: &Search| s.history().iter().map(|h| h.0).collect::<Vec<u64>>();
        let none = drive(SearchConfig::default(), 50, u64::MAX);
        assert_eq!(rates(&none), [10_000, 5_000, 2_500, 1_250, 625, 312, 156, 100]);
        assert_eq!((none.outcome().ending, none.outcome().knee), (Ending::NoPass, None));
        // An engine that takes 120 msg/s has a knee the search finds, between 100 and 156.
        let slow = drive(SearchConfig::default(), 120, u64::MAX);
        let o = slow.outcome();
        assert!(o.knee.is_some_and(|k| (100..=120).contains(&k)), "{o:?}: {:?}", rates(&slow));
        assert!(rates(&slow).contains(&100));
        // A start at the lowest rate that fails ends there.
        let low = drive(SearchConfig { start_rate: 100, ..Default::default() }, 50, u64::MAX);
        assert_eq!((rates(&low), low.outcome().ending), (vec![100], Ending::NoPass));
    }

    #[test]
    fn a_knee_is_narrowed_once_the_rate_above_it_is_within_the_tolerance() {
        let o = drive(SearchConfig::default(), 37_000, u64::MAX).outcome();
        let (k, hi) = (o.knee.expect("knee"), o.bracket_above.expect("a failure above"));
        assert!(o.narrowed && hi as f64 <= k as f64 * 1.05 && o.failed_above == Some(hi), "{o:?}");
        // Stopped at the first bisection: 7500 passed, 8750 failed, 17 % apart.
        let mut s = Search::new(SearchConfig { start_rate: 5000, ..Default::default() });
        s.on_result(5000, Verdict::Pass);
        s.on_result(10_000, fail());
        s.on_result(7500, Verdict::Pass);
        s.on_result(8750, fail());
        s.interrupt();
        let o = s.outcome();
        assert_eq!((o.knee, o.bracket_above, o.failed_above, o.narrowed), (Some(7500), Some(8750), Some(8750), false));
        // The publisher's shortfall bounds the bracket but is no failure of the engine.
        let o = drive(SearchConfig::default(), 1_000_000, 30_000).outcome();
        assert!(o.narrowed && o.failed_above.is_none() && o.bracket_above.is_some(), "{o:?}");
        // The maximum rate passed: narrowed, nothing above failed.
        let o = drive(SearchConfig { max_rate: Some(25_000), ..Default::default() }, u64::MAX, u64::MAX).outcome();
        assert_eq!((o.narrowed, o.failed_above), (true, None));
        // Nothing passed: the lowest failure bounds it.
        let o = drive(SearchConfig { start_rate: 800, ..Default::default() }, 50, u64::MAX).outcome();
        assert_eq!((o.narrowed, o.failed_above), (false, Some(100)));
    }

    fn run(offered: u64, achieved: f64, lost: Option<u64>, p99_us: u64) -> RunMeasure {
        RunMeasure {
            offered,
            achieved,
            lost,
            gaps: 0,
            latency_ns: vec![(0.5, 10_000), (0.99, p99_us * 1000), (1.0, p99_us * 2000)],
            count: 1000,
            error: None,
        }
    }

    #[test]
    fn the_pass_rule() {
        let sla = Sla { points: vec![SlaPoint { quantile: 0.99, budget_ns: 2_000_000 }], ..Default::default() };
        assert_eq!(judge(&[run(1000, 990.0, Some(0), 1500)], &sla).verdict, Verdict::Pass);
        let over = judge(&[run(1000, 990.0, Some(0), 2500)], &sla).verdict;
        assert!(
            matches!(&over, Verdict::Fail { reasons } if reasons[0].starts_with("p99 2.50ms over 2.00ms")),
            "{over:?}"
        );
        assert!(matches!(judge(&[run(1000, 990.0, Some(3), 10)], &sla).verdict, Verdict::Fail { .. }));
        assert!(matches!(judge(&[run(1000, 990.0, None, 10)], &sla).verdict, Verdict::Fail { .. }));
        // Short of 95 %: not the engine's failure, whatever else happened.
        assert_eq!(
            judge(&[run(1000, 900.0, Some(5), 9000)], &sla).verdict,
            Verdict::RateNotAchieved { achieved: 900.0 }
        );
        // Medians over runs, with the spread kept.
        let t = judge(
            &[run(1000, 1000.0, Some(0), 1000), run(1000, 999.0, Some(0), 3000), run(1000, 998.0, Some(0), 1200)],
            &sla,
        );
        assert_eq!(t.verdict, Verdict::Pass);
        assert_eq!(t.at(0.99), Some(1_200_000));
        assert_eq!(t.spread_ns.iter().find(|s| s.0 == 0.99).map(|s| (s.1, s.2)), Some((1_000_000, 3_000_000)));
    }

    #[test]
    fn quantile_names_round_trip() {
        for (s, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999), ("max", 1.0)] {
            assert_eq!(parse_quantile(s), Ok(q));
            assert_eq!(quantile_name(q), s);
        }
        assert!(parse_quantile("p100.5").is_err() && parse_quantile("99").is_err());
    }
}
