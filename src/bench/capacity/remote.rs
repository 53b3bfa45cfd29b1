//! The capacity publisher in another process (`mdsub replay --serve-trials
//! bind:EP`), maybe on another host, driven by `mdsub capacity --publisher
//! connect:EP` over a REQ/REP control socket; one JSON request per step:
//!
//! 1. `{"op":"prepare", "rate", "duration_ms", "payload_bytes", "symbols", "zipf", "seed", "shards"}`
//!    → the server binds its data endpoints and answers `{"endpoints":[…], "achieved":"pacer"}`;
//! 2. the engine connects; `{"op":"go"}` → the server waits for the
//!    subscription, publishes the schedule, sends end of stream and answers
//!    `{"sent", "send_s", "achieved":"pacer"}` (`sent / send_s` is the rate its pacer achieved,
//!    from its first send to its last, at most the messages sent over the schedule's duration:
//!    neither the sending thread's start nor the end of stream counts);
//! 3. `{"op":"bye"}` ends the server.
//!
//! `achieved` names that measure ([`ACHIEVED_MEASURE`]). A server of an older mdsub answers
//! without it: its `send_s` ran from its sending thread's start to the end it saw, which read a
//! loaded host's publisher short (920 of 1000 msg/s), so its trials are refused at `prepare`,
//! before any is run: a search never mixes the two measures in its verdicts.
//!
//! Any failure is answered `{"error": "…"}`, and the server goes on serving. A request the
//! server cannot take (more than one frame, not JSON, an unknown op, a `prepare` with a
//! number out of the range the command line allows for it) is also counted and said on
//! stderr by reason (`serve-trials: refused (REASON): …`, the first of each reason
//! at once, then a summary per 10 s; docs/REFUSALS.md).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::agent::StopFlag;
use crate::diag::RefusalLog;
use crate::feed::GeneratorConfig;
use crate::link::LinkWatch;
use crate::replay::{Limits, Pacing, Publisher, PublisherConfig, Source};

/// The capacity side of the control socket.
pub struct RemotePublisher {
    req: zmq::Socket,
    control: String,
    /// The control link's watch: "not up after 5 s" when nothing answers at `control`.
    watch: Option<LinkWatch>,
    stop: StopFlag,
    /// The control socket's connections that had ended when the request awaited was sent: one
    /// more ending took the request or its answer with it (a REQ never sends it again).
    ended_at_send: u64,
}

/// The measure of the achieved rate a trial server's `send_s` gives (its answers' `achieved`):
/// the pacer's, capped by the schedule's duration ([`trial::achieved_of`](super::trial::achieved_of)).
pub const ACHIEVED_MEASURE: &str = "pacer";

/// How long the publisher has to answer `prepare` (binding its endpoints).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// Ctrl-C (or SIGTERM) while waiting for the publisher's answer.
#[derive(Debug, thiserror::Error)]
#[error("interrupted while waiting for the publisher's answer to {0}")]
pub struct Interrupted(String);

/// `tcp://0.0.0.0:P` or `tcp://*:P` as the engine must connect it: at the control endpoint's host.
fn reachable(ep: &str, control: &str) -> String {
    let host = control.strip_prefix("tcp://").and_then(|r| r.rsplit_once(':')).map(|(h, _)| h);
    match (ep.strip_prefix("tcp://").and_then(|r| r.rsplit_once(':')), host) {
        (Some((bound, port)), Some(host)) if bound == "0.0.0.0" || bound == "*" || bound == "[::]" => {
            format!("tcp://{host}:{port}")
        }
        _ => ep.to_string(),
    }
}

