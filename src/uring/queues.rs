//! The per-socket byte queues of the ring engine: pure data structures, no system calls.
//!
//! - [`RxQueue`]: received bytes still sitting in the provided buffers the kernel filled
//!   (referenced, not copied), in arrival order; a read copies across as many buffers as
//!   fit and hands emptied buffers back through a callback.
//! - [`TxQueue`]: bytes accepted by write() but not yet handed to the kernel, in fixed
//!   16 KiB chunks from a shared pool, so idle sockets hold no send memory at all.

use crossbeam_queue::ArrayQueue;
use std::sync::OnceLock;

/// One provided buffer holding received bytes `[off, off + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxBuf {
    pub addr: *const u8,
    pub ring: u16,
    pub bid: u16,
    pub off: u32,
    pub len: u32,
}

// SAFETY: the pointer refers to a ring's buffer memory, which is never unmapped while
// referenced; access is serialised by the socket lock.
unsafe impl Send for RxBuf {}

pub const RX_SLOTS: usize = 64;

/// Received-but-unread bytes, in order.
pub struct RxQueue {
    bufs: [RxBuf; RX_SLOTS],
    head: usize,
    count: usize,
    /// Bytes that arrived while every slot was taken (rare: completions in flight when a
    /// pause was requested). Read after the slots, which hold older bytes.
    spill: Vec<u8>,
    spill_off: usize,
    bytes: usize,
}

const EMPTY: RxBuf = RxBuf {
    addr: core::ptr::null(),
    ring: 0,
    bid: 0,
    off: 0,
    len: 0,
};

