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
            shared: Arc::new(Shared { free: ArrayQueue::new(slots.max(1)), buf_bytes, made: AtomicU64::new(0) }),
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
