//! The shim's view of each epoll instance the application creates.
//!
//! The epoll fd stays a real kernel epoll fd. Kernel-path fds are registered in it as
//! usual; the shim also records every registration (fd, events, data) so a socket that
//! moves to an accelerated engine can be taken out of the kernel set and served from
//! shim state, and so readiness can be merged (see `crate::uring::wait`).

use crate::fdtable::{self, Entry};
use crate::pool::Pool;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Mutex;

/// One registration of an fd in an epoll instance.
#[derive(Clone, Copy, Debug)]
pub struct Interest {
    pub fd: i32,
    /// Pool id of the socket record, when the fd is a tracked socket.
    pub socket: Option<u32>,
    pub events: u32,
    pub data: u64,
    /// Served from shim state rather than the kernel epoll set.
    pub accelerated: bool,
    /// In the ready list.
    pub queued: bool,
    /// EPOLLONESHOT fired; nothing is reported until EPOLL_CTL_MOD re-arms it.
    pub disarmed: bool,
}

pub struct EpollState {
    /// Registrations by slot; a removed one leaves a free slot (fd -1) for reuse, so the
    /// slot numbers held in sockets' watcher lists and in `ready` stay valid.
    pub interests: Vec<Interest>,
    /// fd → slot in `interests`.
    pub index: std::collections::HashMap<i32, u32>,
    free: Vec<u32>,
    /// Slots of accelerated interests that may be ready (checked at the next wait).
    pub ready: std::collections::VecDeque<u32>,
}

pub struct EpollRecord {
    pub id: AtomicU32,
    pub alias_count: AtomicU32,
    pub state: Mutex<EpollState>,
    /// Accelerated interests in this instance (0: epoll_wait is a plain pass-through).
    pub accelerated: AtomicU32,
    /// eventfd member of the kernel set that makes shim readiness kernel-visible.
    pub bridge_fd: AtomicI32,
    /// Threads blocked waiting on this instance; a producer that sees none need not wake.
    pub sleepers: AtomicU32,
    /// The epoll fd is watched by something the shim does not serve (nested in another
    /// epoll, polled): the bridge must reflect shim readiness at all times.
    pub exposed: core::sync::atomic::AtomicBool,
    /// The bridge eventfd has been written and not yet drained.
    pub bridge_signalled: core::sync::atomic::AtomicBool,
    /// A real fd of this instance (for the kernel-side calls the shim makes on it).
    pub epfd: AtomicI32,
    /// Fork generation this instance's registrations were last re-checked in.
    pub fork_epoch: AtomicU32,
    /// Epoll instances with accelerated members nested inside this one.
    pub nested: AtomicU32,
    /// How many ustack worker eventfds are members of the kernel set (`crate::ustack`).
    pub ustack_wakes: AtomicU32,
    /// The next merged look at both halves starts with the kernel set: the last one
    /// filled the caller's array from the shim alone ([`merge_ready`]).
    pub kernel_turn: core::sync::atomic::AtomicBool,
    /// Bumped each time the slot starts tracking a new epoll fd. A ring's poll on the
    /// kernel set of an earlier instance in this slot outlives that instance's close (the
    /// poll holds the file), so a watch is only trusted for the incarnation it was armed
    /// for.
    pub incarnation: AtomicU32,
}

pub static EPOLLS: Pool<EpollRecord> = Pool::new(EpollRecord::new);

