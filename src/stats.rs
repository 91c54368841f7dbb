//! Live counters, published in a shared page for `ringshim stat PID`.
//!
//! Each thread claims one slot of the page on first use and updates its counters with
//! relaxed load+store pairs (it is the only writer of its slot, so no locked
//! instructions are needed); the reader sums the slots. Threads beyond the page's slot
//! count share the last slot through atomic adds. Before the page exists, or with
//! `RINGSHIM_STATS=0`, counters go to a private static page.

use core::cell::Cell;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use ringshim_common::stats::{Counter, Page, MAGIC, PAGE_BYTES, SLOTS, VERSION};

/// A zeroed page for counters nobody publishes (`Page` is plain integers, so all-zero is
/// a valid value).
struct PrivatePage(core::cell::UnsafeCell<core::mem::MaybeUninit<Page>>);
// SAFETY: every access to the page goes through atomics (see `slot_counter`).
unsafe impl Sync for PrivatePage {}
static PRIVATE: PrivatePage =
    PrivatePage(core::cell::UnsafeCell::new(core::mem::MaybeUninit::zeroed()));

static PAGE: AtomicPtr<Page> = AtomicPtr::new(core::ptr::null_mut());
/// Bumped after fork so threads re-claim slots in the child's new page.
static EPOCH: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// (epoch, slot index) of this thread's claimed slot.
    static SLOT: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

fn page() -> *mut Page {
    let p = PAGE.load(Ordering::Acquire);
    if p.is_null() {
        PRIVATE.0.get().cast()
    } else {
        p
    }
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Index of this thread's slot, claiming one if needed.
fn my_slot(page: *mut Page) -> usize {
    let epoch = EPOCH.load(Ordering::Relaxed);
    let (e, idx) = SLOT.with(|s| s.get());
    if e == epoch {
        return idx as usize;
    }
    let tid = gettid();
    let mut chosen = SLOTS - 1;
    for i in 0..SLOTS - 1 {
        // SAFETY: `page` points to a live Page (static or mapped for the process
        // lifetime); the tid field is accessed atomically by all threads.
        let tid_field =
            unsafe { &*(core::ptr::addr_of!((*page).slots[i].tid) as *const AtomicU32) };
        if tid_field
            .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            chosen = i;
            break;
        }
    }
    SLOT.with(|s| s.set((epoch, chosen as u32)));
    chosen
}

#[inline]
fn slot_counter(page: *mut Page, slot: usize, c: usize) -> &'static AtomicU64 {
    // SAFETY: the page lives for the rest of the process; counters are only accessed as
    // atomics.
    unsafe { &*(core::ptr::addr_of!((*page).slots[slot].counters[c]) as *const AtomicU64) }
}