impl RemotePublisher {
    /// Connect to the publisher's control endpoint; its waits end at once when `stop` is set.
    pub fn connect(ctx: &zmq::Context, control: &str, stop: &StopFlag) -> anyhow::Result<RemotePublisher> {
        crate::zmqx::check_endpoint(control).map_err(anyhow::Error::msg)?;
        let mut req = ctx.socket(zmq::REQ).context("creating the control socket")?;
        req.set_linger(0).context("setting LINGER")?;
        req.set_sndtimeo(30_000).context("setting SNDTIMEO")?;
        // A path that drops SYNs (a firewall, a host that is down) would hold libzmq's first
        // connect for the kernel's SYN timeout (~2 min), and "not up" is said on a retry: give
        // each attempt 1 s, so the link watch says it after 5 s there too.
        req.set_connect_timeout(1000).context("setting CONNECT_TIMEOUT")?;
        let watch = LinkWatch::attach(ctx, &mut req, "capacity publisher control", &[control.to_string()])
            .context("watching the control socket")?;
        req.connect(control).with_context(|| format!("connecting to the publisher at {control}"))?;
        Ok(RemotePublisher { req, control: control.to_string(), watch, stop: stop.clone(), ended_at_send: 0 })
    }

    /// The publisher's answer to `what` within `timeout`, watching the link (said once when
    /// nothing answers there) and the stop flag (between 100 ms polls).
    fn recv_json(&mut self, what: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(w) = self.watch.as_mut() {
                w.service(&self.req);
                // A server killed mid-trial was waited for 30 s more: `no answer from the
                // publisher to publish within 31200ms`, though its answer could not come.
                if w.connections_ended() > self.ended_at_send {
                    anyhow::bail!(
                        "the connection to the publisher at {} closed before its answer to {what} came (the \
                         trial server ended or was killed, or the path dropped), and a request is not sent again: \
                         start `mdsub replay --serve-trials` there again, then carry the search on",
                        self.control
                    );
                }
            }
            if self.stop.is_stopped() {
                return Err(Interrupted(what.to_string()).into());
            }
            let left_ms = deadline.saturating_duration_since(Instant::now()).as_millis().min(100) as i64;
            if left_ms == 0 {
                anyhow::bail!(
                    "no answer from the publisher to {what} within {} (is `mdsub replay --serve-trials` \
                     running there, and reachable?)",
                    crate::diag::human_duration_of(timeout)
                )
            }
            match self.req.poll(zmq::POLLIN, left_ms) {
                Ok(0) | Err(zmq::Error::EINTR) => {} // EINTR: a signal (Ctrl-C); `stop` says whether to end
                Ok(_) => break,
                Err(e) => return Err(e).with_context(|| format!("waiting for the publisher's answer to {what}")),
            }
        }
        let bytes = self.req.recv_bytes(0).with_context(|| format!("receiving the publisher's answer to {what}"))?;
        let v: Value = serde_json::from_slice(&bytes).with_context(|| format!("the publisher's answer to {what}"))?;
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            anyhow::bail!("the publisher could not {what}: {e}");
        }
        Ok(v)
    }

    /// Have the publisher bind for a trial; returns the endpoints to connect.
    pub fn prepare(
        &mut self,
        rate: u64,
        duration: Duration,
        feed: &GeneratorConfig,
        shards: usize,
    ) -> anyhow::Result<Vec<String>> {
        let req = json!({
            "op": "prepare", "rate": rate, "duration_ms": duration.as_millis() as u64,
            "payload_bytes": feed.payload_bytes, "symbols": feed.symbols, "zipf": feed.zipf_s,
            "seed": feed.seed, "shards": shards,
        });
        self.req.send(req.to_string().as_bytes(), 0).context("sending a trial to the publisher")?;
        self.sent();
        let v = self.recv_json("prepare a trial", PREPARE_TIMEOUT)?;
        let measure = v.get("achieved").and_then(Value::as_str);
        if measure != Some(ACHIEVED_MEASURE) {
            let said = measure.map_or("says no measure (an older mdsub)".to_string(), |m| format!("says `{m}`"));
            anyhow::bail!(
                "the trial server at {} {said} for the rate its publisher achieved, where this mdsub's is \
                 `{ACHIEVED_MEASURE}`: its verdicts would not compare with this run's (an older server reads a \
                 loaded host's publisher short); run `mdsub replay --serve-trials` of this mdsub's there",
                self.control
            );
        }
        let eps: Vec<String> = v
            .get("endpoints")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(|e| reachable(e, &self.control)).collect())
            .unwrap_or_default();
        if eps.len() != shards {
            anyhow::bail!("the publisher bound {} endpoint(s) for {shards} shard(s)", eps.len());
        }
        Ok(eps)
    }

    /// Start the schedule (the answer comes with [`RemotePublisher::finish`]).
    pub fn go(&mut self) -> anyhow::Result<()> {
        self.req.send(&b"{\"op\":\"go\"}"[..], 0).context("starting the publisher")?;
        self.sent();
        Ok(())
    }

    /// A request went: the connections ended so far are none of its business.
    fn sent(&mut self) {
        if let Some(w) = self.watch.as_mut() {
            w.service(&self.req);
            self.ended_at_send = w.connections_ended();
        }
    }

    /// Wait for the schedule's end: (messages sent, seconds it took).
    pub fn finish(&mut self, timeout: Duration) -> anyhow::Result<(u64, f64)> {
        let v = self.recv_json("publish", timeout)?;
        let sent = v.get("sent").and_then(Value::as_u64).context("the publisher's answer has no `sent`")?;
        let secs = v.get("send_s").and_then(Value::as_f64).context("the publisher's answer has no `send_s`")?;
        Ok((sent, secs))
    }

    /// Tell the server to end, waiting up to a second for its answer.
    pub fn bye(&mut self) {
        if self.req.send(&b"{\"op\":\"bye\"}"[..], 0).is_ok() && self.req.poll(zmq::POLLIN, 1000).is_ok_and(|n| n > 0) {
            let _ = self.req.recv_bytes(0);
        }
    }
}

