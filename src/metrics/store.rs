//! The status agent (`store`): publishes the engine's status in the clone
//! store every metrics interval, with a TTL of a few intervals (so a dead
//! engine's status disappears by itself), and applies live settings from
//! `/mdsub/config/<engine-id>/NAME` (see [`super::settings`]).
//!
//! Keys, all under `/mdsub/status/<engine-id>/` (values are JSON objects
//! except `refused/…`):
//! - `engine`: id, pid, interval, shards, uptime, the busiest agent and its
//!   busy fraction, log level, the settings in force (and which changed since start), the
//!   snail's verdict and self-stalls, what the handlers refused (total, and per agent by
//!   reason); in the last status of an engine that ended by a croak or an error or whose run
//!   failed, `ended`: how;
//! - `shardK`: counters (publisher connections of a bound shard, its reader's
//!   self-stalls among them) and the last interval's msgs/s and total-stage
//!   p50/p99/p99.9/max (ns) and how many of its latencies were above 60 s
//!   (`clamped`, recorded as 60 s) or below 0 (`ahead`, recorded as 1 ns), `mdsub top`'s input;
//! - `refused/NAME`: why the last value offered for setting NAME was refused
//!   (the value in force stays); deleted once a good value is applied, the value
//!   in force is offered again, or the setting is deleted.
//!
//! Every value is read once per interval from the engine's live counters, never per message.
//! `docs/CLONE.md` lists each key's fields.
//!
//! On a clean exit the agent deletes its keys; an engine that ends by a croak or an error, or
//! whose run failed (its command exits 1: a link that never came up, `--hlog` writes that
//! failed; [`StoreInputs::ended`] says how) publishes a last status saying so and leaves it for
//! [`ENDED_TTL_S`] (a minute), so a dashboard shows why it stopped instead of losing it at once.
//!
//! It uses the clone store through [`crate::clone::client::Client`]'s public API
//! only, on its own thread (started by the client), off the data path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::json;

use super::collector::SharedLatency;
use super::prom::EngineLive;
use super::settings::{Level, LogLevel, Offer, Settings};
use crate::agent::{Agent, AgentError, Inbox, Step};
use crate::clock;
use crate::clone::client::{Change, Client, ClientConfig};
use crate::snail::WorstSince;

/// Status keys live this many metric intervals (at least 1 s: the store's TTL unit).
pub const TTL_INTERVALS: u64 = 3;

/// The last status of an engine that did not end cleanly (a croak, an error, a run that failed:
/// its `ended` says how) lives this long (s), or its usual TTL when that is longer: long enough
/// for an operator who looks a while after the engine's process is gone to read why.
pub const ENDED_TTL_S: u64 = 60;

/// `/mdsub/status/<id>/`.
pub fn status_prefix(engine_id: &str) -> String {
    format!("/mdsub/status/{engine_id}/")
}

/// `/mdsub/config/<id>/`.
pub fn config_prefix(engine_id: &str) -> String {
    format!("/mdsub/config/{engine_id}/")
}

/// The TTL, in whole seconds, for an interval of `interval_ns`.
/// How soon the store agent looks again for an interval the collector has not closed yet.
const RECHECK_NS: u64 = 5_000_000;

pub fn ttl_s(interval_ns: u64) -> u64 {
    (TTL_INTERVALS * interval_ns).div_ceil(1_000_000_000).max(1)
}

/// A shard's last interval in its status: message count and rate, the total stage's
/// percentiles (ns; each `null` when the interval had no message: an idle feed has no
/// latency, and 0 would say a fast one) and its latencies above 60 s (`clamped`, recorded as
/// 60 s) and below 0 (`ahead`, recorded as 1 ns: send times ahead of this host's clock).
pub fn interval_status(last: &super::StageHistograms, interval_ns: u64) -> serde_json::Value {
    let p = super::Percentiles::of(&last.total);
    let ns = |v: u64| if p.count == 0 { serde_json::Value::Null } else { json!(v) };
    json!({
        "interval_msgs": p.count,
        "msgs_per_s": p.count as f64 * 1e9 / interval_ns.max(1) as f64,
        "p50_ns": ns(p.p50_ns),
        "p99_ns": ns(p.p99_ns),
        "p999_ns": ns(p.p999_ns),
        "max_ns": ns(p.max_ns),
        "clamped": last.out_of_bounds[2].clamped,
        "ahead": last.out_of_bounds[2].ahead,
    })
}

