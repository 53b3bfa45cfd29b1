//! Socket-free Binary Star state machine (the guide's bstar), driven by `(event, now_ns)`.
//!
//! PRIMARY/BACKUP → ACTIVE/PASSIVE from peer heartbeats and client votes; no sockets and no
//! clock of its own, so it is tested exhaustively with a manual clock.
//!
//! Rules (the guide's, plus one noted deviation):
//! - PRIMARY: peer BACKUP → ACTIVE; peer ACTIVE → PASSIVE; a client request is accepted (and
//!   makes us ACTIVE) only when the peer has been silent past its expiry (*deviation*: the guide's
//!   primary accepts clients while staying PRIMARY, where clonesrv6 then neither publishes nor
//!   applies updates; here a lone primary becomes a working ACTIVE server instead).
//! - BACKUP: peer ACTIVE → PASSIVE; client requests are rejected.
//! - PRIMARY hearing PRIMARY, BACKUP hearing BACKUP → fatal (both servers were given the same
//!   role; *addition*: the guide's pair would wait forever).
//! - ACTIVE: peer ACTIVE → fatal (split brain), unless held after a pause (below: then PASSIVE);
//!   everything else accepted.
//! - PASSIVE: peer PRIMARY or BACKUP (a restarting peer) → ACTIVE; peer PASSIVE → fatal; a client
//!   request → ACTIVE only when the peer is silent past its expiry (failover needs *both* a dead
//!   peer and a client that asks), otherwise rejected.
//!
//! *Addition*, a **pause**: the machine is driven at every step of the server's loop, so a gap
//! between two calls longer than the peer's timeout (two heartbeats, at least [`PAUSE_MIN_NS`])
//! means this process did not run (SIGSTOP, a VM pause): the peer may have taken over meanwhile,
//! and its heartbeats saying so may still wait unread. So the machine does not trust its old
//! view ([`BStar::observe`]): the peer counts as alive again for one timeout (its silence was
//! not heard), and an ACTIVE server is **held**: it sends no heartbeat and serves no client until
//! the peer says ACTIVE (then it steps down to PASSIVE, where the guide's rule would have stopped
//! both) or one timeout passes without that (then it is ACTIVE again). Before, the paused server
//! sent its overdue ACTIVE heartbeat before it read the peer's: the peer stopped, and then so
//! did it.

/// Which half of the pair this server is configured as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `--primary`.
    Primary,
    /// `--backup`.
    Backup,
}

/// Server state; the numbers are what goes on the wire (the guide's enum, sent as decimal text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Primary, waiting for the peer.
    Primary = 1,
    /// Backup, waiting for the peer.
    Backup = 2,
    /// Serving clients.
    Active = 3,
    /// Standing by.
    Passive = 4,
}

impl State {
    /// Parse the peer's heartbeat frame (decimal `1`..`4`).
    pub fn from_wire(frame: &[u8]) -> Option<State> {
        match frame {
            b"1" => Some(State::Primary),
            b"2" => Some(State::Backup),
            b"3" => Some(State::Active),
            b"4" => Some(State::Passive),
            _ => None,
        }
    }

    /// The heartbeat frame for this state.
    pub fn to_wire(self) -> &'static [u8] {
        match self {
            State::Primary => b"1",
            State::Backup => b"2",
            State::Active => b"3",
            State::Passive => b"4",
        }
    }

    /// Lower-case name for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            State::Primary => "primary",
            State::Backup => "backup",
            State::Active => "active",
            State::Passive => "passive",
        }
    }
}

/// Input to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A heartbeat from the peer saying its state.
    Peer(State),
    /// A client asked for a snapshot (a vote for this server).
    ClientRequest,
}

/// What the machine decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// For [`Event::ClientRequest`]: serve it (true) or ignore it (false).
    pub accepted: bool,
    /// `Some((from, to))` when the state changed.
    pub transition: Option<(State, State)>,
}

/// Shortest gap between two calls taken for a pause, whatever the heartbeat: a server's loop
/// waits at most 100 ms for input between steps (the runner's `block` idle wait), so a gap this
/// long is a process that did not run, not an idle one.
pub const PAUSE_MIN_NS: u64 = 250_000_000;

