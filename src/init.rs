//! Initialisation: the once-only state machine every export checks first.
//!
//! Exports can run before the library constructor (the host's own libraries call in
//! first) and can re-enter while initialisation runs (the Rust runtime calls the shim's
//! own exports). [`ensure_init`] is therefore one relaxed atomic load on the fast path;
//! the first caller runs [`initialise`] while every other call — on that thread or on
//! others — passes straight through to libc.
//!
//! The constructor is a plain `.init_array` entry rather than the `ctor` crate: it needs
//! no proc-macro and cannot be the only path anyway (see above). Configuration is read
//! here, once: nginx rebuilds `environ` in its workers, so a later getenv sees nothing.

use core::cell::Cell;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use ringshim_common::config::{Backend, Config};

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
/// Tracking and routing sockets.
const ACTIVE: u8 = 2;
/// RINGSHIM=0 or a bad configuration: every call passes through untouched.
const PASSIVE: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static CONFIG: AtomicPtr<Config> = AtomicPtr::new(core::ptr::null_mut());

thread_local! {
    /// Set while the shim itself runs code that may call its own exports (std, the
    /// io-uring crate): those calls must go straight to libc.
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

/// True when the shim is active and this call is not re-entrant: the export may look
/// the fd up. Otherwise the export passes the call through.
#[inline]
pub fn ensure_init() -> bool {
    match STATE.load(Ordering::Acquire) {
        ACTIVE => !IN_SHIM.with(|c| c.get()),
        PASSIVE | INITIALIZING => false,
        _ => initialise(),
    }
}

/// Runs `f` with the re-entrancy guard set.
pub fn in_shim<T>(f: impl FnOnce() -> T) -> T {
    let prev = IN_SHIM.with(|c| c.replace(true));
    let v = f();
    IN_SHIM.with(|c| c.set(prev));
    v
}

/// The configuration; only valid once the shim is active.
#[inline]
pub fn config() -> &'static Config {
    let p = CONFIG.load(Ordering::Acquire);
    debug_assert!(!p.is_null());
    // SAFETY: set once to a leaked Box before STATE becomes ACTIVE, never freed.
    unsafe { &*p }
}

/// Whether the configured backend serves sockets now (ustack: once attached to stackd).
pub fn backend_active() -> bool {
    match config().backend {
        Backend::Kernel => true,
        Backend::Uring => crate::uring::available(),
        Backend::Ustack => crate::ustack::attached(),
    }
}

pub fn is_active() -> bool {
    STATE.load(Ordering::Acquire) == ACTIVE
}

#[cold]
fn initialise() -> bool {
    if STATE
        .compare_exchange(UNINIT, INITIALIZING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return STATE.load(Ordering::Acquire) == ACTIVE && !IN_SHIM.with(|c| c.get());
    }
    let active = in_shim(|| crate::errno::preserve(setup));
    STATE.store(if active { ACTIVE } else { PASSIVE }, Ordering::Release);
    active && !IN_SHIM.with(|c| c.get())
}

fn setup() -> bool {
    let (config, errors) = Config::from_env();
    crate::log::set_level(config.log_level);
    crate::fdtable::init();
    if let Some(path) = &config.log_file {
        crate::log::open_file(path);
    }
    if !errors.is_empty() {
        for e in &errors {
            // The one line BRIEF promises, even when the log level is off.
            crate::log::emit(
                ringshim_common::config::LogLevel::Error,
                format_args!("{e}"),
            );
        }
        return false;
    }
    if !config.enabled {
        crate::log_debug!("RINGSHIM=0: loaded, passing every call through");
        return false;
    }
    let config = Box::leak(Box::new(config));
    CONFIG.store(config, Ordering::Release);
    crate::process::register_fork_handlers();
    crate::process::capture_environment();
    let backend_ok = match config.backend {
        Backend::Uring => crate::uring::probe(config),
        // Attached on first use (the first socket routed to it): a process that never
        // talks to a non-kernel network never contacts stackd.
        Backend::Ustack => true,
        Backend::Kernel => true,
    };
    crate::log_info!(
        "active: backend={} ({}), kernel nets={}, pid {}",
        config.backend.name(),
        if backend_ok {
            "available"
        } else {
            "unavailable, kernel path"
        },
        config.kernel_nets.len(),
        std::process::id()
    );
    true
}

/// The ELF constructor: initialise as soon as the loader runs us, so the configuration
/// is read from the pristine environment even if no export is called early.
#[cfg(not(test))]
extern "C" fn constructor() {
    ensure_init();
}

#[cfg(not(test))]
#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = constructor;
