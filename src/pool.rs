//! Type-stable storage for shim objects (sockets, epoll instances), addressed by `u32` id.
//!
//! Objects are never freed, only recycled: a thread that looked an id up in the fd
//! table while another thread closed that fd still dereferences valid memory (it may see
//! a recycled object, which is the same race the kernel resolves with EBADF or a new
//! file). Storage grows in chunks, allocated only when every existing object is in use.

use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::Mutex;

const CHUNK: usize = 1024;
const MAX_CHUNKS: usize = 1024;

pub struct Pool<T: 'static> {
    chunks: [AtomicPtr<T>; MAX_CHUNKS],
    next_fresh: AtomicU32,
    free: Mutex<Vec<u32>>,
    make: fn() -> T,
}

impl<T: 'static> Pool<T> {
    pub const fn new(make: fn() -> T) -> Self {
        Pool {
            chunks: [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CHUNKS],
            next_fresh: AtomicU32::new(0),
            free: Mutex::new(Vec::new()),
            make,
        }
    }

    /// Returns a free object's id, or None when the pool is exhausted (the caller then
    /// leaves the fd to the kernel).
    pub fn alloc(&self) -> Option<u32> {
        if let Some(id) = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(id);
        }
        let _grow = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.next_fresh.load(Ordering::Relaxed);
        let chunk = id as usize / CHUNK;
        if chunk >= MAX_CHUNKS {
            return None;
        }
        if self.chunks[chunk].load(Ordering::Acquire).is_null() {
            let v: Vec<T> = (0..CHUNK).map(|_| (self.make)()).collect();
            let p = Box::leak(v.into_boxed_slice()).as_mut_ptr();
            self.chunks[chunk].store(p, Ordering::Release);
        }
        self.next_fresh.store(id + 1, Ordering::Relaxed);
        Some(id)
    }

    pub fn release(&self, id: u32) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }

    /// The object with this id.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&'static T> {
        let chunk = self
            .chunks
            .get(id as usize / CHUNK)?
            .load(Ordering::Acquire);
        if chunk.is_null() {
            return None;
        }
        // SAFETY: chunks are leaked boxes of CHUNK objects, never freed; the index is
        // within the chunk.
        Some(unsafe { &*chunk.add(id as usize % CHUNK) })
    }

    /// Ids handed out so far (for walks after fork).
    pub fn high_water(&self) -> u32 {
        self.next_fresh.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_recycled_and_objects_stable() {
        static P: Pool<AtomicU32> = Pool::new(|| AtomicU32::new(0));
        let a = P.alloc().unwrap();
        let b = P.alloc().unwrap();
        assert_ne!(a, b);
        let pa = P.get(a).unwrap() as *const _;
        P.release(a);
        let c = P.alloc().unwrap();
        assert_eq!(c, a);
        assert_eq!(P.get(c).unwrap() as *const _, pa);
    }

    #[test]
    fn grows_past_one_chunk() {
        static P: Pool<u8> = Pool::new(|| 0);
        for _ in 0..CHUNK + 5 {
            P.alloc().unwrap();
        }
        assert!(P.get((CHUNK + 4) as u32).is_some());
    }
}