/// What [`BStar::observe`] noticed about this process's own run, for the server to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The machine was not driven for `gap_ns`, past the peer's timeout: this process did not
    /// run. In `state`; ACTIVE is held (see the module doc).
    Resumed {
        /// How long nothing ran.
        gap_ns: u64,
        /// The state then.
        state: State,
    },
    /// The hold after a pause ended without the peer saying ACTIVE: ACTIVE again.
    HoldOver,
}

/// A fatal condition: both servers claim the same role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BStarError {
    /// Both servers ACTIVE.
    /// The guide's bstar rule: the first of the two to hear the other gives up; the other
    /// usually keeps serving (no more heartbeats come from the one that gave up).
    #[error(
        "split brain: peer is active while we are active (the guide's bstar rule: the first of the two \
         to hear it gives up; restarted, this server rejoins as passive)"
    )]
    DualActive,
    /// Both servers PASSIVE.
    #[error("peer is passive while we are passive: nobody would serve")]
    DualPassive,
    /// Both servers configured with the same role (two `--primary` or two `--backup`).
    #[error("the peer announces itself as {0} too: start one server with --primary and the other with --backup")]
    SameRole(&'static str),
}

/// The Binary Star machine.
#[derive(Debug, Clone)]
pub struct BStar {
    state: State,
    heartbeat_ns: u64,
    peer_expiry_ns: u64,
    next_heartbeat_ns: u64,
    /// The latest time the machine was driven (an event, a heartbeat check).
    last_ns: u64,
    /// Held after a pause until then (or until the peer says ACTIVE): no heartbeats, no clients.
    held_until_ns: Option<u64>,
    /// What [`BStar::observe`] noticed that the server has not taken yet.
    pause: Option<Pause>,
}

impl BStar {
    /// Start as `role` at `now_ns`; the peer counts as alive until `now_ns + 2 × heartbeat`.
    pub fn new(role: Role, heartbeat_ns: u64, now_ns: u64) -> Self {
        BStar {
            state: match role {
                Role::Primary => State::Primary,
                Role::Backup => State::Backup,
            },
            heartbeat_ns,
            peer_expiry_ns: now_ns.saturating_add(heartbeat_ns.saturating_mul(2)),
            next_heartbeat_ns: now_ns,
            last_ns: now_ns,
            held_until_ns: None,
            pause: None,
        }
    }

    /// The peer's timeout: two heartbeats.
    fn peer_timeout_ns(&self) -> u64 {
        self.heartbeat_ns.saturating_mul(2)
    }

    /// Note that the machine runs at `now_ns` (every other call taking a time does too): after
    /// a gap past the peer's timeout (at least [`PAUSE_MIN_NS`]) this process did not run, so the
    /// peer counts as alive for one more timeout and an ACTIVE server is held (module doc); a
    /// hold whose time has passed ends. What it noticed waits in [`BStar::take_pause`].
    pub fn observe(&mut self, now_ns: u64) {
        let gap = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        let timeout = self.peer_timeout_ns();
        if gap > timeout.max(PAUSE_MIN_NS) {
            // The peer's silence so far was not listened to: it says nothing.
            self.peer_expiry_ns = now_ns.saturating_add(timeout);
            if self.state == State::Active {
                self.held_until_ns = Some(now_ns.saturating_add(timeout));
            }
            if matches!(self.state, State::Active | State::Passive) {
                self.pause = Some(Pause::Resumed { gap_ns: gap, state: self.state });
            }
        } else if self.held_until_ns.is_some_and(|t| now_ns >= t) {
            self.held_until_ns = None;
            self.next_heartbeat_ns = 0; // the peer hears us at once
            self.pause = Some(Pause::HoldOver);
        }
    }

    /// What [`BStar::observe`] noticed since the last call, once.
    pub fn take_pause(&mut self) -> Option<Pause> {
        self.pause.take()
    }

