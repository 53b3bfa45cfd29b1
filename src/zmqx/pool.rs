//! Zero-copy hand-off buffers: a byte buffer one thread fills becomes a libzmq
//! message without a copy (`zmq_msg_init_data`), and comes back, emptied, to
//! the pool it was taken from when libzmq closes that message (on the
//! receiving thread, at its next receive).
//!
//! What this saves over copying a buffer into a fresh libzmq message
//! (`zmq_send`, or `zmq_msg_init_size` and a copy): a copy of the whole buffer
//! and a `malloc`/`free` pair of its size per message, whose `free` runs on
//! the receiving thread. For the engine's batches (kilobytes, allocated by the
//! reader and freed by a worker) that pair made glibc trim and regrow the
//! reader's arena (`madvise`, `mprotect`, then a page fault per 4 KiB page
//! touched again); a pooled buffer stays mapped and is reused as it is.
//! libzmq still allocates its small reference-counted header per message.
//!
//! The free list is crossbeam's lock-free bounded [`ArrayQueue`]; a leased
//! buffer holds only a [`Weak`] reference to its pool, so a buffer that comes
//! back after its pool was dropped (a message closed at context termination)
//! is freed, and so is one that finds the free list full.
//!
//! Idle buffers are given back over time: [`IdleTrim`] is the socket-free rule
//! (the fewest buffers that stayed idle over a window were not needed in it:
//! free them, keeping a few spare), and [`BufferPool::trim`] frees them. The
//! owner samples the pool between rounds, never per message.

use std::ops::{Deref, DerefMut};
use std::os::raw::c_void;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use crossbeam::queue::ArrayQueue;

use super::frame::Frame;

/// A pool of byte buffers for zero-copy messages, shared by the thread that
/// fills them and the threads whose receives give them back.
pub struct BufferPool {
    shared: Arc<Shared>,
}

struct Shared {
    free: ArrayQueue<Box<Lease>>,
    /// Capacity a new buffer starts with.
    buf_bytes: usize,
    /// Buffers made because the free list was empty.
    made: AtomicU64,
    /// Idle buffers freed by [`BufferPool::trim`].
    freed: AtomicU64,
}

/// A buffer taken from a [`BufferPool`]: derefs to its `Vec<u8>` (cleared
/// when taken). [`BufferPool::message`] turns it into a frame without a copy.
pub struct Lease {
    buf: Vec<u8>,
    home: Weak<Shared>,
}

impl BufferPool {
    /// A pool that keeps up to `slots` idle buffers (at least 1), each made
    /// with `buf_bytes` of capacity (a buffer grows like any `Vec` and keeps
    /// its capacity when it comes back).
    pub fn new(slots: usize, buf_bytes: usize) -> Self {
        BufferPool {
            shared: Arc::new(Shared {
                free: ArrayQueue::new(slots.max(1)),
                buf_bytes,
                made: AtomicU64::new(0),
                freed: AtomicU64::new(0),
            }),
        }
    }

    /// An empty buffer: an idle one, or a new one when none is idle.
    pub fn take(&self) -> Box<Lease> {
        match self.shared.free.pop() {
            Some(lease) => lease,
            None => {
                self.shared.made.fetch_add(1, Relaxed);
                Box::new(Lease { buf: Vec::with_capacity(self.shared.buf_bytes), home: Arc::downgrade(&self.shared) })
            }
        }
    }

    /// Buffers made so far (each time [`BufferPool::take`] found none idle).
    pub fn made(&self) -> u64 {
        self.shared.made.load(Relaxed)
    }

    /// Idle buffers in the pool now.
    pub fn idle(&self) -> usize {
        self.shared.free.len()
    }

    /// Free up to `n` idle buffers (what [`IdleTrim::observe`] said was not needed); how many
    /// were freed.
    pub fn trim(&self, n: usize) -> usize {
        let freed = (0..n).map_while(|_| self.shared.free.pop()).count();
        self.shared.freed.fetch_add(freed as u64, Relaxed);
        freed
    }

    /// Idle buffers freed by [`BufferPool::trim`] so far.
    pub fn freed(&self) -> u64 {
        self.shared.freed.load(Relaxed)
    }