impl EpollRecord {
    fn new() -> EpollRecord {
        EpollRecord {
            id: AtomicU32::new(0),
            alias_count: AtomicU32::new(0),
            state: Mutex::new(EpollState {
                interests: Vec::new(),
                index: std::collections::HashMap::new(),
                free: Vec::new(),
                ready: std::collections::VecDeque::new(),
            }),
            accelerated: AtomicU32::new(0),
            bridge_fd: AtomicI32::new(-1),
            sleepers: AtomicU32::new(0),
            exposed: core::sync::atomic::AtomicBool::new(false),
            bridge_signalled: core::sync::atomic::AtomicBool::new(false),
            epfd: AtomicI32::new(-1),
            fork_epoch: AtomicU32::new(0),
            nested: AtomicU32::new(0),
            ustack_wakes: AtomicU32::new(0),
            kernel_turn: core::sync::atomic::AtomicBool::new(false),
            incarnation: AtomicU32::new(0),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, EpollState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EpollState {
    pub fn find(&self, fd: i32) -> Option<usize> {
        self.index.get(&fd).map(|&s| s as usize)
    }

    /// Stores a registration and returns its slot.
    pub fn insert(&mut self, interest: Interest) -> usize {
        let slot = match self.free.pop() {
            Some(s) => {
                self.interests[s as usize] = interest;
                s as usize
            }
            None => {
                self.interests.push(interest);
                self.interests.len() - 1
            }
        };
        self.index.insert(interest.fd, slot as u32);
        slot
    }

    /// Removes the registration in `slot`, returning it.
    pub fn remove(&mut self, slot: usize) -> Interest {
        let gone = self.interests[slot];
        self.index.remove(&gone.fd);
        self.interests[slot].fd = -1;
        self.interests[slot].socket = None;
        self.interests[slot].queued = false;
        self.free.push(slot as u32);
        if gone.queued {
            self.ready.retain(|&r| r as usize != slot);
        }
        gone
    }

    pub fn clear(&mut self) {
        self.interests.clear();
        self.index.clear();
        self.free.clear();
        self.ready.clear();
    }

    /// Live registrations.
    pub fn live(&self) -> impl Iterator<Item = (usize, &Interest)> {
        self.interests.iter().enumerate().filter(|(_, i)| i.fd >= 0)
    }
}

/// The record of a tracked epoll fd.
#[inline]
pub fn lookup(epfd: i32) -> Option<&'static EpollRecord> {
    match fdtable::get(epfd)? {
        Entry::Epoll(id) => EPOLLS.get(id),
        _ => None,
    }
}

/// Starts tracking a new epoll fd.
pub fn track(epfd: i32) {
    if !fdtable::trackable(epfd) {
        return;
    }
    crate::socket::forget_stale(epfd);
    let Some(id) = EPOLLS.alloc() else { return };
    let Some(ep) = EPOLLS.get(id) else { return };
    ep.id.store(id, Ordering::Relaxed);
    ep.alias_count.store(1, Ordering::Relaxed);
    ep.accelerated.store(0, Ordering::Relaxed);
    ep.sleepers.store(0, Ordering::Relaxed);
    ep.bridge_fd.store(-1, Ordering::Relaxed);
    ep.exposed.store(false, Ordering::Relaxed);
    ep.bridge_signalled.store(false, Ordering::Relaxed);
    ep.epfd.store(epfd, Ordering::Relaxed);
    ep.nested.store(0, Ordering::Relaxed);
    ep.ustack_wakes.store(0, Ordering::Relaxed);
    ep.kernel_turn.store(false, Ordering::Relaxed);
    ep.incarnation.fetch_add(1, Ordering::Relaxed);
    ep.fork_epoch.store(
        crate::uring::wait::FORK_EPOCH.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    ep.lock().clear();
    fdtable::claim(epfd, Entry::Epoll(id));
}

pub fn alias(id: u32, newfd: i32) {
    if let Some(ep) = EPOLLS.get(id) {
        ep.alias_count.fetch_add(1, Ordering::AcqRel);
        fdtable::claim(newfd, Entry::Epoll(id));
    }
}

pub fn on_close(id: u32, _fd: i32) {
    let Some(ep) = EPOLLS.get(id) else { return };
    if ep.alias_count.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let interests: Vec<(usize, Interest)> = {
        let mut st = ep.lock();
        let v = st.live().map(|(s, i)| (s, *i)).collect();
        st.clear();
        v
    };
    for (slot, i) in interests.iter().filter(|(_, i)| i.accelerated) {
        if let Some(rec) = i.socket.and_then(|s| crate::socket::SOCKETS.get(s)) {
            crate::uring::unwatch(rec, id, *slot as u32);
        }
    }
    let bridge = ep.bridge_fd.swap(-1, Ordering::AcqRel);
    if bridge >= 0 {
        // SAFETY: the bridge eventfd is the shim's own descriptor.
        unsafe { crate::real::close(bridge) };
    }
    // The closing thread is usually the one whose ring watches the kernel set: cancel
    // that poll now, or it pins the closed epoll file. Other threads' watches are
    // replaced when their ring next meets this slot.
    crate::uring::forget_epoll(id, ep.incarnation.load(Ordering::Relaxed));
    EPOLLS.release(id);
}

/// Records a successful kernel-side epoll_ctl.
pub fn record_ctl(ep: &EpollRecord, op: i32, fd: i32, events: u32, data: u64) {
    // Only sockets the shim tracks are remembered: they are the ones that may move to
    // an accelerated engine later. Other fds leave the kernel set when closed, and the
    // shim never sees those closes.
    let Some(Entry::Socket(id)) = fdtable::get(fd) else {
        return;
    };
    let socket = Some(id);
    let mut st = ep.lock();
    match op {
        libc::EPOLL_CTL_ADD => {
            if let Some(stale) = st.find(fd) {
                st.remove(stale);
            }
            st.insert(Interest {
                fd,
                socket,
                events,
                data,
                accelerated: false,
                queued: false,
                disarmed: false,
            });
        }
        libc::EPOLL_CTL_MOD => {
            if let Some(i) = st.find(fd) {
                st.interests[i].events = events;
                st.interests[i].data = data;
            }
        }
        libc::EPOLL_CTL_DEL => {
            if let Some(i) = st.find(fd) {
                st.remove(i);
            }
        }
        _ => {}
    }
}

/// A socket's last descriptor (`fd`) was closed: the kernel drops it from every epoll
/// set, and so does the shim (closing one of several dup aliases removes nothing, as in
/// the kernel). Registrations are found by fd (O(1) per instance) and, for accelerated
/// sockets, through their watcher list, without scanning every registration.
pub fn forget_socket(fd: i32, socket: u32, watchers: &[(u32, u32)]) {
    for id in 0..EPOLLS.high_water() {
        let Some(ep) = EPOLLS.get(id) else { continue };
        if ep.alias_count.load(Ordering::Acquire) == 0 {
            continue;
        }
        let mut st = ep.lock();
        if let Some(slot) = st.find(fd) {
            if st.interests[slot].socket == Some(socket) && st.remove(slot).accelerated {
                ep.accelerated.fetch_sub(1, Ordering::AcqRel);
            }
        }
        for &(ep_id, slot) in watchers {
            let slot = slot as usize;
            if ep_id == id
                && slot < st.interests.len()
                && st.interests[slot].fd >= 0
                && st.interests[slot].socket == Some(socket)
                && st.remove(slot).accelerated
            {
                ep.accelerated.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// One non-blocking look at both halves of a merged epoll set: the shim's ready list
/// (`shim`) and the kernel set (`kernel`). Each is called as `(offset, room)` and writes
/// at most `room` events from `offset` of the caller's array, returning how many.
///
/// The kernel's own epoll_wait reports every ready member up to `max`, so both halves
/// are asked while room is left. `kernel_first` says which goes first: normally the
/// shim (whose look costs no system call); when the shim alone filled the array, the
/// kernel set was not read at all, and the next look starts with it, so a busy set of
/// accelerated sockets cannot starve the kernel's members (as the kernel rotates its
/// level-triggered ready list). A shim that has nothing ready leaves the kernel set to
/// the caller's (possibly blocking) wait, which reads it anyway.
///
/// Returns the events written and the `kernel_first` of the next look. An error of the
/// kernel half after the shim wrote events returns those events: they are taken off the
/// ready list (edge-triggered, one-shot) and would be lost.
pub fn merge_ready(
    max: usize,
    kernel_first: bool,
    mut shim: impl FnMut(usize, usize) -> usize,
    mut kernel: impl FnMut(usize, usize) -> Result<usize, crate::errno::Errno>,
) -> Result<(usize, bool), crate::errno::Errno> {
    if kernel_first {
        let k = kernel(0, max)?.min(max);
        let s = if k < max { shim(k, max - k) } else { 0 };
        return Ok((k + s.min(max - k), false));
    }
    let n = shim(0, max).min(max);
    if n == 0 {
        return Ok((0, false));
    }
    if n == max {
        return Ok((n, true));
    }
    match kernel(n, max - n) {
        Ok(k) => Ok((n + k.min(max - n), false)),
        Err(_) => Ok((n, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::merge_ready;
    use crate::errno::Errno;

    /// A half with `ready` events; records each (offset, room) it was asked with.
    struct Half {
        ready: usize,
        asked: Vec<(usize, usize)>,
    }

    impl Half {
        fn new(ready: usize) -> Half {
            Half {
                ready,
                asked: Vec::new(),
            }
        }
        fn take(&mut self, offset: usize, room: usize) -> usize {
            self.asked.push((offset, room));
            let n = self.ready.min(room);
            self.ready -= n;
            n
        }
    }

    fn merge(max: usize, first: bool, shim: &mut Half, kernel: &mut Half) -> (usize, bool) {
        merge_ready(
            max,
            first,
            |o, r| shim.take(o, r),
            |o, r| Ok(kernel.take(o, r)),
        )
        .expect("no error")
    }

    /// epoll_level_triggered line 22: one ready member in each half, a wait with
    /// timeout 0 reports both (the shim's events no longer end the look).
    #[test]
    fn epoll_level_triggered_reports_both_halves() {
        let (mut shim, mut kernel) = (Half::new(1), Half::new(1));
        assert_eq!(merge(8, false, &mut shim, &mut kernel), (2, false));
        assert_eq!(shim.asked, [(0, 8)]);
        assert_eq!(
            kernel.asked,
            [(1, 7)],
            "the kernel fills the room after the shim"
        );
    }

    #[test]
    fn an_empty_shim_leaves_the_kernel_set_to_the_wait() {
        let (mut shim, mut kernel) = (Half::new(0), Half::new(3));
        assert_eq!(merge(8, false, &mut shim, &mut kernel), (0, false));
        assert!(kernel.asked.is_empty(), "no second system call");
    }

    #[test]
    fn a_full_array_from_the_shim_gives_the_kernel_the_next_turn() {
        let (mut shim, mut kernel) = (Half::new(5), Half::new(2));
        assert_eq!(merge(2, false, &mut shim, &mut kernel), (2, true));
        assert!(kernel.asked.is_empty());
        // The next look starts with the kernel, and the shim gets no room left.
        assert_eq!(merge(2, true, &mut shim, &mut kernel), (2, false));
        assert_eq!(kernel.asked, [(0, 2)]);
        assert!(shim.asked.len() == 1, "the shim was not asked without room");
        // Then the shim first again.
        assert_eq!(merge(2, false, &mut shim, &mut kernel), (2, true));
    }

    #[test]
    fn the_kernel_first_leaves_its_room_to_the_shim() {
        let (mut shim, mut kernel) = (Half::new(4), Half::new(1));
        assert_eq!(merge(3, true, &mut shim, &mut kernel), (3, false));
        assert_eq!(kernel.asked, [(0, 3)]);
        assert_eq!(shim.asked, [(1, 2)]);
    }

    #[test]
    fn a_kernel_error_keeps_the_shims_events() {
        let r = merge_ready(8, false, |_, _| 2, |_, _| Err(Errno(libc::EBADF)));
        assert_eq!(r.expect("the shim's events"), (2, false));
        let r = merge_ready(8, true, |_, _| 2, |_, _| Err(Errno(libc::EBADF)));
        assert_eq!(r.map_err(|e| e.0), Err(libc::EBADF), "nothing taken yet");
    }
}