/// What the server publishes from.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The control endpoint to bind (`tcp://*:5599`).
    pub control: String,
    /// The data endpoints to bind, one per shard (more shards than given: ephemeral ports on the first's host).
    pub endpoints: Vec<String>,
    pub sndhwm_msgs: i32,
    /// Never send faster than this (msg/s).
    pub max_rate: Option<u64>,
}

/// Largest control request taken (bigger ones drop the peer's connection, libzmq's MAXMSGSIZE).
const MAX_REQUEST_BYTES: i64 = 64 << 10;

/// Serve trials until `bye` or a stop; prints one line per trial with `say`.
pub fn serve(cfg: &ServeConfig, stop: &StopFlag, say: &mut dyn FnMut(&str)) -> anyhow::Result<u64> {
    let ctx = zmq::Context::new();
    let rep = ctx.socket(zmq::REP).context("creating the control socket")?;
    rep.set_linger(0).context("setting LINGER")?;
    // A request is a small JSON object: a peer sending more is disconnected before it is taken.
    rep.set_maxmsgsize(MAX_REQUEST_BYTES).context("setting MAXMSGSIZE")?;
    let bound = crate::zmqx::bind_resolved(&rep, &cfg.control)
        .map_err(|e| anyhow::Error::new(e).context(crate::zmqx::binding(&cfg.control, e)))?;
    say(&format!("serving capacity trials on {bound}"));
    let mut trials = 0u64;
    let mut prepared: Option<(zmq::Context, Publisher, Pacing, Limits, Source)> = None;
    let mut refusals = RefusalLog::new("serve-trials");
    while !stop.is_stopped() {
        match rep.poll(zmq::POLLIN, 100) {
            Ok(0) | Err(zmq::Error::EINTR) => {
                // EINTR: a signal (Ctrl-C); `stop` says whether to end
                refusals.tick(crate::clock::monotonic_ns());
                continue;
            }
            Ok(_) => {}
            Err(e) => return Err(e).context("waiting for a request"),
        }
        // The whole message: a REP that left a frame unread could not answer (EFSM).
        let frames = rep.recv_multipart(0).context("receiving a request")?;
        let v = match request_of(&frames) {
            Ok(v) => v,
            Err((reason, why)) => {
                refusals.refuse(reason, &why, crate::clock::monotonic_ns());
                rep.send(json!({ "error": why }).to_string().as_bytes(), 0).context("answering")?;
                continue;
            }
        };
        let answer = match v.get("op").and_then(Value::as_str) {
            Some("prepare") => match trial_of(&v) {
                Err(why) => {
                    refusals.refuse("bad_trial", &why, crate::clock::monotonic_ns());
                    json!({ "error": why })
                }
                Ok(trial) => match prepare(cfg, trial) {
                    Ok((c, p, pacing, limits, source)) => {
                        let eps = p.endpoints();
                        prepared = Some((c, p, pacing, limits, source));
                        json!({ "endpoints": eps, "achieved": ACHIEVED_MEASURE })
                    }
                    Err(e) => json!({ "error": format!("{e:#}") }),
                },
            },
            Some("go") => match prepared.take() {
                None => json!({ "error": "go before prepare" }),
                Some((c, mut p, pacing, limits, source)) => {
                    say(&format!("trial {}: waiting for the engine to subscribe", trials + 1));
                    let a = run(&mut p, pacing, limits, &source, stop);
                    drop(p);
                    drop(c);
                    trials += 1;
                    match a {
                        Ok((sent, secs)) => {
                            say(&format!(
                                "trial {trials}: sent {sent} msgs in {secs:.3} s ({:.0} msg/s)",
                                sent as f64 / secs.max(1e-9)
                            ));
                            json!({ "sent": sent, "send_s": secs, "achieved": ACHIEVED_MEASURE })
                        }
                        Err(e) => json!({ "error": format!("{e:#}") }),
                    }
                }
            },
            Some("bye") => {
                rep.send(&b"{}"[..], 0).context("answering bye")?;
                break;
            }
            other => {
                let why =
                    format!("unknown op {} (prepare, go, bye)", other.map_or("(none)".into(), |o| format!("`{o}`")));
                refusals.refuse("unknown_op", &why, crate::clock::monotonic_ns());
                json!({ "error": why })
            }
        };
        rep.send(answer.to_string().as_bytes(), 0).context("answering")?;
    }
    Ok(trials)
}

