//! `RINGSHIM_BALANCE=exact`: new connections go to the SO_REUSEPORT listener whose
//! worker holds the fewest open connections, instead of wherever the 4-tuple hashes.
//!
//! The hash spreads connections evenly only on average; one client opening many
//! long-lived connections, or connections that live very different lengths of time,
//! pile onto some workers while others idle (seed 002, Intel DLB's answer). The shim
//! knows every accept and every close, so it knows each listener's open connections.
//!
//! How the choice reaches the kernel: each group of listeners sharing an address and
//! port gets an `SK_REUSEPORT` eBPF program, a `REUSEPORT_SOCKARRAY` map holding the
//! listeners in the order they called listen(), and a small memory-mappable array of
//! counters — `[target, members, open[0], open[1], ...]`. accept() and close() update
//! the counters with plain atomic adds on that shared mapping and store the least loaded
//! member as `target`; the program, run by the kernel for each new connection, selects
//! `target` from the socket array. The kernel then queues the connection on the chosen
//! listener itself. Compared with per-thread hand-off queues this moves no descriptor
//! between threads, adds no wake-up, keeps readiness entirely the kernel's, costs no
//! system call after set-up, and serves multi-process servers too: nginx's master
//! creates one reuseport listener per worker before forking, and the workers inherit
//! the program, the maps and the shared mapping.
//!
//! Bounds and fallbacks: loading the program needs CAP_BPF (root); without it, or
//! with a kernel that refuses, the group keeps the kernel's hash and the reason is
//! logged once. The choice is exact up to connections that arrive between an accept
//! and the counter update (they follow the previous target). A connection closed by a
//! forked child rather than by the process that accepted it is not counted down (the
//! pre-fork pattern: the parent's close already did). exec detaches the programs: the
//! new image starts without the counters, and a stale target would pin every new
//! connection to one listener.

use crate::socket::SocketRecord;
use crate::stats;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use ringshim_common::config::Balance;
use ringshim_common::stats::Counter;
use std::sync::Mutex;

/// Listener groups (address:port pairs) one process can balance.
const MAX_GROUPS: usize = 16;
/// Listeners per group (workers).
const MAX_MEMBERS: usize = 64;
/// Shared counter words: target, member count, then one per member.
const WORDS: usize = 2 + MAX_MEMBERS;
const TARGET: usize = 0;
const MEMBERS: usize = 1;

/// The shared counters of each group, mapped MAP_SHARED from its BPF array map.
static SHARED: [AtomicPtr<AtomicU64>; MAX_GROUPS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_GROUPS];

/// Bumped in every fork child: a socket is counted down only by the process image that
/// counted it up.
static PROCESS_EPOCH: AtomicU32 = AtomicU32::new(1);

/// Set when some group has its program attached (exec must detach it).
static ANY_ATTACHED: AtomicBool = AtomicBool::new(false);

/// Once the program could not be loaded, later listeners do not retry (one log line).
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Set-up bookkeeping, touched only by listen() and exec.
struct GroupKey {
    family: i32,
    port: u16,
    addr: [u8; 16],
    sockarray_fd: i32,
    prog_fd: i32,
    attached: bool,
}

static GROUPS: Mutex<Vec<GroupKey>> = Mutex::new(Vec::new());

/// What a socket record stores: 0, or (group + 1) << 16 | member.
pub struct Slot(pub u32);

impl Slot {
    fn new(group: usize, member: usize) -> Slot {
        Slot(((group as u32 + 1) << 16) | member as u32)
    }

    fn group(&self) -> Option<usize> {
        (self.0 != 0).then(|| (self.0 >> 16) as usize - 1)
    }

    fn member(&self) -> usize {
        (self.0 & 0xffff) as usize
    }
}

fn enabled() -> bool {
    crate::init::config().balance == Balance::Exact
}

fn words(group: usize) -> Option<&'static [AtomicU64; WORDS]> {
    let p = SHARED.get(group)?.load(Ordering::Acquire);
    // SAFETY: a MAP_SHARED mapping of at least WORDS u64s, never unmapped, only ever
    // accessed atomically.
    (!p.is_null()).then(|| unsafe { &*(p as *const [AtomicU64; WORDS]) })
}

/// Stores the least loaded member as the group's target. Ties go to the lowest index.
fn retarget(w: &[AtomicU64; WORDS]) {
    let members = (w[MEMBERS].load(Ordering::Acquire) as usize).min(MAX_MEMBERS);
    let mut best = 0usize;
    let mut best_open = u64::MAX;
    for m in 0..members {
        let open = w[2 + m].load(Ordering::Relaxed);
        if open < best_open {
            best = m;
            best_open = open;
        }
    }
    if w[TARGET].swap(best as u64, Ordering::AcqRel) != best as u64 {
        stats::bump(Counter::BalanceDecisions);
    }
}