impl Default for RxQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl RxQueue {
    pub const fn new() -> RxQueue {
        RxQueue {
            bufs: [EMPTY; RX_SLOTS],
            head: 0,
            count: 0,
            spill: Vec::new(),
            spill_off: 0,
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn slots_free(&self) -> usize {
        RX_SLOTS - self.count
    }

    /// Queues a filled buffer. When no slot is free the bytes are copied into the spill
    /// area and the buffer is released at once through `release`.
    pub fn push(&mut self, buf: RxBuf, release: &mut impl FnMut(u16, u16)) {
        if buf.len == 0 {
            release(buf.ring, buf.bid);
            return;
        }
        self.bytes += buf.len as usize;
        if self.count == RX_SLOTS || !self.spill.is_empty() {
            // SAFETY: the kernel wrote `len` bytes at `addr + off` (buffer contract).
            let data = unsafe {
                core::slice::from_raw_parts(buf.addr.add(buf.off as usize), buf.len as usize)
            };
            self.spill.extend_from_slice(data);
            release(buf.ring, buf.bid);
            return;
        }
        self.bufs[(self.head + self.count) % RX_SLOTS] = buf;
        self.count += 1;
    }

    /// Copies up to the total length of `dst` into it, in order. Unless `peek`, the
    /// copied bytes are consumed and emptied buffers released. Returns bytes copied.
    pub fn read_into(
        &mut self,
        dst: &mut [&mut [u8]],
        peek: bool,
        release: &mut impl FnMut(u16, u16),
    ) -> usize {
        let mut copied = 0;
        let mut di = 0;
        let mut doff = 0;
        let mut slot = 0;
        let mut peek_off = 0usize; // offset into the current buffer when peeking
        while di < dst.len() {
            if dst[di].len() == doff {
                di += 1;
                doff = 0;
                continue;
            }
            let (src, from_spill): (&[u8], bool) = if slot < self.count {
                let b = self.bufs[(self.head + slot) % RX_SLOTS];
                let skip = if peek { peek_off } else { 0 };
                // SAFETY: the buffer holds `len` bytes from `off` (see push).
                let s = unsafe {
                    core::slice::from_raw_parts(
                        b.addr.add(b.off as usize + skip),
                        b.len as usize - skip,
                    )
                };
                (s, false)
            } else {
                let start = self.spill_off + if peek { peek_off } else { 0 };
                if start >= self.spill.len() {
                    break;
                }
                (&self.spill[start..], true)
            };
            let n = src.len().min(dst[di].len() - doff);
            dst[di][doff..doff + n].copy_from_slice(&src[..n]);
            doff += n;
            copied += n;
            if peek {
                if !from_spill && n == src.len() {
                    slot += 1;
                    peek_off = 0;
                } else {
                    peek_off += n;
                }
                continue;
            }
            self.consume_front(n, release);
        }
        copied
    }

    /// Drops `n` bytes from the front (MSG_TRUNC, or after copying).
    pub fn discard(&mut self, mut n: usize, release: &mut impl FnMut(u16, u16)) -> usize {
        n = n.min(self.bytes);
        let mut left = n;
        while left > 0 {
            let step = if self.count > 0 {
                left.min(self.bufs[self.head].len as usize)
            } else {
                left
            };
            self.consume_front(step, release);
            left -= step;
        }
        n
    }

    fn consume_front(&mut self, n: usize, release: &mut impl FnMut(u16, u16)) {
        if self.count > 0 {
            let b = &mut self.bufs[self.head];
            debug_assert!(n <= b.len as usize);
            b.off += n as u32;
            b.len -= n as u32;
            self.bytes -= n;
            if b.len == 0 {
                let (ring, bid) = (b.ring, b.bid);
                self.head = (self.head + 1) % RX_SLOTS;
                self.count -= 1;
                release(ring, bid);
            }
        } else {
            self.spill_off += n;
            self.bytes -= n;
            if self.spill_off == self.spill.len() {
                self.spill.clear();
                self.spill_off = 0;
            }
        }
    }

    /// Releases every buffer (close, reset).
    pub fn clear(&mut self, release: &mut impl FnMut(u16, u16)) {
        while self.count > 0 {
            let b = self.bufs[self.head];
            self.head = (self.head + 1) % RX_SLOTS;
            self.count -= 1;
            release(b.ring, b.bid);
        }
        self.head = 0;
        self.spill = Vec::new();
        self.spill_off = 0;
        self.bytes = 0;
    }
}

pub const CHUNK: usize = 16 * 1024;
pub const TX_SLOTS: usize = 64;
/// The most a socket can have queued, whatever RINGSHIM_SEND_CAP says.
pub const TX_MAX: usize = CHUNK * (TX_SLOTS - 1);

type Chunk = [u8; CHUNK];

/// Free send chunks, shared by all sockets and threads: allocation happens only while
/// the pool warms up to the peak of concurrently queued data.
fn chunk_pool() -> &'static ArrayQueue<usize> {
    static POOL: OnceLock<ArrayQueue<usize>> = OnceLock::new();
    POOL.get_or_init(|| ArrayQueue::new(4096))
}

fn alloc_chunk() -> *mut u8 {
    if let Some(p) = chunk_pool().pop() {
        return p as *mut u8;
    }
    Box::into_raw(Box::new([0u8; CHUNK])).cast()
}

fn free_chunk(p: *mut u8) {
    if let Err(p) = chunk_pool().push(p as usize) {
        // SAFETY: every chunk was created by Box::<Chunk>::into_raw in alloc_chunk.
        drop(unsafe { Box::from_raw(p as *mut Chunk) });
    }
}

/// Bytes accepted but not yet handed to the kernel, in order.
pub struct TxQueue {
    chunks: [*mut u8; TX_SLOTS],
    head: usize,
    count: usize,
    /// Read position in the first chunk.
    head_off: usize,
    /// Write position in the last chunk.
    tail_fill: usize,
    bytes: usize,
}

// SAFETY: chunks are exclusively owned by the queue; access is serialised by the socket lock.
unsafe impl Send for TxQueue {}

impl Default for TxQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl TxQueue {
    pub const fn new() -> TxQueue {
        TxQueue {
            chunks: [core::ptr::null_mut(); TX_SLOTS],
            head: 0,
            count: 0,
            head_off: 0,
            tail_fill: 0,
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Appends as much of `data` as fits under `cap` queued bytes; returns how much.
    pub fn push(&mut self, mut data: &[u8], cap: usize) -> usize {
        let room = cap.min(TX_MAX).saturating_sub(self.bytes);
        data = &data[..data.len().min(room)];
        let total = data.len();
        while !data.is_empty() {
            if self.count == 0 || self.tail_fill == CHUNK {
                if self.count == TX_SLOTS {
                    break;
                }
                self.chunks[(self.head + self.count) % TX_SLOTS] = alloc_chunk();
                self.count += 1;
                self.tail_fill = 0;
            }
            let tail = self.chunks[(self.head + self.count - 1) % TX_SLOTS];
            let n = data.len().min(CHUNK - self.tail_fill);
            // SAFETY: the chunk has CHUNK bytes; tail_fill + n <= CHUNK.
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), tail.add(self.tail_fill), n) };
            self.tail_fill += n;
            self.bytes += n;
            data = &data[n..];
        }
        total - data.len()
    }