/// Adds `n` to counter `c` of this thread.
#[inline]
pub fn add(c: Counter, n: u64) {
    let page = page();
    let slot = my_slot(page);
    let cell = slot_counter(page, slot, c as usize);
    if slot == SLOTS - 1 {
        cell.fetch_add(n, Ordering::Relaxed);
    } else {
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
}

#[inline]
pub fn bump(c: Counter) {
    add(c, 1);
}

/// Records this thread's ring fd in its slot (shown by `ringshim stat`).
pub fn set_ring_fd(fd: i32) {
    let page = page();
    let slot = my_slot(page);
    // SAFETY: page is live; the field is only accessed atomically.
    let f = unsafe { &*(core::ptr::addr_of!((*page).slots[slot].ring_fd) as *const AtomicU32) };
    f.store(fd as u32, Ordering::Relaxed);
}

/// Sum of the counter with this index over every slot.
pub fn total_index(c: usize) -> u64 {
    let page = page();
    (0..SLOTS)
        .map(|s| slot_counter(page, s, c).load(Ordering::Relaxed))
        .sum()
}

/// Sum of one counter over every slot (used by tests and the debug log).
pub fn total(c: Counter) -> u64 {
    let page = page();
    (0..SLOTS)
        .map(|s| slot_counter(page, s, c as usize).load(Ordering::Relaxed))
        .sum()
}

static PUBLISHED_FOR_PID: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

/// Publishes this process's page the first time it tracks a socket: processes that
/// never open a TCP socket (shells, `ls`, a BGSAVE child) leave nothing in the stats
/// directory.
#[inline]
pub fn ensure_published() {
    if PUBLISHED_FOR_PID.load(Ordering::Relaxed) != 0 {
        return;
    }
    publish_now();
}

#[cold]
fn publish_now() {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if PUBLISHED_FOR_PID.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    let cfg = crate::init::config();
    if cfg.stats {
        let active = crate::init::backend_active();
        crate::init::in_shim(|| publish(&cfg.stats_dir, cfg.backend.name(), active));
    }
}

extern "C" fn unlink_at_exit() {
    let p = PAGE.load(Ordering::Acquire);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // SAFETY: reading the header of our live mapping.
    if p.is_null() || unsafe { (*p).header.pid } != pid as u32 {
        return;
    }
    let mut path = [0u8; 300];
    let mut w = crate::log::StackBuf::new(&mut path);
    let _ = core::fmt::Write::write_fmt(
        &mut w,
        format_args!("{}/ringshim.{pid}", crate::init::config().stats_dir),
    );
    let len = w.len;
    if len + 1 < path.len() {
        path[len] = 0;
        // SAFETY: NUL-terminated path.
        unsafe { libc::syscall(libc::SYS_unlinkat, libc::AT_FDCWD, path.as_ptr(), 0) };
    }
}

/// Creates and maps `<dir>/ringshim.<pid>` (mode 0600) and makes it the live page.
/// The page is removed at a normal exit; after `_exit` or a signal it stays behind and
/// `ringshim stat --list` removes it.
/// Failure leaves counters on the private page: statistics are never worth breaking the host.
pub fn publish(dir: &str, backend: &str, backend_active: bool) {
    let mut path = [0u8; 300];
    let mut w = crate::log::StackBuf::new(&mut path);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let _ = core::fmt::Write::write_fmt(&mut w, format_args!("{dir}/ringshim.{pid}"));
    let len = w.len;
    if len + 1 >= path.len() {
        return;
    }
    path[len] = 0;
    // A file already at this name was left by an earlier process with our pid (one that
    // died without unlinking it, or our image before an exec) and may belong to another
    // user or be readable by others: never reuse it. O_EXCL makes the page a new file of
    // ours; a stale one is removed first (in a sticky directory only its owner or root
    // can, else the page is not published).
    let create = || {
        // SAFETY: NUL-terminated path; raw syscalls keep this off the shim's own exports.
        (unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600,
            )
        }) as i32
    };
    let mut fd = create();
    if fd < 0 && crate::errno::get() == libc::EEXIST {
        // SAFETY: NUL-terminated path.
        unsafe { libc::syscall(libc::SYS_unlinkat, libc::AT_FDCWD, path.as_ptr(), 0) };
        fd = create();
    }
    if fd < 0 {
        crate::log_debug!(
            "stats page not published: openat errno {}",
            crate::errno::get()
        );
        return;
    }
    // The umask may have removed the owner's own bits (then `ringshim stat` run by the
    // owner would be refused); the page is exactly 0600 whatever it was.
    // SAFETY: fd is ours.
    unsafe { libc::syscall(libc::SYS_fchmod, fd, 0o600) };
    // SAFETY: fd is ours; size is the page size.
    let mapped = unsafe {
        if libc::ftruncate(fd, PAGE_BYTES as libc::off_t) != 0 {
            libc::syscall(libc::SYS_close, fd);
            return;
        }
        let m = libc::mmap(
            core::ptr::null_mut(),
            PAGE_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        libc::syscall(libc::SYS_close, fd);
        m
    };
    if mapped == libc::MAP_FAILED {
        return;
    }
    let page = mapped.cast::<Page>();
    // SAFETY: freshly mapped, zero-filled, exclusively ours until published below.
    unsafe {
        (*page).header.version = VERSION;
        (*page).header.pid = pid as u32;
        (*page).header.slots = SLOTS as u32;
        (*page).header.counters = ringshim_common::stats::COUNTERS as u32;
        let n = backend.len().min(15);
        let name = &mut (*page).header.backend;
        name[..n].copy_from_slice(&backend.as_bytes()[..n]);
        (*page).header.backend_active = u32::from(backend_active);
        for s in 0..SLOTS {
            (*page).slots[s].ring_fd = -1;
        }
        // The magic goes last: a reader that sees it sees a complete header.
        core::sync::atomic::fence(Ordering::Release);
        (*page).header.magic = MAGIC;
    }
    PAGE.store(page, Ordering::Release);
    EPOCH.fetch_add(1, Ordering::Relaxed);
    static AT_EXIT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !AT_EXIT.swap(true, Ordering::AcqRel) {
        // SAFETY: a plain function valid for the life of the process (the library is
        // linked with -z nodelete).
        unsafe { libc::atexit(unlink_at_exit) };
    }
}

/// Updates the page header after the backend fell back to the kernel.
pub fn set_backend_active(active: bool) {
    let p = PAGE.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: live mapping; a single aligned u32 store.
        unsafe {
            (*(core::ptr::addr_of!((*p).header.backend_active) as *const AtomicU32))
                .store(u32::from(active), Ordering::Relaxed)
        };
    }
}

/// In a fork child: the parent's page belongs to the parent. Counters restart on the
/// private page until `publish` maps the child's own.
pub fn forget_after_fork() {
    PAGE.store(core::ptr::null_mut(), Ordering::Release);
    PUBLISHED_FOR_PID.store(0, Ordering::Release);
    // SAFETY: the private page is only accessed atomically; zeroing it in the
    // single-threaded child is race-free.
    unsafe { core::ptr::write_bytes(PRIVATE.0.get().cast::<u8>(), 0, PAGE_BYTES) };
    EPOCH.fetch_add(1, Ordering::Relaxed);
}