/// The JSON object of a request: one frame. A refusal is (reason, what to answer).
fn request_of(frames: &[Vec<u8>]) -> Result<Value, (&'static str, String)> {
    let [frame] = frames else {
        return Err((
            "multipart_request",
            format!("a request is one frame of JSON; this one had {} frames", frames.len()),
        ));
    };
    match serde_json::from_slice::<Value>(frame) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(("not_json", "not a JSON request: a request is a JSON object".into())),
        Err(e) => Err(("not_json", format!("not a JSON request: {e}"))),
    }
}

type Prepared = (zmq::Context, Publisher, Pacing, Limits, Source);

/// One trial as a `prepare` request asks for it, every field checked.
#[derive(Debug, Clone)]
struct Trial {
    rate: u64,
    duration: Duration,
    shards: usize,
    feed: GeneratorConfig,
}

/// The trial `v` asks for, or why it cannot be run: each number in the range the same
/// setting has on the command line (`--rate`, `--duration`, `--symbols`, `--payload-bytes`,
/// `--zipf`, `--seed`), shards from 1 to as many as a profile may have
/// ([`MAX_THREADS_OF_A_KIND`](crate::profile::MAX_THREADS_OF_A_KIND); each binds a data
/// endpoint of its own), so no profile `mdsub capacity` accepts is refused in the middle of a run.
fn trial_of(v: &Value) -> Result<Trial, String> {
    let whole = |k: &str, lo: u64, hi: u64| -> Result<u64, String> {
        let x = v.get(k).ok_or_else(|| format!("the request has no `{k}`"))?;
        match x.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(format!("`{k}` {x}: not a whole number from {lo} to {hi}")),
        }
    };
    let size = |k: &str| whole(k, 0, u64::MAX).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let zipf = match v.get("zipf") {
        None => 1.0,
        Some(x) => x.as_f64().ok_or_else(|| format!("`zipf` {x}: not a number"))?,
    };
    let feed = GeneratorConfig {
        symbols: size("symbols")?,
        payload_bytes: size("payload_bytes")?,
        zipf_s: zipf,
        seed: whole("seed", 0, u64::MAX)?,
    };
    feed.check()?;
    Ok(Trial {
        rate: whole("rate", 1, crate::replay::MAX_RATE_MSGS_PER_SEC)?,
        duration: Duration::from_millis(whole("duration_ms", 1, crate::clock::MAX_DURATION_S * 1000 - 1)?),
        shards: whole("shards", 1, crate::profile::MAX_THREADS_OF_A_KIND as u64)? as usize,
        feed,
    })
}