/// What each agent's handler refused, by reason: `{"worker0": {"levels_full": 1, …}, …}` (every
/// reason of the running handler, 0 included, as `/metrics` has them).
pub fn handler_refused(live: &EngineLive) -> serde_json::Value {
    let per_agent = live.handler_refused.iter().map(|h| {
        let reasons: serde_json::Map<String, serde_json::Value> =
            h.counts.iter().map(|(reason, n)| (reason.to_string(), json!(n))).collect();
        (h.agent.clone(), serde_json::Value::Object(reasons))
    });
    serde_json::Value::Object(per_agent.collect())
}

/// The agent busiest over the last interval and its share (the run's so far before the first
/// interval ends): like the rates beside it, not an average over the whole run, which still
/// said 8 % for a reader two minutes after its feed stopped.
pub fn busiest(agents: &[crate::agent::AgentStats]) -> Option<(String, f64)> {
    agents.iter().max_by(|a, b| a.recent_busy().total_cmp(&b.recent_busy())).map(|a| (a.role.clone(), a.recent_busy()))
}

/// What the status agent reads and changes.
pub struct StoreInputs {
    pub engine_id: String,
    /// Clone servers (one, or a Binary Star pair), `tcp://HOST:P`.
    pub servers: Vec<String>,
    pub live: Box<dyn Fn() -> EngineLive + Send>,
    pub latency: SharedLatency,
    pub interval_ns: Arc<AtomicU64>,
    pub log: Arc<LogLevel>,
    pub settings: Settings,
    /// How the engine ended, set before the agent is stopped when it ended by a croak or an
    /// error or its run failed (unset on a clean exit): the agent's last status says it, for
    /// [`ENDED_TTL_S`], instead of being deleted.
    pub ended: Arc<OnceLock<String>>,
}

/// The status agent.
pub struct StoreAgent {
    client: Client,
    inputs: StoreInputs,
    status: String,
    config: String,
    changes: Inbox<Change>,
    /// When to look whether the status is due (monotonic ns, as the collector's interval ends;
    /// 0: publish at once).
    next_publish_ns: u64,
    /// The collector's closed intervals at the last status, and when it was published: the
    /// status follows the collector, so its rates, percentiles and snail verdicts cover the
    /// same interval.
    last_status: (u64, u64),
    /// When the agent started (monotonic ns), for `uptime_s`.
    started_ns: u64,
    refused: BTreeMap<String, String>,
    /// Settings with a value under the config prefix now (applied, unchanged or refused): the
    /// deletion of each is said once.
    offered: BTreeSet<String>,
    published: BTreeSet<String>,
    /// The worst snail verdict since the last status, the engine's then each shard's.
    worst: (WorstSince, Vec<WorstSince>),
    /// Status rounds published.
    pub rounds: u64,
}

impl StoreAgent {
    /// Its clone client's agent (`clone-client`): role and live counters, for the report.
    pub fn client_counters(&self) -> Option<(String, Arc<crate::agent::AgentCounters>)> {
        self.client.agent_counters()
    }

    /// Its clone client's links to the store now (state, losses by reason), for the report.
    pub fn links(&self) -> Vec<crate::link::LinkStats> {
        self.client.status().map(|s| s.links).unwrap_or_default()
    }

    /// Where its clone client publishes its links to the store, for `/metrics` and the status.
    pub fn link_boards(&self) -> Vec<crate::link::LinkBoard> {
        self.client.link_boards()
    }

