//! The engine's monitor PUB (`snail-monitor`): every scream (a verdict
//! change on any site) goes out as it happens, and the state of every site
//! every [`defaults::STATE_EVERY_MS`](super::defaults::STATE_EVERY_MS), so an
//! operator or a dashboard subscribes instead of polling.
//!
//! Each message is two frames (the guide's envelope: topic first, so SUB
//! prefix filters work): `snail.<verdict in lower case>` (`snail.snail`,
//! `snail.stop`, `snail.warn`, `snail.ok`) with a [`Scream`] as JSON, or
//! `snail.state` with a [`SnailReport`](super::SnailReport) as JSON. The
//! format is specified in `docs/SNAIL.md`.

use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::Receiver;

use super::{Scream, SnailBoard};
use crate::agent::{Agent, AgentError, Inbox, Step};
use crate::clock;
use crate::security::{SecureError, ServerAccess, ZapService};

/// Topic prefix of every monitor message.
pub const TOPIC_PREFIX: &str = "snail.";
/// Topic of the periodic state message.
pub const STATE_TOPIC: &str = "snail.state";

/// The monitor agent: screams from a channel, state from the board, out on a PUB.
pub struct MonitorAgent {
    publisher: zmq::Socket,
    screams: Inbox<Scream>,
    board: Arc<SnailBoard>,
    state_every_ns: u64,
    next_state_ns: u64,
    /// Messages libzmq refused (no such thing on a PUB unless it is closing).
    pub failed: u64,
}

impl MonitorAgent {
    /// Bind a PUB at `endpoint` in `ctx` under `access` (whose ZAP handler, `zap`,
    /// if it needs one, is already bound in `ctx`; it also watches the PUB for subscribers
    /// libzmq refuses in their handshake); returns the agent and the endpoint as bound
    /// (`tcp://127.0.0.1:*` resolved to its port).
    pub fn bind(
        ctx: &zmq::Context,
        endpoint: &str,
        (access, zap): (&ServerAccess, Option<&ZapService>),
        screams: Receiver<Scream>,
        board: Arc<SnailBoard>,
        state_every: Duration,
    ) -> Result<(MonitorAgent, String), AgentError> {
        let zerr = |context| move |source| AgentError::Zmq { role: "snail-monitor".into(), context, source };
        let mut publisher = ctx.socket(zmq::PUB).map_err(zerr("creating the monitor PUB"))?;
        // A croak is the last thing the engine says: give it a second to leave.
        publisher.set_linger(1_000).map_err(zerr("setting LINGER"))?;
        crate::zmqx::bound_subscriptions(&publisher).map_err(zerr("setting MAXMSGSIZE"))?;
        access.secure(ctx, &mut publisher, zap).map_err(|e| match e {
            SecureError::Options(source) => zerr("setting the access options")(source),
            SecureError::Watch(e) => e,
        })?;
        let bound = crate::zmqx::bind_resolved(&publisher, endpoint).map_err(|e| AgentError::Fatal {
            role: "snail-monitor".into(),
            message: format!("binding the monitor PUB to {endpoint}{}: {e}", crate::zmqx::bind_hint(e)),
        })?;
        let agent = MonitorAgent {
            publisher,
            screams: Inbox::new(screams),
            board,
            state_every_ns: state_every.as_nanos().max(1) as u64,
            next_state_ns: 0,
            failed: 0,
        };
        Ok((agent, bound))
    }

    fn send(&mut self, topic: &str, body: &[u8]) {
        let ok = self.publisher.send(topic.as_bytes(), zmq::SNDMORE | zmq::DONTWAIT).is_ok()
            && self.publisher.send(body, zmq::DONTWAIT).is_ok();
        if !ok {
            self.failed += 1;
        }
    }

    fn send_scream(&mut self, s: &Scream) {
        let topic = format!("{TOPIC_PREFIX}{}", s.verdict.name().to_ascii_lowercase());
        match serde_json::to_vec(s) {
            Ok(body) => self.send(&topic, &body),
            Err(_) => self.failed += 1,
        }
    }

    fn send_state(&mut self) {
        match serde_json::to_vec(&self.board.report()) {
            Ok(body) => self.send(STATE_TOPIC, &body),
            Err(_) => self.failed += 1,
        }
    }
}

impl Agent for MonitorAgent {
    fn role(&self) -> &str {
        "snail-monitor"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let mut n = 0;
        while let Some(s) = self.screams.next() {
            self.send_scream(&s);
            n += 1;
        }
        let gone = self.screams.is_closed();
        let now = clock::monotonic_ns();
        if now >= self.next_state_ns || gone {
            self.next_state_ns = now.saturating_add(self.state_every_ns);
            self.send_state();
            n += 1;
        }
        // Every site's guard is gone (the engine's readers and workers ended):
        // the last state went out above.
        if gone {
            return Ok(Step::Finished(n));
        }
        Ok(Step::Worked(n))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let left = self.next_state_ns.saturating_sub(clock::monotonic_ns());
        self.screams.wait(timeout.min(Duration::from_nanos(left)));
    }
}
