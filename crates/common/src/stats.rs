//! The layout of the live counter page each shimmed process publishes.
//!
//! The shim maps `<RINGSHIM_STATS_DIR>/ringshim.<pid>` (mode 0600, created by the process
//! itself, so after a privilege drop it belongs to the worker's user and root can still
//! read it) and every thread increments the counters of its own slot with plain relaxed
//! stores: no locked instructions on hook paths, no sharing of cache lines between threads.
//! `ringshim stat PID` reads the file while the process runs and sums the slots.

/// "RSHMSTAT" in little-endian bytes.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RSHMSTAT");
pub const VERSION: u32 = 1;
/// Thread slots in one page; threads past the last share it with atomic adds.
pub const SLOTS: usize = 64;
/// Counter capacity per slot (room for new counters without a layout change).
pub const COUNTER_CAPACITY: usize = 48;

/// Every counter, in slot order. The discriminant is the index into a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Exported calls that found their fd (or call) belonging to the shim's bookkeeping.
    CallsIntercepted,
    /// Exported calls handed straight to libc.
    CallsPassedThrough,
    SocketsCreated,
    /// Sockets whose address fell in RINGSHIM_KERNEL_NETS (kept on the kernel stack).
    RoutedKernelNet,
    /// Sockets whose address was routed to the configured backend.
    RoutedAccelerated,
    SocketsOnUring,
    SocketsOnUstack,
    /// Sockets that should have been accelerated but went to the kernel (backend unavailable).
    Fallbacks,
    /// Accelerated sockets moved back to the kernel path (an unsupported feature).
    Demotions,
    Accepts,
    Connects,
    RingsCreated,
    /// io_uring_enter calls made.
    RingEnters,
    /// Completions reaped.
    Completions,
    RecvCompletions,
    SendSubmissions,
    /// Reads and writes satisfied without a system call of their own.
    SyscallsAvoided,
    BytesReceived,
    BytesSent,
    EpollWaits,
    /// Multishot receives that ran out of provided buffers (re-armed later).
    NoBuffers,
    /// Receives paused because a socket's queue reached RINGSHIM_RECV_CAP.
    RecvPaused,
    /// write() calls that returned EAGAIN because RINGSHIM_SEND_CAP was reached.
    SendBackpressure,
    ClosesDraining,
    /// Changes of a reuseport group's target listener (RINGSHIM_BALANCE=exact).
    BalanceDecisions,
    /// Connections accepted on a listener other than the target of the moment
    /// (arrived before the previous accept was counted, or hashed by the kernel).
    BalanceMisses,
    /// Writes that joined a SENDMSG not yet submitted instead of waiting for it.
    SendsCoalesced,
}

pub const COUNTER_NAMES: &[&str] = &[
    "calls_intercepted",
    "calls_passed_through",
    "sockets_created",
    "routed_kernel_net",
    "routed_accelerated",
    "sockets_on_uring",
    "sockets_on_ustack",
    "fallbacks",
    "demotions",
    "accepts",
    "connects",
    "rings_created",
    "ring_enters",
    "completions",
    "recv_completions",
    "send_submissions",
    "syscalls_avoided",
    "bytes_received",
    "bytes_sent",
    "epoll_waits",
    "no_buffers",
    "recv_paused",
    "send_backpressure",
    "closes_draining",
    "balance_decisions",
    "balance_misses",
    "sends_coalesced",
];

pub const COUNTERS: usize = COUNTER_NAMES.len();

/// Page header; the slots follow it.
#[repr(C)]
pub struct Header {
    pub magic: u64,
    pub version: u32,
    pub pid: u32,
    pub slots: u32,
    pub counters: u32,
    /// NUL-padded name of the configured backend.
    pub backend: [u8; 16],
    /// 1 when the configured backend is actually in use, 0 after a fallback.
    pub backend_active: u32,
    pub _reserved: [u32; 5],
}

/// One thread's counters.
#[repr(C)]
pub struct Slot {
    /// Kernel thread id of the owner; 0 = free.
    pub tid: u32,
    /// File descriptor of the thread's ring, or -1.
    pub ring_fd: i32,
    pub counters: [u64; COUNTER_CAPACITY],
}

#[repr(C)]
pub struct Page {
    pub header: Header,
    pub slots: [Slot; SLOTS],
}

pub const PAGE_BYTES: usize = core::mem::size_of::<Page>();

pub fn file_name(pid: u32) -> String {
    format!("ringshim.{pid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_counter() {
        assert_eq!(COUNTER_NAMES.len(), Counter::SendsCoalesced as usize + 1);
        const { assert!(COUNTERS <= COUNTER_CAPACITY) };
    }

    #[test]
    fn header_is_one_cache_line() {
        assert_eq!(core::mem::size_of::<Header>(), 64);
    }
}