    /// Connect to the store and watch this engine's config subtree (what is
    /// already there is applied first, as changes).
    pub fn new(inputs: StoreInputs) -> Result<Self, String> {
        let client = Client::start(ClientConfig {
            servers: inputs.servers.clone(),
            subtree: "/mdsub/".into(),
            // Its lines about the store say so (`store: server … not up …`), like this agent's own.
            name: "store".into(),
            // The engine's --server-key and --curve-key are its feeds'; --store presents none.
            key_flags: crate::link::KeyFlags::NoKeys,
            ..ClientConfig::default()
        })
        .map_err(|e| format!("--store: {e}"))?;
        let config = config_prefix(&inputs.engine_id);
        let changes = client.watch(config.as_bytes()).map_err(|e| format!("--store: watching {config}: {e}"))?;
        Ok(StoreAgent {
            client,
            status: status_prefix(&inputs.engine_id),
            config,
            inputs,
            changes: Inbox::new(changes),
            next_publish_ns: 0,
            last_status: (0, 0),
            started_ns: clock::monotonic_ns(),
            refused: BTreeMap::new(),
            offered: BTreeSet::new(),
            published: BTreeSet::new(),
            worst: Default::default(),
            rounds: 0,
        })
    }

    /// Set `key` with `ttl`: the update's id, None when it was skipped.
    fn set(&mut self, key: String, value: String, ttl: u64) -> Result<Option<crate::clone::kvmsg::Uuid>, AgentError> {
        let id = match self.client.set(key.as_bytes(), value.as_bytes(), Some(ttl)) {
            Ok(id) => id,
            // The clone agent is behind (its command queue is full): this round's value is
            // skipped (the client counts it); the next interval publishes again.
            Err(crate::clone::client::ClientError::Busy { .. }) => return Ok(None),
            Err(e) => {
                return Err(AgentError::Fatal { role: "store".into(), message: format!("setting {key}: {e}") });
            }
        };
        self.published.insert(key);
        Ok(Some(id))
    }

    fn on_change(&mut self, c: Change) -> Result<(), AgentError> {
        let Some(name) = c.key.strip_prefix(self.config.as_bytes()) else { return Ok(()) };
        let name = String::from_utf8_lossy(name).into_owned();
        let log = self.inputs.log.clone();
        let said = crate::diag::quoted(&name);
        // A deleted setting keeps the value in force; a refusal of the deleted value no longer
        // stands. Said once per deletion of a value this engine had (the store lost it, or
        // someone deleted it: the engine cannot tell which), whatever became of that value.
        let Some(value) = c.value else {
            let refused = self.withdraw_refusal(&name);
            if self.offered.remove(&name) || refused {
                log.log(Level::Info, format_args!("{}", deleted_line(&self.inputs.settings, &name)));
            }
            return Ok(());
        };
        self.offered.insert(name.clone());
        let outcome = match std::str::from_utf8(&value) {
            Ok(v) => self.inputs.settings.offer(&name, v),
            Err(_) => Offer::Refused("the value is not UTF-8".into()),
        };
        match outcome {
            Offer::Applied(v) => {
                log.log(Level::Info, format_args!("setting {said} = {v} applied (from {}{said})", self.config));
                self.withdraw_refusal(&name);
                // Say so in the status at once.
                self.next_publish_ns = 0;
            }
            // The value in force offered again: whatever was refused before is replaced.
            Offer::Unchanged => {
                if self.withdraw_refusal(&name) {
                    log.log(Level::Info, format_args!("setting {said}: the value in force is offered again"));
                }
            }
            Offer::Refused(why) => {
                // An unknown name's refusal says so itself (and it has no value in force).
                let stays = if self.inputs.settings.is_known(&name) { "; the value in force stays" } else { "" };
                log.log(Level::Warn, format_args!("setting {said}: {why}{stays}"));
                self.refused.insert(name, why);
                self.next_publish_ns = 0;
            }
        }
        Ok(())
    }

    /// Take back the status's `refused/NAME` entry, if any (the refused value was replaced or
    /// deleted); true when there was one. The status is published again at once.
    fn withdraw_refusal(&mut self, name: &str) -> bool {
        if self.refused.remove(name).is_none() {
            return false;
        }
        let key = format!("{}refused/{name}", self.status);
        let _ = self.client.del(key.as_bytes());
        self.published.remove(&key);
        self.next_publish_ns = 0;
        true
    }

