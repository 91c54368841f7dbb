//! Merged readiness: epoll, poll and select over kernel fds and accelerated sockets.
//!
//! Accelerated sockets are not in the kernel epoll set; their readiness is computed
//! from shim state and kept in each epoll instance's ready list, fed by completions
//! ([`mark_ready`]). `epoll_wait` on an instance with accelerated members is one loop on
//! the caller's ring: run completions, harvest the ready list, read the kernel set only
//! when its poll request fired, and otherwise sleep in ONE `io_uring_enter` that also
//! submits queued work and honours the timeout and signal mask.
//!
//! An eventfd (the *bridge*) is a member of every such kernel set. It is written only
//! when someone outside the owner's loop must see shim readiness — another thread
//! sleeping on the same instance, an epoll nesting this one, a poll() on the epoll fd —
//! so the kernel-visible readiness of the epoll fd stays true without costing the
//! single-threaded loop a system call.

use super::ring::{self, Op};
use super::{ensure_recv, process};

use crate::epoll::{EpollRecord, Interest, EPOLLS};
use crate::errno::{self, Errno};
use crate::real;
use crate::socket::{SocketRecord, SOCKETS};
use crate::stats;
use core::cell::Cell;
use core::ffi::c_int;
use core::sync::atomic::Ordering;
use io_uring::{opcode, types};
use libc::{epoll_event, fd_set, nfds_t, pollfd, sigset_t, timespec};
use ringshim_common::stats::Counter;

/// data of the bridge eventfd in kernel sets ("RINGSHIM"); filtered from results.
const BRIDGE_TAG: u64 = 0x5249_4e47_5348_494d;

/// Bumped in every fork child: registrations inherited from the parent are re-checked
/// (their sockets now deliver leftovers and then go back to the kernel set).
pub static FORK_EPOCH: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Whether epoll_wait on this instance needs the shim: it has accelerated members, or
/// nests an instance that has.
#[inline]
pub fn merged(ep: &EpollRecord) -> bool {
    ep.accelerated.load(Ordering::Acquire) > 0
        || ep.nested.load(Ordering::Acquire) > 0
        || super::ring_holds_work()
}

fn requeue_after_fork(ep: &EpollRecord) {
    let epoch = FORK_EPOCH.load(Ordering::Acquire);
    if ep.fork_epoch.swap(epoch, Ordering::AcqRel) == epoch {
        return;
    }
    let mut st = ep.lock();
    let slots: Vec<u32> = st
        .live()
        .filter(|(_, i)| i.accelerated && !i.queued)
        .map(|(s, _)| s as u32)
        .collect();
    for slot in slots {
        st.interests[slot as usize].queued = true;
        st.ready.push_back(slot);
    }
}

fn ensure_bridge(ep: &EpollRecord) {
    if ep.bridge_fd.load(Ordering::Acquire) >= 0 {
        return;
    }
    let efd = crate::internal_fd::eventfd();
    if efd < 0 {
        return;
    }
    if ep
        .bridge_fd
        .compare_exchange(-1, efd, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // SAFETY: our own eventfd, lost the race.
        unsafe { real::close(efd) };
        return;
    }
    let mut ev = epoll_event {
        events: libc::EPOLLIN as u32,
        u64: BRIDGE_TAG,
    };
    // SAFETY: adding our eventfd to the application's epoll instance.
    unsafe {
        real::epoll_ctl(
            ep.epfd.load(Ordering::Relaxed),
            libc::EPOLL_CTL_ADD,
            efd,
            &mut ev,
        )
    };
}

fn signal_bridge(ep: &EpollRecord) {
    let efd = ep.bridge_fd.load(Ordering::Acquire);
    if efd >= 0 && !ep.bridge_signalled.swap(true, Ordering::AcqRel) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::syscall(libc::SYS_write, efd, &one as *const u64, 8) };
    }
}

/// Empties the bridge, then lets the next [`signal_bridge`] write it again.
///
/// The order matters. Clearing the flag first lets a signal slip in between: its write
/// is consumed by this read while the flag stays set, so every later signal is skipped
/// and a sleeper never wakes again. Read first, a signal that finds the flag still set
/// is not lost: its slot is already in the ready list, which the draining thread
/// harvests next.
fn drain_bridge(ep: &EpollRecord) {
    let efd = ep.bridge_fd.load(Ordering::Acquire);
    if efd >= 0 {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes from our non-blocking eventfd.
        unsafe { libc::syscall(libc::SYS_read, efd, &mut v as *mut u64, 8) };
        ep.bridge_signalled.store(false, Ordering::SeqCst);
    }
}

/// Every ustack worker's eventfd is a member of this instance's kernel set (workers are
/// added as application threads first send; checked at each merged wait).
fn ensure_ustack_wakes(ep: &EpollRecord) {
    let have = ep.ustack_wakes.load(Ordering::Acquire);
    if have == 0 && ep.accelerated.load(Ordering::Acquire) == 0 {
        return;
    }
    let now = crate::ustack::worker_count();
    if now > have
        && ep
            .ustack_wakes
            .compare_exchange(have, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        crate::ustack::register_wake_fds(ep.epfd.load(Ordering::Relaxed), have);
    }
}

/// A socket watched by epoll `ep` in `slot` may have changed readiness.
pub fn mark_ready(ep_id: u32, slot: u32) {
    let Some(ep) = EPOLLS.get(ep_id) else { return };
    {
        let mut st = ep.lock();
        let Some(i) = st.interests.get_mut(slot as usize) else {
            return;
        };
        if i.fd < 0 || !i.accelerated || i.queued {
            return;
        }
        i.queued = true;
        st.ready.push_back(slot);
    }
    // Another thread sleeping on this instance must wake; an exposed instance must
    // look readable to the kernel exactly when a member is.
    if ep.sleepers.load(Ordering::SeqCst) > 0
        || (ep.exposed.load(Ordering::Relaxed) && any_truly_ready(ep))
    {
        signal_bridge(ep);
    }
}

