//! fd number → shim object, for every descriptor the shim tracks.
//!
//! A flat array of `AtomicU32` indexed by fd (sized from RLIMIT_NOFILE's hard limit,
//! capped; anonymous memory, so untouched pages cost nothing): one relaxed load answers
//! "is this fd ours?" on every hook. 0 means "not ours"; otherwise the value tags the kind
//! of object and carries its pool id.
//!
//! glibc closes and opens descriptors internally without going through the PLT (fclose,
//! the resolver), so an entry can outlive its descriptor. Every hook that creates a
//! descriptor therefore replaces whatever entry the new number had ([`claim`]), and
//! slow-path operations verify the socket's inode ([`crate::socket::SocketRecord::verify`]).

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

static TABLE: AtomicPtr<AtomicU32> = AtomicPtr::new(core::ptr::null_mut());
static LEN: AtomicUsize = AtomicUsize::new(0);

const MAX_FDS: usize = 1 << 20;
const KIND_SHIFT: u32 = 28;
const ID_MASK: u32 = (1 << KIND_SHIFT) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Socket(u32),
    Epoll(u32),
    /// A descriptor the shim opened for itself (ring, eventfd, log).
    Internal,
}

impl Entry {
    fn encode(self) -> u32 {
        match self {
            Entry::Socket(id) => (1 << KIND_SHIFT) | (id & ID_MASK),
            Entry::Epoll(id) => (2 << KIND_SHIFT) | (id & ID_MASK),
            Entry::Internal => 3 << KIND_SHIFT,
        }
    }

    fn decode(v: u32) -> Option<Entry> {
        match v >> KIND_SHIFT {
            1 => Some(Entry::Socket(v & ID_MASK)),
            2 => Some(Entry::Epoll(v & ID_MASK)),
            3 => Some(Entry::Internal),
            _ => None,
        }
    }
}

/// Allocates the table. Called once during initialisation.
pub fn init() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    let n = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        (lim.rlim_max as usize).clamp(1024, MAX_FDS)
    } else {
        65536
    };
    let bytes = n * core::mem::size_of::<AtomicU32>();
    // SAFETY: anonymous private mapping; zero-filled memory is a valid array of AtomicU32(0).
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        crate::log_warn!("fd table allocation failed; every socket stays on the kernel path");
        return;
    }
    LEN.store(n, Ordering::Relaxed);
    TABLE.store(p.cast(), Ordering::Release);
}

#[inline]
fn slot(fd: i32) -> Option<&'static AtomicU32> {
    let table = TABLE.load(Ordering::Acquire);
    if fd < 0 || table.is_null() || fd as usize >= LEN.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: index checked against the mapping's length; the mapping is never unmapped.
    Some(unsafe { &*table.add(fd as usize) })
}

#[inline]
pub fn get(fd: i32) -> Option<Entry> {
    Entry::decode(slot(fd)?.load(Ordering::Acquire))
}

/// Installs `entry` for `fd`, returning whatever stale entry the number carried.
pub fn claim(fd: i32, entry: Entry) -> Option<Entry> {
    let s = slot(fd)?;
    Entry::decode(s.swap(entry.encode(), Ordering::AcqRel))
}

/// Removes the entry of `fd`, returning it.
pub fn take(fd: i32) -> Option<Entry> {
    let s = slot(fd)?;
    Entry::decode(s.swap(0, Ordering::AcqRel))
}

/// Whether `fd` can be tracked at all.
pub fn trackable(fd: i32) -> bool {
    slot(fd).is_some()
}

/// Every tracked (fd, entry), for fork and exec handling.
pub fn for_each(mut f: impl FnMut(i32, Entry)) {
    let table = TABLE.load(Ordering::Acquire);
    if table.is_null() {
        return;
    }
    for fd in 0..LEN.load(Ordering::Relaxed) {
        // SAFETY: within the mapping.
        let v = unsafe { &*table.add(fd) }.load(Ordering::Acquire);
        if let Some(e) = Entry::decode(v) {
            f(fd as i32, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_stale_ones_are_returned() {
        init();
        assert_eq!(get(7), None);
        assert_eq!(claim(7, Entry::Socket(3)), None);
        assert_eq!(get(7), Some(Entry::Socket(3)));
        assert_eq!(claim(7, Entry::Epoll(3)), Some(Entry::Socket(3)));
        assert_eq!(take(7), Some(Entry::Epoll(3)));
        assert_eq!(get(7), None);
        assert_eq!(get(-1), None);
        assert_eq!(get(i32::MAX), None);
    }
}