    /// Publish the status at `now_ns` (monotonic; `updated_ns` in it is the wall clock's); with
    /// `ended`, the engine's last, saying how it ended. The id of the last update set, if any.
    fn publish(&mut self, now_ns: u64, ended: Option<&str>) -> Result<Option<crate::clone::kvmsg::Uuid>, AgentError> {
        let interval_ns = self.inputs.interval_ns.load(Relaxed).max(1);
        let ttl = if ended.is_some() { ttl_s(interval_ns).max(ENDED_TTL_S) } else { ttl_s(interval_ns) };
        let live = (self.inputs.live)();
        let busiest = busiest(&live.agents);
        let stalls = live.self_stalls(None);
        // One look at the collector's latency for the whole status: the intervals it has closed
        // are the ones this status covers (a second look could see one more, never published).
        let lat = self.inputs.latency.lock().ok();
        let (closed, closed_at_ns, write_errors) =
            lat.as_ref().map_or((0, 0, 0), |l| (l.intervals, l.last_interval_end_ns, l.write_errors));
        let mut engine = json!({
            "engine_id": self.inputs.engine_id,
            "pid": std::process::id(),
            "interval_ms": interval_ns as f64 / 1e6,
            "shards": live.shards.len(),
            "uptime_s": now_ns.saturating_sub(self.started_ns) as f64 / 1e9,
            "busiest_agent": busiest.as_ref().map(|b| b.0.clone()),
            "busiest_busy": busiest.map(|b| b.1),
            "log_level": self.inputs.log.get().name(),
            "settings": self.inputs.settings.current(),
            "settings_changed": self.inputs.settings.changed(),
            "metrics_dropped": live.metrics_dropped,
            "metrics_write_errors": write_errors,
            "snail": live.snail_verdict(None).name(),
            "snail_worst": self.worst.0.next(live.snail_verdict(None), live.snail_turns(None)).name(),
            "self_stalls": stalls.0,
            "longest_self_stall_ns": stalls.1,
            "handler_refused_total": live.handler_refused_total(),
            "handler_refused": handler_refused(&live),
            "store_links": live.store_links,
            "updated_ns": clock::realtime_ns(),
        });
        let mut shards = Vec::new();
        self.worst.1.resize(live.shards.len(), WorstSince::default());
        if let Some(lat) = &lat {
            for (k, sh) in live.shards.iter().enumerate() {
                let (Some(cum), Some(last)) = (lat.cumulative.get(k), lat.last_interval.get(k)) else { continue };
                let mut status = interval_status(last, interval_ns);
                let bad: u64 = sh.counts.bad_frames.values().sum();
                let stalls = live.self_stalls(Some(k));
                let more = json!({
                    "received": sh.received,
                    "delivered": cum.count(),
                    "gaps": sh.counts.gaps,
                    "duplicates": sh.counts.duplicates,
                    "restarts": sh.counts.restarts,
                    "beyond_sent": sh.beyond_sent,
                    "bad_frames": bad,
                    "intervals": lat.intervals,
                    "snail": live.snail_verdict(Some(k)).name(),
                    "snail_worst": self.worst.1[k].next(live.snail_verdict(Some(k)), live.snail_turns(Some(k))).name(),
                    "self_stalls": stalls.0,
                    "longest_self_stall_ns": stalls.1,
                    "publisher_connects": sh.publisher_connects,
                    "publisher_disconnects": sh.publisher_disconnects,
                    "publisher_refused": sh.publisher_refused,
                    "accept_failed": sh.accept_failed,
                    "handshake_ledger_forgotten": sh.handshake_ledger_forgotten,
                    "links": sh.links,
                });
                if let (Some(status), serde_json::Value::Object(more)) = (status.as_object_mut(), more) {
                    status.extend(more);
                }
                shards.push((k, status));
            }
        }
        drop(lat);
        if let (Some(how), Some(engine)) = (ended, engine.as_object_mut()) {
            engine.insert("ended".into(), json!(how));
        }
        let mut last = None;
        for (k, s) in shards {
            last = self.set(format!("{}shard{k}", self.status), s.to_string(), ttl)?.or(last);
        }
        last = self.set(format!("{}engine", self.status), engine.to_string(), ttl)?.or(last);
        let refused: Vec<(String, String)> = self.refused.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, why) in refused {
            last = self.set(format!("{}refused/{name}", self.status), why, ttl)?.or(last);
        }
        self.rounds += 1;
        self.last_status = (closed, now_ns);
        // The collector closes its next interval about then.
        self.next_publish_ns = closed_at_ns.saturating_add(interval_ns).max(now_ns + RECHECK_NS);
        Ok(last)
    }

    /// Whether the status is due at `now_ns`: published at once when asked (a setting changed),
    /// else when the collector has closed an interval since the last, or has closed none for
    /// two intervals (it still says the engine is alive).
    fn due(&self, now_ns: u64, closed: u64, interval_ns: u64) -> bool {
        let (seen, at_ns) = self.last_status;
        self.next_publish_ns == 0 || closed != seen || now_ns.saturating_sub(at_ns) >= interval_ns.saturating_mul(2)
    }
}