    /// Appends up to `max` bytes (under `cap` queued) produced by `fill`, which reads
    /// into the free space it is given and returns how many bytes it wrote; a short
    /// fill ends the append (end of input). Returns bytes appended, or the first error
    /// when nothing was appended.
    pub fn push_with<E>(
        &mut self,
        max: usize,
        cap: usize,
        mut fill: impl FnMut(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let mut left = max.min(cap.min(TX_MAX).saturating_sub(self.bytes));
        let mut total = 0;
        while left > 0 {
            if self.count == 0 || self.tail_fill == CHUNK {
                if self.count == TX_SLOTS {
                    break;
                }
                self.chunks[(self.head + self.count) % TX_SLOTS] = alloc_chunk();
                self.count += 1;
                self.tail_fill = 0;
            }
            let tail = self.chunks[(self.head + self.count - 1) % TX_SLOTS];
            let room = left.min(CHUNK - self.tail_fill);
            // SAFETY: the chunk has CHUNK bytes; tail_fill + room <= CHUNK, and the slice
            // is ours alone while the queue is borrowed mutably.
            let dst = unsafe { core::slice::from_raw_parts_mut(tail.add(self.tail_fill), room) };
            let n = match fill(dst) {
                Ok(n) => n.min(room),
                Err(e) if total == 0 => {
                    self.drop_empty_tail();
                    return Err(e);
                }
                Err(_) => break,
            };
            self.tail_fill += n;
            self.bytes += n;
            total += n;
            left -= n;
            if n < room {
                break;
            }
        }
        self.drop_empty_tail();
        Ok(total)
    }

    /// A chunk allocated for data that never came is returned to the pool.
    fn drop_empty_tail(&mut self) {
        if self.count > 0 && self.tail_fill == 0 && (self.count > 1 || self.bytes == 0) {
            let idx = (self.head + self.count - 1) % TX_SLOTS;
            free_chunk(self.chunks[idx]);
            self.chunks[idx] = core::ptr::null_mut();
            self.count -= 1;
            self.tail_fill = if self.count == 0 {
                0
            } else if self.count == 1 {
                // The head chunk is the tail again: its fill is where its data ends.
                self.head_off + self.bytes
            } else {
                CHUNK
            };
            if self.count == 0 {
                self.head_off = 0;
            }
        }
    }

    /// Fills `iov` with the queued bytes from the front; returns how many entries.
    pub fn front_iovecs(&self, iov: &mut [libc::iovec]) -> usize {
        let mut n = 0;
        for i in 0..self.count.min(iov.len()) {
            let chunk = self.chunks[(self.head + i) % TX_SLOTS];
            let start = if i == 0 { self.head_off } else { 0 };
            let end = if i == self.count - 1 {
                self.tail_fill
            } else {
                CHUNK
            };
            if end > start {
                // SAFETY: within the chunk.
                iov[n] = libc::iovec {
                    iov_base: unsafe { chunk.add(start) }.cast(),
                    iov_len: end - start,
                };
                n += 1;
            }
        }
        n
    }

    /// Drops `n` sent bytes from the front, returning emptied chunks to the pool.
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.bytes);
        self.bytes -= n;
        while n > 0 {
            let end = if self.count == 1 {
                self.tail_fill
            } else {
                CHUNK
            };
            let step = n.min(end - self.head_off);
            self.head_off += step;
            n -= step;
            if self.head_off == end && (self.count > 1 || self.bytes == 0) {
                free_chunk(self.chunks[self.head]);
                self.chunks[self.head] = core::ptr::null_mut();
                self.head = (self.head + 1) % TX_SLOTS;
                self.count -= 1;
                self.head_off = 0;
                if self.count == 0 {
                    self.tail_fill = 0;
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.consume(self.bytes);
        while self.count > 0 {
            free_chunk(self.chunks[self.head]);
            self.head = (self.head + 1) % TX_SLOTS;
            self.count -= 1;
        }
        self.head = 0;
        self.head_off = 0;
        self.tail_fill = 0;
    }
}

impl Drop for TxQueue {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rxbuf(data: &'static [u8], bid: u16) -> RxBuf {
        RxBuf {
            addr: data.as_ptr(),
            ring: 0,
            bid,
            off: 0,
            len: data.len() as u32,
        }
    }

    #[test]
    fn rx_read_gathers_across_buffers_and_releases_in_order() {
        let mut q = RxQueue::new();
        let mut released = Vec::new();
        let mut rel = |_r: u16, b: u16| released.push(b);
        q.push(rxbuf(b"hello ", 1), &mut rel);
        q.push(rxbuf(b"world", 2), &mut rel);
        let mut out = [0u8; 8];
        let n = q.read_into(&mut [&mut out[..]], false, &mut rel);
        assert_eq!(&out[..n], b"hello wo");
        assert_eq!(q.bytes(), 3);
        let mut rest = [0u8; 16];
        let n = q.read_into(&mut [&mut rest[..]], false, &mut rel);
        assert_eq!(&rest[..n], b"rld");
        assert!(q.is_empty());
        assert_eq!(released, vec![1, 2]);
    }

    #[test]
    fn rx_peek_does_not_consume_and_spans_buffers() {
        let mut q = RxQueue::new();
        let mut rel = |_r: u16, _b: u16| panic!("peek must not release");
        q.push(rxbuf(b"abc", 1), &mut rel);
        q.push(rxbuf(b"defg", 2), &mut rel);
        let mut out = [0u8; 5];
        assert_eq!(q.read_into(&mut [&mut out[..]], true, &mut rel), 5);
        assert_eq!(&out, b"abcde");
        assert_eq!(q.bytes(), 7);
    }

    #[test]
    fn rx_scatter_into_several_destinations() {
        let mut q = RxQueue::new();
        let mut rel = |_r: u16, _b: u16| {};
        q.push(rxbuf(b"0123456789", 1), &mut rel);
        let (mut a, mut b) = ([0u8; 3], [0u8; 4]);
        assert_eq!(
            q.read_into(&mut [&mut a[..], &mut b[..]], false, &mut rel),
            7
        );
        assert_eq!(&a, b"012");
        assert_eq!(&b, b"3456");
    }

    #[test]
    fn rx_overflow_spills_in_order() {
        let mut q = RxQueue::new();
        let mut released = 0;
        let mut rel = |_r: u16, _b: u16| released += 1;
        for i in 0..RX_SLOTS + 3 {
            q.push(
                rxbuf(if i % 2 == 0 { b"ab" } else { b"cd" }, i as u16),
                &mut rel,
            );
        }
        assert_eq!(q.bytes(), 2 * (RX_SLOTS + 3));
        let mut out = [0u8; 2 * (RX_SLOTS + 3)];
        let n = q.read_into(&mut [&mut out[..]], false, &mut rel);
        assert_eq!(n, out.len());
        assert!(out.chunks(4).all(|c| c == b"abcd" || c == b"ab"));
        assert!(q.is_empty());
        assert_eq!(released, RX_SLOTS + 3);
    }

    #[test]
    fn rx_discard_for_msg_trunc() {
        let mut q = RxQueue::new();
        let mut rel = |_r: u16, _b: u16| {};
        q.push(rxbuf(b"abc", 1), &mut rel);
        q.push(rxbuf(b"def", 2), &mut rel);
        assert_eq!(q.discard(4, &mut rel), 4);
        let mut out = [0u8; 4];
        assert_eq!(q.read_into(&mut [&mut out[..]], false, &mut rel), 2);
        assert_eq!(&out[..2], b"ef");
    }

    #[test]
    fn tx_push_with_reads_into_chunks_and_stops_at_a_short_fill() {
        let mut q = TxQueue::new();
        q.push(b"head", 1 << 20);
        let mut produced = 0usize;
        let n = q
            .push_with(
                CHUNK + 100,
                1 << 20,
                |buf: &mut [u8]| -> Result<usize, ()> {
                    let k = buf.len().min(CHUNK + 50 - produced);
                    for (i, b) in buf[..k].iter_mut().enumerate() {
                        *b = (produced + i) as u8;
                    }
                    produced += k;
                    Ok(k)
                },
            )
            .unwrap();
        assert_eq!(n, CHUNK + 50);
        assert_eq!(q.bytes(), CHUNK + 54);
        let mut iov = [libc::iovec {
            iov_base: core::ptr::null_mut(),
            iov_len: 0,
        }; 8];
        let k = q.front_iovecs(&mut iov);
        let mut all = Vec::new();
        for v in &iov[..k] {
            // SAFETY: iovecs point into the queue's chunks, valid until mutation.
            all.extend_from_slice(unsafe {
                core::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        assert_eq!(&all[..4], b"head");
        assert!(all[4..].iter().enumerate().all(|(i, &b)| b == i as u8));
        assert_eq!(q.push_with(10, 1 << 20, |_| Err::<usize, i32>(5)), Err(5));
        assert_eq!(q.bytes(), CHUNK + 54);
    }

    #[test]
    fn tx_respects_cap_and_keeps_order_across_chunks() {
        let mut q = TxQueue::new();
        let data: Vec<u8> = (0..CHUNK * 2 + 100).map(|i| i as u8).collect();
        assert_eq!(q.push(&data, CHUNK * 2), CHUNK * 2);
        assert_eq!(q.push(&data, CHUNK * 2), 0);
        let mut iov = [libc::iovec {
            iov_base: core::ptr::null_mut(),
            iov_len: 0,
        }; 8];
        let n = q.front_iovecs(&mut iov);
        assert_eq!(n, 2);
        q.consume(CHUNK + 10);
        assert_eq!(q.bytes(), CHUNK - 10);
        let n = q.front_iovecs(&mut iov);
        assert_eq!(n, 1);
        // SAFETY: iovec points into the queue's chunk, valid until the next mutation.
        let first = unsafe { *(iov[0].iov_base as *const u8) };
        assert_eq!(first, data[CHUNK + 10]);
        q.consume(q.bytes());
        assert!(q.is_empty());
        assert_eq!(q.push(b"xy", 10), 2);
        assert_eq!(q.front_iovecs(&mut iov), 1);
        assert_eq!(iov[0].iov_len, 2);
    }
}
