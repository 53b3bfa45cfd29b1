//! One ZeroMQ frame held as libzmq's own `zmq_msg_t`, so that a send that
//! fails leaves it intact to be sent again.
//!
//! The `zmq` crate's `Message` is consumed by `Socket::send` whether the send
//! succeeds or not, so a non-blocking send that meets a full queue (EAGAIN on
//! an XPUB with ZMQ_XPUB_NODROP) loses the message. libzmq itself keeps the
//! message on failure (`zmq_msg_send`: "the message is not sent and the
//! caller keeps ownership"): [`Frame`] exposes exactly that, which is what a
//! lossless proxy needs to wait and retry without copying every message.

use std::mem::MaybeUninit;
use std::ops::Deref;
use std::os::raw::c_int;

/// One frame (`zmq_msg_t`), closed on drop; derefs to its bytes.
pub struct Frame {
    msg: zmq_sys::zmq_msg_t,
}

// SAFETY: a zmq_msg_t may be moved between threads (libzmq's own queues do);
// it has no thread affinity, and `Frame` gives no shared mutable access.
unsafe impl Send for Frame {}

/// A libzmq return code as a result: below zero, the error in errno.
fn check(rc: c_int) -> zmq::Result<()> {
    if rc < 0 {
        // SAFETY: zmq_errno only reads thread-local errno.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    } else {
        Ok(())
    }
}

impl Frame {
    /// An empty frame.
    pub fn new() -> Frame {
        let mut msg = MaybeUninit::<zmq_sys::zmq_msg_t>::uninit();
        // SAFETY: zmq_msg_init initialises the struct and cannot fail.
        unsafe {
            zmq_sys::zmq_msg_init(msg.as_mut_ptr());
            Frame { msg: msg.assume_init() }
        }
    }

    /// A frame holding a copy of `data`.
    pub fn copy_of(data: &[u8]) -> Frame {
        let mut msg = MaybeUninit::<zmq_sys::zmq_msg_t>::uninit();
        // SAFETY: zmq_msg_init_size initialises the struct with `len` bytes of
        // storage (it fails only when out of memory, where libzmq aborts
        // anyway; on failure the struct is still initialised to empty below).
        unsafe {
            if zmq_sys::zmq_msg_init_size(msg.as_mut_ptr(), data.len()) != 0 {
                zmq_sys::zmq_msg_init(msg.as_mut_ptr());
                return Frame { msg: msg.assume_init() };
            }
            let mut f = Frame { msg: msg.assume_init() };
            let dst = zmq_sys::zmq_msg_data(&mut f.msg) as *mut u8;
            std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len());
            f
        }
    }

    /// A frame whose content is `size` bytes at `data`, not copied: libzmq
    /// calls `ffn(data, hint)` once when it closes the message.
    ///
    /// # Safety
    /// `data` must be valid for `size` bytes (non-null) and stay valid and
    /// untouched until `ffn` is called, and `ffn` must be safe to call with
    /// `(data, hint)` on any thread.
    pub(crate) unsafe fn from_data(
        data: *mut std::os::raw::c_void,
        size: usize,
        ffn: zmq_sys::zmq_free_fn,
        hint: *mut std::os::raw::c_void,
    ) -> Frame {
        let mut msg = MaybeUninit::<zmq_sys::zmq_msg_t>::uninit();
        // SAFETY: the caller vouches for data, size, ffn and hint. libzmq
        // fails only when it cannot allocate its header: the frame is then
        // empty and `ffn` is called here, so it still runs exactly once.
        unsafe {
            if zmq_sys::zmq_msg_init_data(msg.as_mut_ptr(), data, size, ffn, hint) != 0 {
                zmq_sys::zmq_msg_init(msg.as_mut_ptr());
                if let Some(f) = ffn {
                    f(data, hint);
                }
            }
            Frame { msg: msg.assume_init() }
        }
    }

    /// The frame's bytes, writable (the frame owns them: made by
    /// [`Frame::copy_of`] or received; this crate never shares a message).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, with exclusive access through `&mut self`.
        unsafe {
            let size = zmq_sys::zmq_msg_size(&self.msg);
            if size == 0 {
                return &mut [];
            }
            std::slice::from_raw_parts_mut(zmq_sys::zmq_msg_data(&mut self.msg) as *mut u8, size)
        }
    }

    /// Whether another frame of the same message follows (after a receive).
    pub fn more(&self) -> bool {
        // SAFETY: the message is initialised; zmq_msg_more only reads it.
        unsafe { zmq_sys::zmq_msg_more(&self.msg) != 0 }
    }

    /// Receive into this frame (its old content is released). `flags` as
    /// for `zmq_msg_recv` (`zmq::DONTWAIT`).
    pub fn recv(&mut self, socket: &mut zmq::Socket, flags: i32) -> zmq::Result<()> {
        // SAFETY: both pointers are valid; on failure the frame stays valid.
        check(unsafe { zmq_sys::zmq_msg_recv(&mut self.msg, socket.as_mut_ptr(), flags as c_int) })
    }

    /// Send this frame. On success libzmq takes the content and the frame is
    /// left empty; on failure (EAGAIN) it is left as it was, to send again.
    pub fn send(&mut self, socket: &mut zmq::Socket, flags: i32) -> zmq::Result<()> {
        // SAFETY: both pointers are valid; libzmq re-initialises the message
        // on success and leaves it untouched on failure.
        check(unsafe { zmq_sys::zmq_msg_send(&mut self.msg, socket.as_mut_ptr(), flags as c_int) })
    }
}