impl Agent for StoreAgent {
    fn role(&self) -> &str {
        "store"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let mut n = 0;
        while let Some(c) = self.changes.next() {
            self.on_change(c)?;
            n += 1;
        }
        if self.changes.is_closed() {
            // The clone agent cut this watcher off (it fell `watch_queue_msgs` behind): watch
            // again, which starts from the current entries, so no setting is missed.
            crate::diag!("store: the config watch fell behind and was cut off; watching {} again", self.config);
            let rx = self.client.watch(self.config.as_bytes()).map_err(|e| AgentError::Fatal {
                role: "store".into(),
                message: format!("watching {} again: {e}", self.config),
            })?;
            self.changes = Inbox::new(rx);
        }
        let now = clock::monotonic_ns();
        if now >= self.next_publish_ns {
            let closed = self.inputs.latency.lock().map_or(0, |l| l.intervals);
            if self.due(now, closed, self.inputs.interval_ns.load(Relaxed).max(1)) {
                self.publish(now, None)?;
                n += 1;
            } else {
                // The collector is late closing its interval: look again shortly.
                self.next_publish_ns = now + RECHECK_NS;
            }
        }
        Ok(Step::Worked(n))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let left = Duration::from_nanos(self.next_publish_ns.saturating_sub(clock::monotonic_ns()));
        self.changes.wait(timeout.min(left));
    }

    fn on_close(&mut self) {
        // A clean exit removes the status at once (a killed engine's expires); an engine that
        // ended by a croak or an error, or whose run failed, publishes a last status saying how,
        // left for ENDED_TTL_S. A
        // store never reached has nothing of ours to remove, and waiting for its
        // acknowledgement would only add its 2 s to every stop (and to the run's reported
        // duration).
        if !self.client.status().is_ok_and(|s| s.synced) {
            return;
        }
        let mut last = None;
        if let Some(how) = self.inputs.ended.get().cloned() {
            match self.publish(clock::monotonic_ns(), Some(&how)) {
                Ok(id) => last = id,
                Err(e) => crate::diag!("store: the engine's last status (how it ended) not published: {e}"),
            }
        } else {
            for key in std::mem::take(&mut self.published) {
                last = self.client.del(key.as_bytes()).ok().or(last);
            }
        }
        if let Some(u) = last {
            let _ = self.client.wait_acked(u, Duration::from_secs(2));
        }
    }
}