/// Whether a queued registration of `ep` is ready right now (the ready list only says
/// "may be"). Used where a false positive would be visible: an exposed epoll fd.
fn any_truly_ready(ep: &EpollRecord) -> bool {
    let st = ep.lock();
    let cap = send_cap();
    st.ready.iter().any(|&slot| {
        let i = &st.interests[slot as usize];
        if i.fd < 0 || !i.accelerated || i.disarmed {
            return false;
        }
        let Some(rec) = i.socket.and_then(|s| SOCKETS.get(s)) else {
            return false;
        };
        let mask = i.events | (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        rec.lock_io().events(cap) & mask != 0
    })
}

/// How many epoll instances are exposed (nested or polled).
static EXPOSED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Nobody harvests an exposed instance while the application waits on the epoll that
/// nests it (or polls its fd): the waiting thread arms its members' receives and keeps
/// the bridge equal to the instance's true readiness.
fn refresh_exposed() {
    if EXPOSED.load(Ordering::Relaxed) == 0 {
        return;
    }
    let cap = send_cap();
    for id in 0..EPOLLS.high_water() {
        let Some(ep) = EPOLLS.get(id) else { continue };
        if !ep.exposed.load(Ordering::Relaxed) || ep.alias_count.load(Ordering::Acquire) == 0 {
            continue;
        }
        let ready = {
            let st = ep.lock();
            st.ready.iter().any(|&slot| {
                let i = &st.interests[slot as usize];
                if i.fd < 0 || !i.accelerated || i.disarmed {
                    return false;
                }
                let Some(rec) = i.socket.and_then(|s| SOCKETS.get(s)) else {
                    return false;
                };
                let mut io = rec.lock_io();
                ensure_recv(rec, &mut io);
                io.events(cap) & (i.events | (libc::EPOLLERR | libc::EPOLLHUP) as u32) != 0
            })
        };
        if ready {
            signal_bridge(ep);
        } else if ep.bridge_signalled.load(Ordering::Acquire) {
            drain_bridge(ep);
            // A member that became ready while we looked had its signal skipped (the
            // flag was still set) and the drain ate the write before it: say it again.
            if any_truly_ready(ep) {
                signal_bridge(ep);
            }
        }
    }
}

/// The epoll fd is observed by something other than the shim's own wait.
pub fn expose(ep: &EpollRecord, _fd: c_int) {
    if ep.exposed.swap(true, Ordering::AcqRel) {
        return;
    }
    EXPOSED.fetch_add(1, Ordering::Relaxed);
    ensure_bridge(ep);
    if any_truly_ready(ep) {
        signal_bridge(ep);
    }
}

fn send_cap() -> usize {
    crate::init::config().send_cap as usize
}

/// epoll_ctl for an accelerated socket: the registration lives in the shim.
///
/// # Safety
/// `event` as for epoll_ctl(2).
pub unsafe fn epoll_ctl(
    ep: &'static EpollRecord,
    _epfd: c_int,
    op: c_int,
    fd: c_int,
    rec: &'static SocketRecord,
    event: *mut epoll_event,
) -> Result<c_int, Errno> {
    if op != libc::EPOLL_CTL_DEL && event.is_null() {
        return Err(Errno(libc::EFAULT));
    }
    // SAFETY: non-null, readable per the caller's contract.
    let (events, data) = if event.is_null() {
        (0, 0)
    } else {
        unsafe { ((*event).events, (*event).u64) }
    };
    let ep_id = ep.id.load(Ordering::Relaxed);
    let sock_id = rec.id.load(Ordering::Relaxed);
    if op != libc::EPOLL_CTL_DEL && events & libc::EPOLLPRI as u32 != 0 {
        // Urgent data is invisible to a ring receive: the kernel watches this socket.
        super::demote(rec, "EPOLLPRI interest");
        if rec.engine() == crate::socket::Engine::Kernel {
            // SAFETY: plain forward after demotion.
            let r = unsafe { real::epoll_ctl(ep.epfd.load(Ordering::Relaxed), op, fd, event) };
            if r == 0 {
                crate::epoll::record_ctl(ep, op, fd, events, data);
                return Ok(0);
            }
            return Err(errno::last());
        }
    }
    if crate::ustack::io::is_listener(rec) && !crate::ustack::io::join(rec, fd) {
        // stackd refused it: the listener is the kernel's alone.
        // SAFETY: the caller's event, forwarded.
        let r = unsafe { real::epoll_ctl(ep.epfd.load(Ordering::Relaxed), op, fd, event) };
        if r == 0 {
            crate::epoll::record_ctl(ep, op, fd, events, data);
            return Ok(0);
        }
        return Err(errno::last());
    }
    if crate::ustack::io::is_listener(rec) {
        // A listener with a stackd side: the kernel set reports the kernel's
        // connections, the shim's registration below stackd's.
        // SAFETY: the caller's event, forwarded.
        let r = unsafe { real::epoll_ctl(ep.epfd.load(Ordering::Relaxed), op, fd, event) };
        if r != 0 {
            return Err(errno::last());
        }
    }
    const EXCLUSIVE_OK: u32 = (libc::EPOLLIN
        | libc::EPOLLOUT
        | libc::EPOLLRDNORM
        | libc::EPOLLRDBAND
        | libc::EPOLLWRNORM
        | libc::EPOLLWRBAND
        | libc::EPOLLERR
        | libc::EPOLLHUP
        | libc::EPOLLWAKEUP
        | libc::EPOLLET
        | libc::EPOLLEXCLUSIVE) as u32;
    if op == libc::EPOLL_CTL_ADD
        && events & libc::EPOLLEXCLUSIVE as u32 != 0
        && events & !EXCLUSIVE_OK != 0
    {
        return Err(Errno(libc::EINVAL));
    }
    match op {
        libc::EPOLL_CTL_ADD => {
            let slot = {
                let mut st = ep.lock();
                if let Some(existing) = st.find(fd) {
                    if st.interests[existing].socket == Some(sock_id) {
                        return Err(Errno(libc::EEXIST));
                    }
                    // A registration of an earlier file with this number, closed behind
                    // the shim's back: the kernel already dropped it.
                    let stale = st.remove(existing);
                    if stale.accelerated {
                        ep.accelerated.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                let slot = st.insert(Interest {
                    fd,
                    socket: Some(sock_id),
                    events,
                    data,
                    accelerated: true,
                    queued: false,
                    disarmed: false,
                });
                ep.accelerated.fetch_add(1, Ordering::AcqRel);
                slot as u32
            };
            ensure_bridge(ep);
            if rec.engine() == crate::socket::Engine::Ustack {
                ensure_ustack_wakes(ep);
            }
            // The receive is armed by the thread that harvests this registration (its
            // waiter), not here: only a waiting thread reaps its ring.
            let added = rec.lock_io().add_watcher(ep_id, slot);
            if !added {
                // More epoll instances than the socket can follow: the kernel takes it.
                {
                    let mut st = ep.lock();
                    st.remove(slot as usize);
                    ep.accelerated.fetch_sub(1, Ordering::AcqRel);
                }
                super::demote(rec, "registered in too many epoll instances");
                // SAFETY: plain forward after demotion.
                let r = unsafe { real::epoll_ctl(ep.epfd.load(Ordering::Relaxed), op, fd, event) };
                if r == 0 {
                    crate::epoll::record_ctl(ep, op, fd, events, data);
                    return Ok(0);
                }
                return Err(errno::last());
            }
            mark_ready(ep_id, slot);
            Ok(0)
        }
        libc::EPOLL_CTL_MOD => {
            if events & libc::EPOLLEXCLUSIVE as u32 != 0 {
                return Err(Errno(libc::EINVAL));
            }
            let slot = {
                let mut st = ep.lock();
                let Some(slot) = st.find(fd) else {
                    return Err(Errno(libc::ENOENT));
                };
                let i = &mut st.interests[slot];
                if i.events & libc::EPOLLEXCLUSIVE as u32 != 0 {
                    return Err(Errno(libc::EINVAL));
                }
                i.events = events;
                i.data = data;
                i.disarmed = false;
                slot as u32
            };
            mark_ready(ep_id, slot);
            Ok(0)
        }
        libc::EPOLL_CTL_DEL => {
            let slot = {
                let mut st = ep.lock();
                let Some(slot) = st.find(fd) else {
                    return Err(Errno(libc::ENOENT));
                };
                st.remove(slot);
                ep.accelerated.fetch_sub(1, Ordering::AcqRel);
                slot as u32
            };
            rec.lock_io().remove_watcher(ep_id, slot);
            Ok(0)
        }
        _ => Err(Errno(libc::EINVAL)),
    }
}

/// A socket just moved to the ring engine: its registrations in kernel epoll sets move
/// into the shim.
pub fn adopt_kernel_registrations(rec: &'static SocketRecord, fd: c_int) {
    let sock_id = rec.id.load(Ordering::Relaxed);
    for ep_id in 0..EPOLLS.high_water() {
        let Some(ep) = EPOLLS.get(ep_id) else {
            continue;
        };
        if ep.alias_count.load(Ordering::Acquire) == 0 {
            continue;
        }
        let adopted = {
            let mut st = ep.lock();
            match st.find(fd) {
                Some(slot)
                    if st.interests[slot].socket == Some(sock_id)
                        && !st.interests[slot].accelerated =>
                {
                    // SAFETY: removing the fd from the application's kernel set.
                    unsafe {
                        real::epoll_ctl(
                            ep.epfd.load(Ordering::Relaxed),
                            libc::EPOLL_CTL_DEL,
                            fd,
                            core::ptr::null_mut(),
                        )
                    };
                    st.interests[slot].accelerated = true;
                    ep.accelerated.fetch_add(1, Ordering::AcqRel);
                    Some((slot as u32, st.interests[slot].events))
                }
                _ => None,
            }
        };
        if let Some((slot, events)) = adopted {
            ensure_bridge(ep);
            let _ = events;
            rec.lock_io().add_watcher(ep_id, slot);
            mark_ready(ep_id, slot);
        }
    }
}

/// A demoted socket's registration goes back into the kernel set.
pub fn return_to_kernel(ep_id: u32, slot: u32) {
    let Some(ep) = EPOLLS.get(ep_id) else { return };
    let mut st = ep.lock();
    let Some(i) = st.interests.get_mut(slot as usize) else {
        return;
    };
    if i.fd < 0 || !i.accelerated {
        return;
    }
    i.accelerated = false;
    let was_queued = i.queued;
    i.queued = false;
    let mut ev = epoll_event {
        events: i.events,
        u64: i.data,
    };
    // SAFETY: registering the fd in the application's kernel set.
    unsafe {
        real::epoll_ctl(
            ep.epfd.load(Ordering::Relaxed),
            libc::EPOLL_CTL_ADD,
            i.fd,
            &mut ev,
        )
    };
    ep.accelerated.fetch_sub(1, Ordering::AcqRel);
    if was_queued {
        st.ready.retain(|&r| r != slot);
    }
}

/// Moves ready accelerated interests into `events`; returns how many.
///
/// # Safety
/// `events` must have room for `max` entries.
unsafe fn harvest(ep: &EpollRecord, events: *mut epoll_event, max: usize) -> usize {
    let mut detached: Vec<&'static SocketRecord> = Vec::new();
    let n = {
        let mut st = ep.lock();
        // SAFETY: forwarded caller contract.
        unsafe { harvest_locked(&mut st, events, max, &mut detached) }
    };
    for rec in detached {
        super::finish_detach(rec);
    }
    n
}

/// # Safety
/// `events` must have room for `max` entries.
unsafe fn harvest_locked(
    st: &mut crate::epoll::EpollState,
    events: *mut epoll_event,
    max: usize,
    detached: &mut Vec<&'static SocketRecord>,
) -> usize {
    let rounds = st.ready.len();
    let mut n = 0;
    let cap = send_cap();
    for _ in 0..rounds {
        if n == max {
            break;
        }
        let Some(slot) = st.ready.pop_front() else {
            break;
        };
        let i = st.interests[slot as usize];
        if i.fd < 0 || !i.accelerated {
            continue;
        }
        let Some(rec) = i.socket.and_then(|s| SOCKETS.get(s)) else {
            st.interests[slot as usize].queued = false;
            continue;
        };
        let mask = i.events | (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        let ev = {
            let mut io = rec.lock_io();
            if io.detached && io.rx.is_empty() {
                // A fork child's (or demoted) socket with nothing left in the shim:
                // it goes back to the kernel set once the lock is released.
                detached.push(rec);
                st.interests[slot as usize].queued = false;
                continue;
            }
            // Always armed, whatever the interest: resets and end-of-file are seen
            // only through a receive. The harvesting thread is the waiter, whose ring
            // is reaped.
            ensure_recv(rec, &mut io);
            io.events(cap) & mask
        };
        if i.disarmed || ev == 0 {
            st.interests[slot as usize].queued = false;
            continue;
        }
        // SAFETY: n < max, inside the caller's array.
        unsafe {
            events.add(n).write(epoll_event {
                events: ev,
                u64: i.data,
            })
        };
        n += 1;
        let e = &mut st.interests[slot as usize];
        if i.events & libc::EPOLLONESHOT as u32 != 0 {
            e.disarmed = true;
            e.queued = false;
        } else if i.events & libc::EPOLLET as u32 != 0 {
            e.queued = false;
        } else {
            st.ready.push_back(slot);
        }
    }
    n
}

/// Reads the kernel set without blocking, dropping the bridge's own events.
///
/// # Safety
/// `events` must have room for `max` entries.
unsafe fn harvest_kernel(
    ep: &EpollRecord,
    epfd: c_int,
    events: *mut epoll_event,
    max: usize,
) -> Result<(usize, bool), Errno> {
    if max == 0 {
        return Ok((0, false));
    }
    // SAFETY: caller's array with room for `max`.
    let r = unsafe { real::epoll_wait(epfd, events, max as c_int, 0) };
    if r < 0 {
        return Err(errno::last());
    }
    let mut kept = 0;
    let mut bridge = false;
    for k in 0..r as usize {
        // SAFETY: the kernel wrote `r` entries.
        let e = unsafe { events.add(k).read() };
        if e.u64 == crate::ustack::CONTROL_TAG {
            crate::ustack::check_link();
            bridge = true;
            continue;
        }
        if e.u64 == BRIDGE_TAG || e.u64 == crate::ustack::WAKE_TAG {
            bridge |= e.u64 == BRIDGE_TAG;
            if e.u64 == crate::ustack::WAKE_TAG {
                crate::ustack::woken();
                crate::ustack::pump();
                bridge = true;
            }
            continue;
        }
        // SAFETY: kept <= k < r.
        unsafe { events.add(kept).write(e) };
        kept += 1;
    }
    if bridge {
        drain_bridge(ep);
    }
    Ok((kept, bridge))
}

fn now_ns() -> u128 {
    let mut ts = timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// A timeout the kernel would reject (negative, or nanoseconds out of range).
fn invalid_timeout(t: &Option<timespec>) -> bool {
    t.is_some_and(|t| t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec))
}

fn deadline_of(t: Option<timespec>) -> Option<u128> {
    t.map(|t| now_ns() + (t.tv_sec.max(0) as u128) * 1_000_000_000 + t.tv_nsec.max(0) as u128)
}

/// Time left until `deadline`: Some(None) for "forever", None when it passed.
fn remaining(deadline: Option<u128>) -> Option<Option<timespec>> {
    match deadline {
        None => Some(None),
        Some(d) => {
            let now = now_ns();
            if now >= d {
                return None;
            }
            let left = d - now;
            Some(Some(timespec {
                tv_sec: (left / 1_000_000_000) as i64,
                tv_nsec: (left % 1_000_000_000) as i64,
            }))
        }
    }
}

/// epoll_wait/epoll_pwait/epoll_pwait2 on an instance with accelerated members.
///
/// # Safety
/// `events` must have room for `max` entries; `sigmask` null or valid.
pub unsafe fn epoll_wait(
    ep: &'static EpollRecord,
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: Option<timespec>,
    sigmask: *const sigset_t,
) -> Result<c_int, Errno> {
    if invalid_timeout(&timeout) {
        return Err(Errno(libc::EINVAL));
    }
    if max <= 0 {
        return Err(Errno(libc::EINVAL));
    }
    if events.is_null() {
        return Err(Errno(libc::EFAULT));
    }
    stats::bump(Counter::EpollWaits);
    let max = max as usize;
    let deadline = deadline_of(timeout);
    // SAFETY: null or a valid sigset per the caller's contract.
    let mask = unsafe { sigmask.as_ref() };
    let Some(ring) = ring::mine() else {
        // SAFETY: caller contract.
        return unsafe { epoll_wait_without_ring(ep, epfd, events, max, deadline, sigmask) };
    };
    ring.set_loop_thread();
    requeue_after_fork(ep);
    let mut settled = false;
    let ep_id = ep.id.load(Ordering::Relaxed);
    let incarnation = ep.incarnation.load(Ordering::Relaxed);
    loop {
        // Only what is already in user memory: the one enter per turn below (the sleep,
        // or the submit before returning) hands queued sends to the kernel and runs
        // deferred completions together.
        if ring.work_pending_in_kernel() {
            // Completions are known to be waiting in the kernel (data already arrived):
            // the kernel's epoll would report them now, so run them before answering.
            process(ring);
        } else {
            super::process_local(ring);
        }
        refresh_exposed();
        // The kernel's own members go first on the turn after the shim's ready list
        // filled the caller's array alone: level-triggered accelerated sockets that stay
        // ready must not starve them (the kernel rotates its ready list the same way).
        let kernel_first = ep.kernel_turn.swap(false, Ordering::Relaxed);
        let mut n = 0;
        let mut kernel_checked = false;
        if kernel_first && ring.epoll_check_needed(ep_id, incarnation) {
            // SAFETY: room for `max` entries.
            n = unsafe { harvest_kernel(ep, epfd, events, max) }?.0;
            kernel_checked = true;
        }
        if n < max {
            // SAFETY: room for `max - n` entries after the first n.
            n += unsafe { harvest(ep, events.add(n), max - n) };
        }
        if !kernel_checked && n < max && ring.epoll_check_needed(ep_id, incarnation) {
            // SAFETY: room for `max - n` entries after the first n. The bridge only says
            // the ready list changed; it was harvested above.
            n += unsafe { harvest_kernel(ep, epfd, events.add(n), max - n) }?.0;
        } else if !kernel_checked && n == max {
            ep.kernel_turn.store(true, Ordering::Relaxed);
        }
        ring.arm_epoll_watch(ep_id, incarnation, epfd);
        if n > 0 {
            if ep.exposed.load(Ordering::Relaxed) && any_truly_ready(ep) {
                signal_bridge(ep);
            }
            if ring.has_unsubmitted() {
                let _ = ring::with_busy(|| ring.submit());
            }
            return Ok(n as c_int);
        }
        let Some(left) = remaining(deadline) else {
            if !settled && (ring.has_unsubmitted() || ring.work_pending()) {
                super::settle(ring);
                settled = true;
                continue;
            }
            return Ok(0);
        };
        ep.sleepers.fetch_add(1, Ordering::SeqCst);
        let r = ring.sleep(left, mask, || ep.lock().ready.is_empty());
        ep.sleepers.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = r {
            if e.0 == libc::EINTR {
                process(ring);
                return Err(e);
            }
            return Err(e);
        }
    }
}

/// epoll_wait on an instance without accelerated members: the kernel wait, counted as
/// a sleeper so that another thread adding the first accelerated member wakes it
/// through the bridge, which is then filtered out and the wait continues merged.
///
/// # Safety
/// As epoll_pwait2.
pub unsafe fn epoll_wait_kernel(
    ep: &'static EpollRecord,
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: Option<timespec>,
    sigmask: *const sigset_t,
    precise: bool,
) -> Result<c_int, Errno> {
    if invalid_timeout(&timeout) {
        return Err(Errno(libc::EINVAL));
    }
    let deadline = deadline_of(timeout);
    loop {
        let left = remaining(deadline);
        let left_ts = match left {
            None => Some(timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
            Some(t) => t,
        };
        ep.sleepers.fetch_add(1, Ordering::SeqCst);
        let r = if precise {
            let p = left_ts
                .as_ref()
                .map_or(core::ptr::null(), |t| t as *const timespec);
            // SAFETY: the caller's buffers; our timeout.
            unsafe { real::epoll_pwait2(epfd, events, max, p, sigmask) }
        } else {
            // Milliseconds, rounded up as the kernel rounds epoll_wait's timeout.
            let ms = left_ts.map_or(-1, |t| {
                let ns = t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128;
                ((ns + 999_999) / 1_000_000).min(i32::MAX as i128) as c_int
            });
            // SAFETY: the caller's buffers.
            unsafe { real::epoll_pwait(epfd, events, max, ms, sigmask) }
        };
        ep.sleepers.fetch_sub(1, Ordering::SeqCst);
        if r < 0 {
            return Err(errno::last());
        }
        let mut kept = 0;
        let mut bridge = false;
        for k in 0..r as usize {
            // SAFETY: the kernel wrote r entries.
            let e = unsafe { events.add(k).read() };
            if e.u64 == BRIDGE_TAG {
                bridge = true;
                continue;
            }
            if e.u64 == crate::ustack::CONTROL_TAG {
                crate::ustack::check_link();
                bridge = true;
                continue;
            }
            if e.u64 == crate::ustack::WAKE_TAG {
                // stackd posted: run its messages, then look at the ready list again.
                crate::ustack::woken();
                crate::ustack::pump();
                bridge = true;
                continue;
            }
            // SAFETY: kept <= k.
            unsafe { events.add(kept).write(e) };
            kept += 1;
        }
        if !bridge || kept > 0 {
            return Ok(kept as c_int);
        }
        drain_bridge(ep);
        if merged(ep) {
            let t = remaining(deadline).map_or(
                Some(timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }),
                |t| t,
            );
            // SAFETY: forwarded caller contract.
            return unsafe { epoll_wait(ep, epfd, events, max, t, sigmask) };
        }
        if left.is_none() {
            return Ok(0);
        }
    }
}

/// A thread without a ring of its own waits in the kernel; the bridge eventfd in the
/// set wakes it when another thread's completions make a member ready.
///
/// # Safety
/// As epoll_wait.
unsafe fn epoll_wait_without_ring(
    ep: &EpollRecord,
    epfd: c_int,
    events: *mut epoll_event,
    max: usize,
    deadline: Option<u128>,
    sigmask: *const sigset_t,
) -> Result<c_int, Errno> {
    ensure_bridge(ep);
    ensure_ustack_wakes(ep);
    loop {
        crate::ustack::pump();
        // Both halves, as the kernel's epoll_wait reports every ready member: ready
        // accelerated sockets must not hide the kernel's (a timeout-0 wait answered
        // from the shim alone lost them).
        let kernel_first = ep.kernel_turn.load(Ordering::Relaxed);
        let (n, next) = crate::epoll::merge_ready(
            max,
            kernel_first,
            // SAFETY: offset + room <= max: inside the caller's array.
            |at, room| unsafe { harvest(ep, events.add(at), room) },
            // SAFETY: as above.
            |at, room| unsafe { harvest_kernel(ep, epfd, events.add(at), room) }.map(|r| r.0),
        )?;
        if next != kernel_first {
            ep.kernel_turn.store(next, Ordering::Relaxed);
        }
        if n > 0 {
            return Ok(n as c_int);
        }
        let ms = match remaining(deadline) {
            None => 0,
            Some(None) => -1,
            Some(Some(_)) => deadline.map_or(-1, |d| {
                ((d.saturating_sub(now_ns())) / 1_000_000).min(i32::MAX as u128) as c_int
            }),
        };
        ep.sleepers.fetch_add(1, Ordering::SeqCst);
        if !ep.lock().ready.is_empty() || !crate::ustack::prepare_sleep() {
            ep.sleepers.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        // SAFETY: the caller's array.
        let r = unsafe { real::epoll_pwait(epfd, events, max as c_int, ms, sigmask) };
        ep.sleepers.fetch_sub(1, Ordering::SeqCst);
        if r < 0 {
            return Err(errno::last());
        }
        let mut kept = 0;
        let mut bridge = false;
        for k in 0..r as usize {
            // SAFETY: the kernel wrote r entries.
            let e = unsafe { events.add(k).read() };
            if e.u64 == BRIDGE_TAG {
                bridge = true;
                continue;
            }
            if e.u64 == crate::ustack::CONTROL_TAG {
                crate::ustack::check_link();
                bridge = true;
                continue;
            }
            if e.u64 == crate::ustack::WAKE_TAG {
                // stackd posted: run its messages, then look at the ready list again.
                crate::ustack::woken();
                crate::ustack::pump();
                bridge = true;
                continue;
            }
            // SAFETY: kept <= k.
            unsafe { events.add(kept).write(e) };
            kept += 1;
        }
        if bridge {
            drain_bridge(ep);
            // SAFETY: room after kept.
            kept += unsafe { harvest(ep, events.add(kept), max - kept) };
        }
        if kept > 0 || ms == 0 {
            return Ok(kept as c_int);
        }
    }
}

thread_local! {
    static POLL_GEN: Cell<u32> = const { Cell::new(0) };
}

/// Completion of a per-call poll request: nothing to record, the caller re-polls.
pub fn on_poll_fd(_id: u32, _gen: u32, _res: i32) {}

/// Whether a poll set contains accelerated sockets (or epoll fds whose shim readiness
/// must become kernel-visible first).
///
/// # Safety
/// `fds` holds `n` entries.
pub unsafe fn poll_needs_shim(fds: *mut pollfd, n: nfds_t) -> bool {
    let mut needs = super::ring_holds_work();
    for k in 0..n as usize {
        // SAFETY: caller contract.
        let fd = unsafe { (*fds.add(k)).fd };
        if crate::socket::accelerated(fd).is_some() {
            needs = true;
        } else if let Some(ep) = crate::epoll::lookup(fd) {
            if merged(ep) {
                // Its members' completions arrive through this thread's ring: the wait
                // must drive it.
                expose(ep, fd);
                needs = true;
            }
        }
    }
    needs
}

fn poll_bits(ev: u32) -> i16 {
    // EPOLLIN/OUT/ERR/HUP/RDHUP/RDNORM/WRNORM have the same values as their POLL* twins.
    (ev & 0xffff) as i16
}

/// poll/ppoll over a set with accelerated sockets.
///
/// # Safety
/// `fds` holds `n` entries; `sigmask` null or valid.
pub unsafe fn poll(
    fds: *mut pollfd,
    n: nfds_t,
    timeout: Option<timespec>,
    sigmask: *const sigset_t,
) -> Result<c_int, Errno> {
    if invalid_timeout(&timeout) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: caller contract.
    let set = unsafe { core::slice::from_raw_parts_mut(fds, n as usize) };
    let deadline = deadline_of(timeout);
    // SAFETY: null or valid.
    let mask = unsafe { sigmask.as_ref() };
    let ring = ring::mine();
    if let Some(r) = ring {
        r.set_loop_thread();
    }
    let cap = send_cap();
    for p in set.iter() {
        if p.events & libc::POLLPRI != 0 {
            if let Some(rec) = crate::socket::accelerated(p.fd) {
                // Urgent data is invisible to a ring receive.
                super::demote(rec, "POLLPRI interest");
            }
        }
    }
    let mut settled = false;
    let mut accel: Vec<Option<&'static SocketRecord>> = set
        .iter()
        .map(|p| {
            crate::socket::accelerated(p.fd).filter(|rec| {
                !crate::ustack::io::is_listener(rec) || crate::ustack::io::join(rec, p.fd)
            })
        })
        .collect();
    let mut served = vec![false; set.len()];
    loop {
        if let Some(r) = ring {
            process(r);
            refresh_exposed();
        }
        crate::ustack::pump();
        // Which accelerated members the shim must answer for: those whose bytes or
        // operations it holds. A socket the shim holds nothing of is polled in the
        // kernel, exactly; poll() never arms receives (it cannot own them: the thread
        // may never wait through the shim again).
        let me = ring.map(|r| u32::from(r.id) + 1);
        for ((p, a), shim) in set.iter().zip(accel.iter_mut()).zip(served.iter_mut()) {
            *shim = false;
            let Some(rec) = *a else { continue };
            let (leftover_done, holds) = {
                let io = rec.lock_io();
                (io.detached && io.rx.is_empty(), !io.holds_nothing())
            };
            if leftover_done {
                super::finish_detach(rec);
            }
            if crate::socket::accelerated(p.fd).is_none() {
                // Demoted or closed meanwhile: the kernel answers from now on.
                *a = None;
                continue;
            }
            // A listener with a stackd side is polled in the kernel too (its loopback
            // peers); stackd's connections are added below.
            *shim = holds && !crate::ustack::io::is_listener(rec);
            if holds {
                let owner = rec.lock_io().owner;
                if let Some(me) = me.filter(|&m| m != owner) {
                    // Its completions arrive on another thread's ring: ask to be woken.
                    rec.remote_waker().store(me, Ordering::Release);
                }
            }
        }
        let has_kernel = served.iter().zip(set.iter()).any(|(s, p)| !*s && p.fd >= 0);
        let mut count = 0;
        // Kernel members: one non-blocking poll over the same array with the
        // shim-served entries hidden (negative fds are ignored by the kernel).
        if has_kernel {
            for (p, s) in set.iter_mut().zip(served.iter()) {
                if *s {
                    p.fd = !p.fd;
                }
            }
            // SAFETY: the caller's array.
            let r = unsafe { real::poll(set.as_mut_ptr(), n, 0) };
            let err = errno::get();
            for (p, s) in set.iter_mut().zip(served.iter()) {
                if *s {
                    p.fd = !p.fd;
                }
            }
            if r < 0 {
                return Err(Errno(err));
            }
            count += r;
            for (p, a) in set.iter_mut().zip(accel.iter()) {
                let Some(rec) = a else { continue };
                if p.events & libc::POLLIN != 0 && crate::ustack::io::is_listener(rec) {
                    let waiting = !rec.lock_io().us.accept_queue.is_empty();
                    if waiting && p.revents == 0 {
                        count += 1;
                    }
                    if waiting {
                        p.revents |= libc::POLLIN;
                    }
                }
            }
        }
        for ((p, a), s) in set.iter_mut().zip(accel.iter()).zip(served.iter()) {
            let Some(rec) = a else { continue };
            if !*s {
                continue;
            }
            let want = (p.events as u16 as u32) | (libc::POLLERR | libc::POLLHUP) as u32;
            let ev = rec.lock_io().events(cap) & want;
            p.revents = poll_bits(ev);
            if p.revents != 0 {
                count += 1;
            }
        }
        if count > 0 {
            if let Some(r) = ring {
                let _ = ring::with_busy(|| r.submit());
            }
            return Ok(count);
        }
        let Some(left) = remaining(deadline) else {
            if let Some(r) = ring {
                if !settled && (r.has_unsubmitted() || r.work_pending()) {
                    // Receives armed by this call have not run yet: give them one
                    // chance to report what the kernel already holds (EOF, bytes).
                    super::settle(r);
                    settled = true;
                    continue;
                }
            }
            return Ok(0);
        };
        match ring {
            Some(r) => {
                let gen = POLL_GEN.with(|g| {
                    let v = g.get().wrapping_add(1);
                    g.set(v);
                    v
                });
                let ud = ring::user_data(Op::PollFd, 0, gen);
                let mut armed = false;
                for (p, shim) in set.iter().zip(served.iter()) {
                    if !*shim && p.fd >= 0 {
                        r.push(
                            opcode::PollAdd::new(
                                types::Fd(p.fd),
                                (p.events as u16 as u32) | (libc::POLLERR | libc::POLLHUP) as u32,
                            )
                            .build()
                            .user_data(ud),
                        );
                        armed = true;
                    }
                }
                let res = r.sleep(left, mask, || true);
                if armed {
                    r.push(
                        opcode::AsyncCancel2::new(types::CancelBuilder::user_data(ud).all())
                            .build()
                            .user_data(ring::user_data(Op::Cancel, 0, 0)),
                    );
                }
                res?;
            }
            None if crate::init::config().backend == ringshim_common::config::Backend::Ustack => {
                // The kernel members and the ustack workers' eventfds in one sleep.
                let mut all: Vec<pollfd> = set
                    .iter()
                    .zip(served.iter())
                    .map(|(p, s)| pollfd {
                        fd: if *s { -1 } else { p.fd },
                        events: p.events,
                        revents: 0,
                    })
                    .collect();
                let first_wake = all.len();
                let mut wake = [-1; 65];
                let mut n_wake = crate::ustack::wake_fds(&mut wake[..64]);
                let control = crate::ustack::control_fd();
                if control >= 0 {
                    wake[n_wake] = control;
                    n_wake += 1;
                }
                all.extend(wake[..n_wake].iter().map(|&fd| pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }));
                let blocked = crate::ustack::enter_blocked();
                all.push(pollfd {
                    fd: blocked.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                let now_ready =
                    set.iter()
                        .zip(accel.iter())
                        .zip(served.iter())
                        .any(|((p, a), s)| {
                            *s && a.is_some_and(|rec| {
                                let want = (p.events as u16 as u32)
                                    | (libc::POLLERR | libc::POLLHUP) as u32;
                                rec.lock_io().events(cap) & want != 0
                            })
                        });
                if !crate::ustack::prepare_sleep() || now_ready {
                    continue;
                }
                let left_ts = left
                    .as_ref()
                    .map_or(core::ptr::null(), |t| t as *const timespec);
                // SAFETY: our own array; the caller's timeout and mask.
                let r =
                    unsafe { real::ppoll(all.as_mut_ptr(), all.len() as nfds_t, left_ts, sigmask) };
                let err = errno::get();
                drop(blocked);
                if r < 0 && err == libc::EINTR {
                    return Err(Errno(err));
                }
                if control >= 0 && all[first_wake + n_wake - 1].revents != 0 {
                    crate::ustack::check_link();
                    n_wake -= 1;
                }
                crate::ustack::woken_by(&all[first_wake..first_wake + n_wake]);
            }
            None => {
                // No ring on this thread: sleep in slices so other threads' completions
                // are seen (rare: ring creation failed here).
                // SAFETY: the caller's array with accelerated entries hidden.
                for (p, a) in set.iter_mut().zip(served.iter()) {
                    if *a {
                        p.fd = !p.fd;
                    }
                }
                let slice = timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                let r = unsafe { real::ppoll(set.as_mut_ptr(), n, &slice, sigmask) };
                let err = errno::get();
                for (p, a) in set.iter_mut().zip(served.iter()) {
                    if *a {
                        p.fd = !p.fd;
                    }
                }
                if r < 0 && err == libc::EINTR {
                    return Err(Errno(err));
                }
            }
        }
    }
}

/// Whether a select set contains accelerated sockets.
///
/// # Safety
/// The sets hold at least `nfds` bits.
pub unsafe fn select_needs_shim(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
) -> bool {
    if super::ring_holds_work() {
        return true;
    }
    let nfds = nfds.clamp(0, libc::FD_SETSIZE as c_int);
    for fd in 0..nfds {
        // SAFETY: fd < nfds <= FD_SETSIZE, inside the sets.
        let member = unsafe {
            (!r.is_null() && libc::FD_ISSET(fd, r))
                || (!w.is_null() && libc::FD_ISSET(fd, w))
                || (!e.is_null() && libc::FD_ISSET(fd, e))
        };
        if member {
            if crate::socket::accelerated(fd).is_some() {
                return true;
            }
            if let Some(ep) = crate::epoll::lookup(fd) {
                if merged(ep) {
                    expose(ep, fd);
                    return true;
                }
            }
        }
    }
    false
}

/// select/pselect over a set with accelerated sockets, served by [`poll`].
///
/// # Safety
/// The sets hold at least `nfds` bits; `sigmask` null or valid.
pub unsafe fn select(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    timeout: Option<timespec>,
    sigmask: *const sigset_t,
) -> Result<c_int, Errno> {
    if invalid_timeout(&timeout) {
        return Err(Errno(libc::EINVAL));
    }
    if !(0..=libc::FD_SETSIZE as c_int).contains(&nfds) {
        return Err(Errno(libc::EINVAL));
    }
    let mut set: Vec<pollfd> = Vec::new();
    for fd in 0..nfds {
        let mut events = 0;
        // SAFETY: fd < nfds, inside the sets.
        unsafe {
            if !r.is_null() && libc::FD_ISSET(fd, r) {
                events |= libc::POLLIN;
            }
            if !w.is_null() && libc::FD_ISSET(fd, w) {
                events |= libc::POLLOUT;
            }
            if !e.is_null() && libc::FD_ISSET(fd, e) {
                events |= libc::POLLPRI;
            }
        }
        if events != 0 {
            set.push(pollfd {
                fd,
                events,
                revents: 0,
            });
        }
    }
    // SAFETY: our own array.
    let res = unsafe { poll(set.as_mut_ptr(), set.len() as nfds_t, timeout, sigmask) }?;
    if set.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        return Err(Errno(libc::EBADF));
    }
    let mut count = 0;
    // SAFETY: clearing and filling the caller's sets within nfds bits.
    unsafe {
        for s in [r, w, e] {
            if !s.is_null() {
                for fd in 0..nfds {
                    libc::FD_CLR(fd, s);
                }
            }
        }
        if res > 0 {
            for p in &set {
                let rv = p.revents;
                if !r.is_null()
                    && p.events & libc::POLLIN != 0
                    && rv & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                {
                    libc::FD_SET(p.fd, r);
                    count += 1;
                }
                if !w.is_null()
                    && p.events & libc::POLLOUT != 0
                    && rv & (libc::POLLOUT | libc::POLLERR) != 0
                {
                    libc::FD_SET(p.fd, w);
                    count += 1;
                }
                if !e.is_null() && p.events & libc::POLLPRI != 0 && rv & libc::POLLPRI != 0 {
                    libc::FD_SET(p.fd, e);
                    count += 1;
                }
            }
        }
    }
    Ok(count)
}