    /// Held after a pause: ACTIVE, but sending no heartbeat and serving no client until the
    /// peer has been heard or one timeout has passed.
    pub fn held(&self) -> bool {
        self.held_until_ns.is_some()
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True when the peer has been silent past its expiry.
    pub fn peer_expired(&self, now_ns: u64) -> bool {
        now_ns >= self.peer_expiry_ns
    }

    /// If a heartbeat is due at `now_ns`, schedule the next and return the state to send.
    pub fn heartbeat_due(&mut self, now_ns: u64) -> Option<State> {
        self.observe(now_ns);
        if self.held() || now_ns < self.next_heartbeat_ns {
            return None;
        }
        self.next_heartbeat_ns = now_ns.saturating_add(self.heartbeat_ns);
        Some(self.state)
    }

    /// Make the next heartbeat due at once (after a state change, so the peer learns it quickly).
    pub fn heartbeat_now(&mut self) {
        self.next_heartbeat_ns = 0;
    }

    /// Nanoseconds until the peer counts as silent (0 once it does).
    pub fn ns_to_expiry(&self, now_ns: u64) -> u64 {
        self.peer_expiry_ns.saturating_sub(now_ns)
    }

    /// Nanoseconds until the next heartbeat is due.
    pub fn ns_to_heartbeat(&self, now_ns: u64) -> u64 {
        self.next_heartbeat_ns.saturating_sub(now_ns)
    }

    /// Feed one event at `now_ns`.
    pub fn on_event(&mut self, event: Event, now_ns: u64) -> Result<Outcome, BStarError> {
        self.observe(now_ns);
        if let Event::Peer(_) = event {
            self.peer_expiry_ns = now_ns.saturating_add(self.heartbeat_ns.saturating_mul(2));
        }
        let from = self.state;
        let mut accepted = true;
        use State::*;
        match (self.state, event) {
            (Primary, Event::Peer(Backup)) => self.state = Active,
            (Primary, Event::Peer(Active)) => self.state = Passive,
            (Primary, Event::ClientRequest) => {
                if self.peer_expired(now_ns) {
                    self.state = Active;
                } else {
                    accepted = false;
                }
            }
            (Primary, Event::Peer(Primary)) => return Err(BStarError::SameRole("primary")),
            (Backup, Event::Peer(Backup)) => return Err(BStarError::SameRole("backup")),
            (Backup, Event::Peer(Active)) => self.state = Passive,
            (Backup, Event::ClientRequest) => accepted = false,
            // Paused past the peer's timeout, and the peer took over meanwhile: it serves the
            // clients now; we step down (the guide's rule would stop whichever heard first).
            (Active, Event::Peer(Active)) if self.held() => {
                self.held_until_ns = None;
                self.state = Passive;
            }
            (Active, Event::ClientRequest) if self.held() => accepted = false,
            (Active, Event::Peer(Active)) => return Err(BStarError::DualActive),
            (Passive, Event::Peer(Primary)) | (Passive, Event::Peer(Backup)) => self.state = Active,
            (Passive, Event::Peer(Passive)) => return Err(BStarError::DualPassive),
            (Passive, Event::ClientRequest) => {
                if self.peer_expired(now_ns) {
                    self.state = Active;
                } else {
                    accepted = false;
                }
            }
            _ => {}
        }
        let transition = (from != self.state).then_some((from, self.state));
        Ok(Outcome { accepted, transition })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    const HB: u64 = 1_000_000_000;

    /// Drive `m` from its last call to `to` the way a running server does (a call every 50 ms),
    /// so the time between is not taken for a pause.
    fn run_to(m: &mut BStar, to: u64) {
        let mut t = m.last_ns;
        while t < to {
            t = (t + HB / 20).min(to);
            m.observe(t);
        }
    }

    fn machine_in(state: State, now: u64) -> BStar {
        let role = if state == Backup { Role::Backup } else { Role::Primary };
        let mut m = BStar::new(role, HB, now);
        m.state = state;
        m
    }

    /// Expected result for every (state, event, peer alive?) combination.
    fn expected(state: State, event: Event, peer_alive: bool) -> Result<(bool, State), BStarError> {
        match (state, event) {
            (Primary, Event::Peer(Backup)) => Ok((true, Active)),
            (Primary, Event::Peer(Active)) => Ok((true, Passive)),
            (Primary, Event::ClientRequest) if peer_alive => Ok((false, Primary)),
            (Primary, Event::ClientRequest) => Ok((true, Active)),
            (Primary, Event::Peer(Primary)) => Err(BStarError::SameRole("primary")),
            (Backup, Event::Peer(Backup)) => Err(BStarError::SameRole("backup")),
            (Backup, Event::Peer(Active)) => Ok((true, Passive)),
            (Backup, Event::ClientRequest) => Ok((false, Backup)),
            (Active, Event::Peer(Active)) => Err(BStarError::DualActive),
            (Passive, Event::Peer(Primary | Backup)) => Ok((true, Active)),
            (Passive, Event::Peer(Passive)) => Err(BStarError::DualPassive),
            (Passive, Event::ClientRequest) if peer_alive => Ok((false, Passive)),
            (Passive, Event::ClientRequest) => Ok((true, Active)),
            (s, _) => Ok((true, s)),
        }
    }

    #[test]
    fn exhaustive_table() {
        let states = [Primary, Backup, Active, Passive];
        let mut events: Vec<Event> = states.iter().map(|s| Event::Peer(*s)).collect();
        events.push(Event::ClientRequest);
        let mut checked = 0;
        for &s in &states {
            for &e in &events {
                for peer_alive in [true, false] {
                    // Peer last heard at t=10 s; "alive" checks at 10.5 s, "silent" at 13 s.
                    let mut m = machine_in(s, 10 * HB);
                    m.on_event(Event::Peer(Primary), 10 * HB).ok();
                    m.state = s;
                    let now = if peer_alive { 10 * HB + HB / 2 } else { 13 * HB };
                    run_to(&mut m, now);
                    let got = m.on_event(e, now).map(|o| (o.accepted, m.state()));
                    let want = expected(s, e, peer_alive || matches!(e, Event::Peer(_)));
                    assert_eq!(got, want, "state {s:?} event {e:?} peer_alive {peer_alive}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 40);
    }

    #[test]
    fn failover_needs_silent_peer_and_a_client_vote() {
        let mut backup = BStar::new(Role::Backup, HB, 0);
        assert_eq!(backup.on_event(Event::Peer(Active), HB).expect("ok").transition, Some((Backup, Passive)));
        // Peer heard at 1 s; at 2.9 s it is still alive: vote rejected.
        assert!(!backup.on_event(Event::ClientRequest, 2 * HB + 9 * HB / 10).expect("ok").accepted);
        // Peer silent but nobody asks: stays passive.
        assert_eq!(backup.state(), Passive);
        // At 3 s the peer has expired and a client asks: takeover.
        let o = backup.on_event(Event::ClientRequest, 3 * HB).expect("ok");
        assert!(o.accepted);
        assert_eq!(o.transition, Some((Passive, Active)));
        // The primary restarts and announces PRIMARY; we stay active, it will go passive.
        run_to(&mut backup, 10 * HB);
        assert_eq!(backup.on_event(Event::Peer(Primary), 10 * HB).expect("ok").transition, None);
        let mut primary = BStar::new(Role::Primary, HB, 10 * HB);
        assert_eq!(primary.on_event(Event::Peer(Active), 10 * HB).expect("ok").transition, Some((Primary, Passive)));
    }

    /// An ACTIVE primary at 1 s, then paused (SIGSTOP) until 6 s while its backup took over.
    fn paused_active() -> BStar {
        let mut m = BStar::new(Role::Primary, HB, 0);
        assert_eq!(m.on_event(Event::Peer(Backup), 0).expect("ok").transition, Some((Primary, Active)));
        run_to(&mut m, HB);
        assert_eq!(m.heartbeat_due(HB), Some(Active));
        m
    }

    #[test]
    fn a_paused_active_sends_no_heartbeat_and_steps_down_when_the_peer_says_active() {
        // Issue bstar15-3: resumed, the server sent its overdue ACTIVE heartbeat before it read
        // the backup's queued ACTIVE one: the backup stopped (split brain), then so did it.
        let mut m = paused_active();
        assert_eq!(m.heartbeat_due(6 * HB), None, "held: no overdue ACTIVE heartbeat");
        assert_eq!(m.take_pause(), Some(Pause::Resumed { gap_ns: 5 * HB, state: Active }));
        assert_eq!(m.take_pause(), None, "said once");
        assert!(m.held());
        assert!(!m.on_event(Event::ClientRequest, 6 * HB).expect("ok").accepted, "no client while held");
        let o = m.on_event(Event::Peer(Active), 6 * HB).expect("a step down, not a split brain");
        assert_eq!(o.transition, Some((Active, Passive)));
        assert!(!m.held());
        assert_eq!(m.heartbeat_due(6 * HB), Some(Passive));
    }

    #[test]
    fn a_paused_active_whose_peer_did_not_take_over_is_active_again_after_one_timeout() {
        let mut m = paused_active();
        // The backup's PASSIVE heartbeats queued during the pause come first: still held, as an
        // ACTIVE one may follow them.
        assert_eq!(m.on_event(Event::Peer(Passive), 6 * HB).expect("ok").transition, None);
        assert_eq!(m.heartbeat_due(6 * HB), None);
        run_to(&mut m, 8 * HB - 1);
        assert!(m.held() && m.heartbeat_due(8 * HB - 1).is_none());
        m.take_pause();
        run_to(&mut m, 8 * HB);
        assert_eq!(m.take_pause(), Some(Pause::HoldOver));
        assert_eq!(m.heartbeat_due(8 * HB), Some(Active), "at once");
        assert!(m.on_event(Event::ClientRequest, 8 * HB).expect("ok").accepted);
        // Not held any more: the guide's rule again.
        assert_eq!(m.on_event(Event::Peer(Active), 8 * HB), Err(BStarError::DualActive));
    }

    #[test]
    fn a_paused_passive_takes_no_vote_before_the_peer_could_be_heard() {
        let mut m = BStar::new(Role::Backup, HB, 0);
        m.on_event(Event::Peer(Active), 0).expect("ok");
        run_to(&mut m, HB);
        // Paused 5 s: the active's heartbeats wait unread; a vote now must not make us active.
        assert!(!m.on_event(Event::ClientRequest, 6 * HB).expect("ok").accepted);
        assert_eq!(m.take_pause(), Some(Pause::Resumed { gap_ns: 5 * HB, state: Passive }));
        assert!(!m.held(), "a passive server is not held: it serves nobody anyway");
        run_to(&mut m, 8 * HB);
        let o = m.on_event(Event::ClientRequest, 8 * HB).expect("ok");
        assert!(o.accepted, "silent for a timeout after the pause: a takeover");
        assert_eq!(o.transition, Some((Passive, Active)));
    }

    #[test]
    fn a_gap_shorter_than_the_pause_floor_is_no_pause() {
        // A 10 ms heartbeat is shorter than the loop's idle wait: that gap is not a pause.
        let mut m = BStar::new(Role::Primary, HB / 100, 0);
        m.on_event(Event::Peer(Backup), 0).expect("ok");
        assert_eq!(m.heartbeat_due(PAUSE_MIN_NS), Some(Active));
        assert_eq!(m.take_pause(), None);
        assert_eq!(m.heartbeat_due(2 * PAUSE_MIN_NS + 1), None, "held past the floor");
        assert!(matches!(m.take_pause(), Some(Pause::Resumed { .. })));
    }

    #[test]
    fn heartbeats_are_scheduled() {
        let mut m = BStar::new(Role::Primary, HB, 0);
        assert_eq!(m.heartbeat_due(0), Some(Primary));
        assert_eq!(m.heartbeat_due(HB - 1), None);
        assert_eq!(m.ns_to_heartbeat(HB - 1), 1);
        assert_eq!(m.heartbeat_due(HB), Some(Primary));
        // A lone primary becomes active on a vote once the (absent) peer has expired.
        assert!(!m.on_event(Event::ClientRequest, HB).expect("ok").accepted);
        assert!(m.on_event(Event::ClientRequest, 2 * HB).expect("ok").accepted);
        assert_eq!(m.state(), Active);
        assert_eq!(State::from_wire(m.state().to_wire()), Some(Active));
        assert_eq!(State::from_wire(b"9"), None);
    }
}