/// Send `data` as one message (copied into a libzmq message by `zmq_send`).
/// The `zmq` crate's `Socket::send(&[u8])` builds a `zmq::Message` first and
/// closes the emptied one after: two calls into libzmq per message more than
/// this, which a flat-out publisher pays on every frame.
#[inline]
pub fn send_bytes(socket: &mut zmq::Socket, data: &[u8], flags: i32) -> zmq::Result<()> {
    // SAFETY: the socket pointer is valid for the call; libzmq copies `data`
    // (pointer and length from one slice) before returning.
    let rc = unsafe { zmq_sys::zmq_send(socket.as_mut_ptr(), data.as_ptr().cast(), data.len(), flags as c_int) };
    check(rc)
}

impl Default for Frame {
    fn default() -> Self {
        Frame::new()
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: the message is initialised and closed exactly once.
        unsafe {
            zmq_sys::zmq_msg_close(&mut self.msg);
        }
    }
}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: data/size describe the message's own buffer, valid while
        // the frame is borrowed; zmq_msg_data and zmq_msg_size do not mutate.
        unsafe {
            let p = &self.msg as *const _ as *mut zmq_sys::zmq_msg_t;
            let size = zmq_sys::zmq_msg_size(&self.msg);
            if size == 0 {
                return &[];
            }
            std::slice::from_raw_parts(zmq_sys::zmq_msg_data(p) as *const u8, size)
        }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.len())
    }
}

/// Receive one whole message into `frames` (cleared first) without blocking
/// for the first frame. `Ok(false)`: nothing waiting (EAGAIN) or EINTR.
pub fn recv_frames(socket: &mut zmq::Socket, frames: &mut Vec<Frame>) -> zmq::Result<bool> {
    super::recv_whole(frames, |f, flags| f.recv(socket, flags))
}

impl super::RecvFrame for Frame {
    fn empty() -> Self {
        Frame::new()
    }
    fn more(&self) -> bool {
        Frame::more(self)
    }
}

/// Send `frames[*next..]` as (the rest of) one message without blocking.
/// Advances `*next` past every frame sent; on an error the frame at `*next`
/// is intact, so the caller can send the rest again later.
pub fn send_frames_from(socket: &mut zmq::Socket, frames: &mut [Frame], next: &mut usize) -> zmq::Result<()> {
    let n = frames.len();
    while *next < n {
        let i = *next;
        let flags = zmq::DONTWAIT | if i + 1 < n { zmq::SNDMORE } else { 0 };
        frames[i].send(socket, flags)?;
        *next += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_their_bytes_and_survive_a_failed_send() {
        let ctx = zmq::Context::new();
        let mut push = ctx.socket(zmq::PUSH).expect("push");
        push.set_sndhwm(1).expect("hwm");
        // Not connected: a non-blocking send has nowhere to go (EAGAIN).
        let mut f = Frame::copy_of(b"hello");
        assert_eq!(&f[..], b"hello");
        assert_eq!(f.send(&mut push, zmq::DONTWAIT), Err(zmq::Error::EAGAIN));
        assert_eq!(&f[..], b"hello", "a failed send leaves the frame intact");

        let mut pull = ctx.socket(zmq::PULL).expect("pull");
        pull.bind("inproc://frame-test").expect("bind");
        push.connect("inproc://frame-test").expect("connect");
        f.send(&mut push, zmq::DONTWAIT).expect("sent now");
        assert!(f.is_empty(), "libzmq took the content");
        let mut got = Vec::new();
        assert!(recv_frames(&mut pull, &mut got).expect("recv"));
        assert_eq!(got.iter().map(|f| f.to_vec()).collect::<Vec<_>>(), vec![b"hello".to_vec()]);
        let mut two = [Frame::copy_of(b"a"), Frame::copy_of(b"")];
        let mut next = 0;
        send_frames_from(&mut push, &mut two, &mut next).expect("sent");
        assert_eq!(next, 2);
        assert!(recv_frames(&mut pull, &mut got).expect("recv"));
        assert_eq!(got.iter().map(|f| f.to_vec()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"".to_vec()]);
        assert!(got[0].more() && !got[1].more());
        assert!(!Frame::new().more());
    }
}