/// listen() succeeded on `fd`: if it is an SO_REUSEPORT TCP listener, it joins its
/// address's group as the next member.
pub fn on_listen(rec: &SocketRecord, fd: i32) {
    if !enabled() || UNAVAILABLE.load(Ordering::Relaxed) {
        return;
    }
    if rec.balance.load(Ordering::Acquire) != 0 {
        // listen() again on a member (nginx re-listens to apply a new backlog).
        return;
    }
    let mut on: libc::c_int = 0;
    let mut len = core::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: our own int and length.
    let r = unsafe {
        crate::real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || on == 0 {
        return;
    }
    let Some((family, port, addr)) = local_address(fd) else {
        return;
    };
    let Ok(mut groups) = GROUPS.lock() else {
        return;
    };
    let g = match groups
        .iter()
        .position(|k| k.family == family && k.port == port && k.addr == addr)
    {
        Some(g) => g,
        None => {
            if groups.len() >= MAX_GROUPS {
                crate::log_warn!("balance: more than {MAX_GROUPS} reuseport addresses; port {port} keeps the kernel's hash");
                return;
            }
            match bpf::create_group() {
                Ok((sockarray_fd, prog_fd, shared)) => {
                    SHARED[groups.len()].store(shared, Ordering::Release);
                    groups.push(GroupKey {
                        family,
                        port,
                        addr,
                        sockarray_fd,
                        prog_fd,
                        attached: false,
                    });
                    groups.len() - 1
                }
                Err((what, e)) => {
                    UNAVAILABLE.store(true, Ordering::Relaxed);
                    stats::bump(Counter::Fallbacks);
                    crate::log_warn!("RINGSHIM_BALANCE=exact unavailable ({what} failed, errno {e}: needs CAP_BPF or root); reuseport listeners keep the kernel's hash");
                    return;
                }
            }
        }
    };
    let Some(w) = words(g) else { return };
    let member = w[MEMBERS].load(Ordering::Acquire) as usize;
    if member >= MAX_MEMBERS {
        crate::log_warn!("balance: more than {MAX_MEMBERS} listeners on port {port}; fd {fd} keeps the kernel's hash");
        return;
    }
    let key = &mut groups[g];
    if let Err(e) = bpf::set_member(key.sockarray_fd, member as u32, fd) {
        crate::log_warn!(
            "balance: listener fd {fd} could not join the group of port {port} (errno {e})"
        );
        return;
    }
    w[2 + member].store(0, Ordering::Relaxed);
    w[MEMBERS].store(member as u64 + 1, Ordering::Release);
    if !key.attached {
        // SAFETY: setsockopt with our own int holding the program fd.
        let r = unsafe {
            crate::real::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_EBPF,
                (&key.prog_fd as *const i32).cast(),
                core::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r != 0 {
            crate::log_warn!(
                "balance: attaching the reuseport program on port {port} failed (errno {}); the kernel's hash stays",
                crate::errno::get()
            );
            return;
        }
        key.attached = true;
        ANY_ATTACHED.store(true, Ordering::Release);
    }
    rec.balance.store(Slot::new(g, member).0, Ordering::Release);
    retarget(w);
    crate::log_info!("balance: listener fd {fd} is member {member} of port {port}");
}

/// accept() on `listener` returned the socket `rec`: one more open connection for the
/// listener's worker.
#[inline]
pub fn on_accept(listener: &SocketRecord, rec: &SocketRecord) {
    let slot = Slot(listener.balance.load(Ordering::Acquire));
    let Some(g) = slot.group() else { return };
    let Some(w) = words(g) else { return };
    let member = slot.member();
    if w[TARGET].load(Ordering::Acquire) as usize != member {
        // Arrived between an accept and its counter update, or hashed (no selection).
        stats::bump(Counter::BalanceMisses);
    }
    w[2 + member].fetch_add(1, Ordering::AcqRel);
    rec.balance.store(slot.0, Ordering::Relaxed);
    rec.balance_epoch
        .store(PROCESS_EPOCH.load(Ordering::Relaxed), Ordering::Relaxed);
    retarget(w);
}

/// The last descriptor of `rec` was closed: one connection fewer for its worker.
#[inline]
pub fn on_release(rec: &SocketRecord) {
    let slot = Slot(rec.balance.swap(0, Ordering::AcqRel));
    let Some(g) = slot.group() else { return };
    if rec.listening.load(Ordering::Relaxed)
        || rec.balance_epoch.load(Ordering::Relaxed) != PROCESS_EPOCH.load(Ordering::Relaxed)
    {
        return;
    }
    let Some(w) = words(g) else { return };
    let open = &w[2 + slot.member()];
    let _ = open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
    retarget(w);
}

/// fork child: its closes of inherited connections are not the accepting process's.
pub fn after_fork_child() {
    PROCESS_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// exec: the new image has no counters; hand every group back to the kernel's hash.
pub fn before_exec() {
    if !ANY_ATTACHED.load(Ordering::Acquire) {
        return;
    }
    let mut detached = [false; MAX_GROUPS];
    crate::fdtable::for_each(|fd, e| {
        let crate::fdtable::Entry::Socket(_) = e else {
            return;
        };
        let Some(rec) = crate::socket::lookup(fd) else {
            return;
        };
        let Some(g) = Slot(rec.balance.load(Ordering::Acquire)).group() else {
            return;
        };
        if !rec.listening.load(Ordering::Relaxed) || detached[g] {
            return;
        }
        let zero: libc::c_int = 0;
        // SAFETY: setsockopt on the application's listener with our own int.
        let r = unsafe {
            crate::real::setsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_DETACH_REUSEPORT_BPF,
                (&zero as *const libc::c_int).cast(),
                core::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        detached[g] = r == 0;
    });
}

const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

/// The listener's family, port and address bytes (its reuseport group's identity).
fn local_address(fd: i32) -> Option<(i32, u16, [u8; 16])> {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: our own buffer with its true size.
    if unsafe {
        crate::real::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return None;
    }
    let mut addr = [0u8; 16];
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel filled an AF_INET address.
            let sin =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            addr[..4].copy_from_slice(&sin.sin_addr.s_addr.to_ne_bytes());
            Some((libc::AF_INET, u16::from_be(sin.sin_port), addr))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled an AF_INET6 address.
            let sin6 =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            addr.copy_from_slice(&sin6.sin6_addr.s6_addr);
            Some((libc::AF_INET6, u16::from_be(sin6.sin6_port), addr))
        }
        _ => None,
    }
}

/// The bpf(2) calls, written against the stable UAPI (no libbpf: the shim loads into
/// arbitrary processes and the program is twelve instructions).
mod bpf {
    use super::{AtomicU64, MAX_MEMBERS, WORDS};

    const MAP_CREATE: libc::c_long = 0;
    const MAP_UPDATE_ELEM: libc::c_long = 2;
    const PROG_LOAD: libc::c_long = 5;
    const MAP_TYPE_ARRAY: u32 = 2;
    const MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
    const F_MMAPABLE: u32 = 1 << 10;
    const PROG_TYPE_SK_REUSEPORT: u32 = 21;
    const ATTACH_SK_REUSEPORT_SELECT: u32 = 39;
    const FUNC_MAP_LOOKUP_ELEM: i32 = 1;
    const FUNC_SK_SELECT_REUSEPORT: i32 = 82;
    const PSEUDO_MAP_FD: u8 = 1;
    const SK_PASS: i32 = 1;

    /// union bpf_attr, as large as the kernel's current one (unused fields zero).
    #[repr(C, align(8))]
    struct Attr([u8; 144]);

    impl Attr {
        fn new() -> Attr {
            Attr([0; 144])
        }
        fn u32_at(&mut self, off: usize, v: u32) -> &mut Attr {
            self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
            self
        }
        fn u64_at(&mut self, off: usize, v: u64) -> &mut Attr {
            self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
            self
        }
    }

    fn bpf(cmd: libc::c_long, attr: &mut Attr) -> Result<i32, i32> {
        // SAFETY: bpf(2) with a fully initialised attribute block of its true size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut Attr,
                core::mem::size_of::<Attr>(),
            )
        };
        if r < 0 {
            Err(crate::errno::get())
        } else {
            Ok(r as i32)
        }
    }

    fn map(kind: u32, value_size: u32, entries: u32, flags: u32) -> Result<i32, i32> {
        let mut a = Attr::new();
        a.u32_at(0, kind)
            .u32_at(4, 4)
            .u32_at(8, value_size)
            .u32_at(12, entries)
            .u32_at(16, flags);
        bpf(MAP_CREATE, &mut a).map(crate::internal_fd::move_high)
    }

    /// struct bpf_insn: code, dst:4 | src:4, off, imm.
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        u64::from(code)
            | u64::from(dst & 0xf | (src & 0xf) << 4) << 8
            | u64::from(off as u16) << 16
            | u64::from(imm as u32) << 32
    }

    /// The program: look up `target` (word 0 of the counters) and select that member
    /// of the socket array. Any failure passes without a selection: the kernel's hash.
    fn program(counters_fd: i32, sockarray_fd: i32) -> [u64; 17] {
        const R0: u8 = 0;
        const R1: u8 = 1;
        const R2: u8 = 2;
        const R3: u8 = 3;
        const R4: u8 = 4;
        const R6: u8 = 6;
        const FP: u8 = 10;
        [
            insn(0xbf, R6, R1, 0, 0),                      // r6 = ctx
            insn(0x62, FP, 0, -4, 0),                      // *(u32 *)(fp - 4) = 0 (key)
            insn(0xbf, R2, FP, 0, 0),                      // r2 = fp
            insn(0x07, R2, 0, 0, -4),                      // r2 -= 4
            insn(0x18, R1, PSEUDO_MAP_FD, 0, counters_fd), // r1 = counters map
            insn(0, 0, 0, 0, 0),
            insn(0x85, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM), // r0 = &counters[0]
            insn(0x15, R0, 0, 9, 0),                   // if r0 == 0 goto pass
            insn(0x61, R1, R0, 0, 0),                  // r1 = *(u32 *)r0 (target)
            insn(0x63, FP, R1, -8, 0),                 // *(u32 *)(fp - 8) = r1
            insn(0xbf, R1, R6, 0, 0),                  // r1 = ctx
            insn(0x18, R2, PSEUDO_MAP_FD, 0, sockarray_fd), // r2 = socket array
            insn(0, 0, 0, 0, 0),
            insn(0xbf, R3, FP, 0, 0), // r3 = fp
            insn(0x07, R3, 0, 0, -8), // r3 -= 8
            insn(0xb7, R4, 0, 0, 0),  // r4 = 0
            insn(0x85, 0, 0, 0, FUNC_SK_SELECT_REUSEPORT),
        ]
    }

    /// Maps, program and shared counters for one group: (socket array fd, program fd,
    /// counters mapping).
    pub fn create_group() -> Result<(i32, i32, *mut AtomicU64), (&'static str, i32)> {
        let counters =
            map(MAP_TYPE_ARRAY, 8, WORDS as u32, F_MMAPABLE).map_err(|e| ("counter map", e))?;
        let sockarray = map(MAP_TYPE_REUSEPORT_SOCKARRAY, 8, MAX_MEMBERS as u32, 0)
            .map_err(|e| ("reuseport socket array", e))?;
        let mut code = [0u64; 19];
        code[..17].copy_from_slice(&program(counters, sockarray));
        code[17] = insn(0xb7, 0, 0, 0, SK_PASS); // pass: r0 = SK_PASS
        code[18] = insn(0x95, 0, 0, 0, 0); // exit
        let license = c"GPL";
        let mut a = Attr::new();
        a.u32_at(0, PROG_TYPE_SK_REUSEPORT)
            .u32_at(4, code.len() as u32)
            .u64_at(8, code.as_ptr() as u64)
            .u64_at(16, license.as_ptr() as u64)
            .u32_at(68, ATTACH_SK_REUSEPORT_SELECT);
        a.0[48..48 + 14].copy_from_slice(b"ringshim_exact");
        let prog = bpf(PROG_LOAD, &mut a)
            .map(crate::internal_fd::move_high)
            .map_err(|e| ("program load", e))?;
        let bytes = WORDS * 8;
        // SAFETY: mapping the array map's values, which BPF_F_MMAPABLE allows; the
        // mapping is never unmapped and survives fork (MAP_SHARED).
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                counters,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(("counter mapping", crate::errno::get()));
        }
        Ok((sockarray, prog, p.cast()))
    }

    /// Puts listener `fd` at index `member` of the socket array.
    pub fn set_member(sockarray_fd: i32, member: u32, fd: i32) -> Result<(), i32> {
        let key = member;
        let value = fd as u64;
        let mut a = Attr::new();
        a.u32_at(0, sockarray_fd as u32)
            .u64_at(8, &key as *const u32 as u64)
            .u64_at(16, &value as *const u64 as u64)
            .u64_at(24, 0);
        bpf(MAP_UPDATE_ELEM, &mut a).map(|_| ())
    }
}