/// The line saying setting `name` was deleted from the store: the value in force stays (a
/// deletion is not a change: the store may have lost it, both servers restarted empty, and
/// reverting would change a running engine behind its operator's back), and how to return to
/// the value at start; a name that is no setting has nothing in force.
fn deleted_line(settings: &Settings, name: &str) -> String {
    let said = crate::diag::quoted(name);
    match (settings.current().get(name), settings.initial(name)) {
        (Some(now), Some(start)) if now == start => {
            format!("setting {said} deleted from the store: {now} stays in force (its value at start)")
        }
        (Some(now), Some(start)) => format!(
            "setting {said} deleted from the store: {now} stays in force (restart to return to {start}, its value \
             at start)"
        ),
        _ => format!(
            "setting {said} deleted from the store (no setting of this engine: nothing is in force under that name)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_setting_says_its_value_in_force_and_its_value_at_start() {
        let mut settings = Settings::default();
        settings.register("n", "a number", "5".into(), |raw| Ok(raw.to_string()));
        assert_eq!(
            deleted_line(&settings, "n"),
            "setting n deleted from the store: 5 stays in force (its value at start)"
        );
        settings.offer("n", "7");
        assert_eq!(
            deleted_line(&settings, "n"),
            "setting n deleted from the store: 7 stays in force (restart to return to 5, its value at start)"
        );
        assert!(deleted_line(&settings, "m").contains("no setting of this engine"), "{}", deleted_line(&settings, "m"));
    }

    #[test]
    fn an_idle_interval_has_no_percentiles() {
        let mut set = super::super::StageHistograms::default();
        let idle = interval_status(&set, 1_000_000_000);
        for k in ["p50_ns", "p99_ns", "p999_ns", "max_ns"] {
            assert!(idle[k].is_null(), "{k}: {idle}");
        }
        assert_eq!((idle["interval_msgs"].as_u64(), idle["msgs_per_s"].as_f64()), (Some(0), Some(0.0)));
        set.record(1_000, 1_000, 2_000);
        set.record(1_000, 1_000, 61_000_000_000);
        set.record(-3_000, 1_000, -2_000);
        let busy = interval_status(&set, 500_000_000);
        assert_eq!((busy["p50_ns"].as_u64(), busy["msgs_per_s"].as_f64()), (Some(2_000), Some(6.0)), "{busy}");
        assert_eq!((busy["clamped"].as_u64(), busy["ahead"].as_u64()), (Some(1), Some(1)), "{busy}");
    }

    #[test]
    fn handler_refusals_are_per_agent_by_reason() {
        use super::super::prom::HandlerRefused;
        let live = EngineLive {
            handler_refused: vec![
                HandlerRefused { agent: "worker0".into(), counts: vec![("orders_full", 0), ("levels_full", 2)] },
                HandlerRefused { agent: "worker1".into(), counts: vec![("orders_full", 1), ("levels_full", 0)] },
            ],
            ..Default::default()
        };
        let v = handler_refused(&live);
        assert_eq!(
            v,
            json!({"worker0": {"orders_full": 0, "levels_full": 2}, "worker1": {"orders_full": 1, "levels_full": 0}})
        );
        assert_eq!(live.handler_refused_total(), 3);
    }

    #[test]
    fn the_busiest_agent_is_the_busiest_over_the_last_interval() {
        use crate::agent::AgentStats;
        // The reader was busy for the run's first minutes, then its feed stopped: before, the
        // status said `busiest shard0-reader 8%` two minutes later, from its whole-run average.
        let agent = |role: &str, cpu_ns, interval_busy| AgentStats {
            role: role.into(),
            cpu_ns,
            wall_ns: 1_000_000_000_000,
            interval_busy,
            ..Default::default()
        };
        let agents = [agent("shard0-reader", 80_000_000_000, Some(0.0)), agent("metrics", 1_000_000_000, Some(0.01))];
        assert_eq!(busiest(&agents), Some(("metrics".to_string(), 0.01)));
        // No interval ended yet: the run's share so far.
        assert_eq!(busiest(&[agent("worker0", 1_000_000_000, None)]), Some(("worker0".to_string(), 0.001)));
        assert_eq!(busiest(&[]), None);
    }

    #[test]
    fn ttl_is_a_few_intervals_in_whole_seconds() {
        assert_eq!(ttl_s(1_000_000_000), 3);
        assert_eq!(ttl_s(250_000_000), 1);
        assert_eq!(ttl_s(500_000_000), 2);
        assert_eq!(ttl_s(1), 1);
        assert_eq!(status_prefix("e1"), "/mdsub/status/e1/");
        assert_eq!(config_prefix("e1"), "/mdsub/config/e1/");
    }
}