    /// A frame whose content is `lease`'s bytes, not copied. The buffer comes
    /// back to its pool (emptied) when libzmq closes the message: after the
    /// receiver received it and received again or dropped it, or when the
    /// frame is dropped unsent.
    pub fn message(lease: Box<Lease>) -> Frame {
        let len = lease.buf.len();
        let raw = Box::into_raw(lease);
        // SAFETY: `raw` is a valid, uniquely owned Lease; its buffer's pointer
        // is non-null (a Vec's, dangling only when empty, which libzmq
        // accepts for size 0) and stays valid and unmoved until libzmq calls
        // `give_back` with `raw` as the hint, exactly once, which takes the
        // Lease back. Nothing touches the buffer in between.
        unsafe { Frame::from_data((*raw).buf.as_mut_ptr().cast(), len, Some(give_back), raw.cast()) }
    }

    /// Give a buffer back without sending it (the same path a closed message takes).
    pub fn give(lease: Box<Lease>) {
        home(lease);
    }
}

/// When to give idle buffers back: a socket-free rule on samples of a pool's idle count.
///
/// The fewest buffers that were idle at any sample of a window (its low-water mark) were not
/// needed in that window; at the first sample after the window ends, all of them but `keep`
/// are freed and a new window starts. A buffer made in a window ([`IdleTrim::grew`]: the pool
/// was empty) makes its low-water mark 0, so a window with a back-pressure episode frees
/// nothing, and a pattern of episodes closer together than the window keeps its buffers.
/// Samples are taken between rounds (when idle, and once every so many rounds), so a dip
/// between two samples may be missed: then a buffer freed is made again when needed (and
/// counted as made), which `keep` makes rare.
#[derive(Debug, Clone)]
pub struct IdleTrim {
    window_ns: u64,
    keep: usize,
    window_start_ns: Option<u64>,
    lowest_idle: usize,
}

impl IdleTrim {
    /// Free what stayed idle for a whole `window_ns`, keeping `keep` idle buffers spare.
    pub fn new(window_ns: u64, keep: usize) -> Self {
        IdleTrim { window_ns, keep, window_start_ns: None, lowest_idle: usize::MAX }
    }

    /// The pool was found empty (it made a buffer) in this window: nothing in it was spare.
    pub fn grew(&mut self) {
        self.lowest_idle = 0;
    }

    /// A sample: `idle` buffers at `now_ns`. Returns how many to free now (0 until a window
    /// has ended).
    pub fn observe(&mut self, idle: usize, now_ns: u64) -> usize {
        let start = *self.window_start_ns.get_or_insert(now_ns);
        self.lowest_idle = self.lowest_idle.min(idle);
        if now_ns.saturating_sub(start) < self.window_ns {
            return 0;
        }
        let free = self.lowest_idle.saturating_sub(self.keep);
        self.window_start_ns = Some(now_ns);
        self.lowest_idle = idle - free;
        free
    }
}

/// Clear `lease` and put it back on its pool's free list; free it when the
/// pool is gone or full.
fn home(mut lease: Box<Lease>) {
    lease.buf.clear();
    if let Some(shared) = lease.home.upgrade() {
        // Full: the returned lease is dropped (freed) here.
        let _ = shared.free.push(lease);
    }
}

/// libzmq's free function for pooled messages: the hint is the Lease.
unsafe extern "C" fn give_back(_data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the pointer `BufferPool::message` made with
    // Box::into_raw, and libzmq calls this once per message.
    let lease = unsafe { Box::from_raw(hint.cast::<Lease>()) };
    home(lease);
}

impl Deref for Lease {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_message_gives_its_buffer_back_emptied_and_it_is_reused() {
        let pool = BufferPool::new(4, 64);
        let mut lease = pool.take();
        assert_eq!((pool.made(), lease.capacity()), (1, 64));
        lease.extend_from_slice(b"hello");
        let ptr = lease.as_ptr();
        let frame = BufferPool::message(lease);
        assert_eq!(&frame[..], b"hello");
        assert_eq!(frame.as_ptr(), ptr, "not copied");
        assert_eq!(pool.idle(), 0, "leased while the frame lives");
        drop(frame);
        assert_eq!(pool.idle(), 1);
        let again = pool.take();
        assert!(again.is_empty(), "emptied on the way back");
        assert_eq!((again.as_ptr(), pool.made()), (ptr, 1), "the same buffer, none made");
    }