/// Bind the data endpoints for `trial`.
fn prepare(cfg: &ServeConfig, trial: Trial) -> anyhow::Result<Prepared> {
    let first = cfg.endpoints.first().cloned().unwrap_or_else(|| "tcp://0.0.0.0:*".into());
    let any_port = match first.rsplit_once(':') {
        Some((host, _)) => format!("{host}:*"),
        None => first.clone(),
    };
    let endpoints =
        (0..trial.shards).map(|k| cfg.endpoints.get(k).cloned().unwrap_or_else(|| any_port.clone())).collect();
    let ctx = zmq::Context::new();
    let pc = PublisherConfig {
        endpoints,
        sndhwm_msgs: cfg.sndhwm_msgs,
        lossless: false,
        publisher_id_base: 0,
        access: Default::default(),
        thread_per_shard: false,
        peer_timeout: crate::replay::DEFAULT_PEER_TIMEOUT,
    };
    let p = Publisher::bind(&ctx, &pc).context("binding the data endpoints")?;
    let sent_rate = cfg.max_rate.map_or(trial.rate, |m| trial.rate.min(m.max(1)));
    let limits = Limits { max_msgs: None, duration: Some(trial.duration) };
    Ok((ctx, p, Pacing::Rate { msgs_per_sec: sent_rate, burst: 1 }, limits, Source::Generator(trial.feed)))
}

fn run(
    p: &mut Publisher,
    pacing: Pacing,
    limits: Limits,
    source: &Source,
    stop: &StopFlag,
) -> anyhow::Result<(u64, f64)> {
    p.wait_for_subscribers_or_stop(1, Duration::from_secs(10), stop).context("waiting for the engine to subscribe")?;
    let stats = p.run(source, pacing, limits, stop, &mut |_| {})?;
    // `send_s` is the time the messages sent took at the rate the pacer achieved, at most the
    // messages sent over the schedule's duration ([`trial::achieved_of`](super::trial::achieved_of)):
    // `sent / send_s` is that rate.
    let sent = stats.sent_total;
    Ok((sent, sent as f64 / super::trial::achieved_of(&stats, limits.duration).max(1e-9)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(shards: usize) -> Value {
        json!({"op": "prepare", "rate": 1000, "duration_ms": 1000, "payload_bytes": 100, "symbols": 10,
               "seed": 1, "shards": shards})
    }

    #[test]
    fn a_trial_takes_as_many_shards_as_a_profile_may_have() {
        // Before, a trial took at most 64 shards while a profile took 256: `mdsub capacity
        // --publisher connect:EP --vary shards=100` was refused by the trial server mid-run.
        let most = crate::profile::MAX_THREADS_OF_A_KIND;
        assert_eq!(trial_of(&prepare(most)).map(|t| t.shards), Ok(most));
        let over = trial_of(&prepare(most + 1)).map(|t| t.shards);
        assert_eq!(over, Err(format!("`shards` {}: not a whole number from 1 to {most}", most + 1)));
    }
}