    #[test]
    fn a_full_pool_frees_what_comes_back_and_a_dropped_pool_frees_the_rest() {
        let pool = BufferPool::new(1, 8);
        let (a, b) = (pool.take(), pool.take());
        assert_eq!(pool.made(), 2);
        BufferPool::give(a);
        BufferPool::give(b);
        assert_eq!(pool.idle(), 1, "one slot: the second is freed");
        let c = pool.take();
        let frame = BufferPool::message(c);
        drop(pool);
        // The message outlives its pool (closed at context termination): freed, no crash.
        drop(frame);
    }

    #[test]
    fn trim_frees_idle_buffers_and_counts_them() {
        let pool = BufferPool::new(8, 8);
        let leases: Vec<_> = (0..5).map(|_| pool.take()).collect();
        leases.into_iter().for_each(BufferPool::give);
        assert_eq!((pool.made(), pool.idle()), (5, 5));
        assert_eq!(pool.trim(3), 3);
        assert_eq!((pool.idle(), pool.freed()), (2, 3));
        assert_eq!(pool.trim(10), 2, "no more than are idle");
        assert_eq!((pool.idle(), pool.freed()), (0, 5));
        let _ = pool.take();
        assert_eq!(pool.made(), 6, "made again when needed");
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn idle_trim_frees_what_stayed_idle_for_a_window_keeping_a_spare() {
        use crate::clock::{Clock, ManualClock};
        let clock = ManualClock::new(1_000 * S);
        let mut t = IdleTrim::new(30 * S, 2);
        // After a back-pressure episode: 1000 buffers idle, 3 to 6 in use at a time.
        for idle in [1000, 997, 995, 998] {
            assert_eq!(t.observe(idle, clock.now_ns()), 0, "within the first window");
            clock.advance_ns(5 * S);
        }
        clock.advance_ns(15 * S);
        // 30 s on: the low-water mark was 995, so 993 go and 2 stay spare.
        assert_eq!(t.observe(999, clock.now_ns()), 993);
        // The next window starts from what is left (6): in use again, down to 3 idle.
        clock.advance_ns(10 * S);
        assert_eq!(t.observe(3, clock.now_ns()), 0);
        clock.advance_ns(20 * S);
        assert_eq!(t.observe(6, clock.now_ns()), 1, "3 stayed idle, 2 kept");
        clock.advance_ns(30 * S);
        assert_eq!(t.observe(5, clock.now_ns()), 3, "5 idle all along (the window's start), 2 kept");
        clock.advance_ns(30 * S);
        assert_eq!(t.observe(2, clock.now_ns()), 0, "never below the spare");
    }

    #[test]
    fn idle_trim_frees_nothing_from_a_window_in_which_the_pool_grew() {
        use crate::clock::{Clock, ManualClock};
        let clock = ManualClock::new(0);
        let mut t = IdleTrim::new(30 * S, 2);
        assert_eq!(t.observe(500, clock.now_ns()), 0);
        // An episode: the pool ran dry and made buffers; the samples missed the dip.
        t.grew();
        clock.advance_ns(31 * S);
        assert_eq!(t.observe(800, clock.now_ns()), 0, "every buffer was needed in that window");
        // A quiet window after it: the excess goes.
        clock.advance_ns(31 * S);
        assert_eq!(t.observe(800, clock.now_ns()), 798);
        // A clock that steps back does not end a window.
        assert_eq!(t.observe(2, 0), 0);
    }

    #[test]
    fn buffers_come_back_when_the_receiver_receives_again() {
        let ctx = zmq::Context::new();
        let mut push = ctx.socket(zmq::PUSH).expect("push");
        let pull = ctx.socket(zmq::PULL).expect("pull");
        pull.bind("inproc://pool-test").expect("bind");
        push.connect("inproc://pool-test").expect("connect");
        let pool = BufferPool::new(8, 16);
        let mut msg = zmq::Message::new();
        for i in 0..100u8 {
            let mut lease = pool.take();
            lease.extend_from_slice(&[i; 3]);
            BufferPool::message(lease).send(&mut push, 0).expect("send");
            if i % 2 == 1 {
                // Two in flight, then both received: the first comes back at the second receive.
                pull.recv(&mut msg, 0).expect("recv");
                assert_eq!(&msg[..], &[i - 1; 3]);
                pull.recv(&mut msg, 0).expect("recv");
                assert_eq!(&msg[..], &[i; 3], "in order, intact");
            }
        }
        // Two queued and the one the receiver still holds: three buffers for all 100 messages.
        assert_eq!(pool.made(), 3);
        assert_eq!(pool.idle(), 2);
        drop(msg);
        assert_eq!(pool.idle(), 3);
    }
}
