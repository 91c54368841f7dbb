//! The routing decision: kernel stack or accelerated backend, from a socket address.
//!
//! Every TCP socket starts on the kernel path; the decision is made when an address
//! becomes known — bind() to a specific local address, connect() to a peer, accept()
//! of a peer — and recorded in the socket. Addresses are compared as 128-bit values
//! (IPv4 mapped into IPv6) against `RINGSHIM_KERNEL_NETS`.

use ringshim_common::config::{v4_mapped, Config};

/// Where a socket's traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Route {
    /// No address known yet (fresh socket, or bound to a wildcard address).
    Undecided = 0,
    /// The address is in RINGSHIM_KERNEL_NETS.
    KernelNet = 1,
    /// Routed to the configured backend.
    Accelerated = 2,
    /// Should have been accelerated, but the backend was unavailable.
    Fallback = 3,
    /// Was accelerated, moved to the kernel for good (unsupported feature).
    Demoted = 4,
}

impl Route {
    pub fn from_u8(v: u8) -> Route {
        match v {
            1 => Route::KernelNet,
            2 => Route::Accelerated,
            3 => Route::Fallback,
            4 => Route::Demoted,
            _ => Route::Undecided,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Route::Undecided => "undecided",
            Route::KernelNet => "kernel-net",
            Route::Accelerated => "accelerated",
            Route::Fallback => "fallback",
            Route::Demoted => "demoted",
        }
    }
}

/// An IP address read out of a `sockaddr`, IPv4 mapped into the IPv6 space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpAddr128(pub u128);

impl IpAddr128 {
    pub fn is_unspecified(self) -> bool {
        self.0 == 0 || self.0 == v4_mapped([0, 0, 0, 0])
    }
}

/// Reads the address of an AF_INET/AF_INET6 sockaddr; None for other families or short
/// lengths (the kernel will reject those itself).
///
/// # Safety
/// `addr` must be null or point to at least `len` readable bytes.
pub unsafe fn sockaddr_ip(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<IpAddr128> {
    if addr.is_null() || (len as usize) < core::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family field is readable (checked above); reads are unaligned
    // because callers may pass any byte buffer.
    let family = unsafe { core::ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) };
    match i32::from(family) {
        libc::AF_INET if len as usize >= core::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: length checked.
            let sin = unsafe { core::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>()) };
            Some(IpAddr128(v4_mapped(sin.sin_addr.s_addr.to_ne_bytes())))
        }
        libc::AF_INET6 if len as usize >= core::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: length checked.
            let sin6 = unsafe { core::ptr::read_unaligned(addr.cast::<libc::sockaddr_in6>()) };
            Some(IpAddr128(u128::from_be_bytes(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The decision for a known address.
pub fn decide(cfg: &Config, ip: IpAddr128) -> Route {
    if cfg.is_kernel_net(ip.0) {
        Route::KernelNet
    } else {
        Route::Accelerated
    }
}

/// Formats an address for debug logs without allocating.
pub struct Display(pub IpAddr128);

impl core::fmt::Display for Display {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.0 .0.to_be_bytes();
        if b[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            write!(f, "{}.{}.{}.{}", b[12], b[13], b[14], b[15])
        } else {
            write!(f, "{}", std::net::Ipv6Addr::from(b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sin(a: [u8; 4]) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 80u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a),
            },
            sin_zero: [0; 8],
        }
    }

    #[test]
    fn loopback_stays_on_kernel_testnet_is_accelerated() {
        let cfg = Config::default();
        let lo = sin([127, 0, 0, 1]);
        let net = sin([198, 51, 100, 1]);
        let len = core::mem::size_of::<libc::sockaddr_in>() as u32;
        // SAFETY: pointers to live locals with their true lengths.
        let (lo, net) = unsafe {
            (
                sockaddr_ip((&lo as *const libc::sockaddr_in).cast(), len).unwrap(),
                sockaddr_ip((&net as *const libc::sockaddr_in).cast(), len).unwrap(),
            )
        };
        assert_eq!(decide(&cfg, lo), Route::KernelNet);
        assert_eq!(decide(&cfg, net), Route::Accelerated);
        assert_eq!(Display(net).to_string(), "198.51.100.1");
    }

    #[test]
    fn short_or_foreign_addresses_are_ignored() {
        let a = sin([10, 0, 0, 1]);
        // SAFETY: pointer to a live local; lengths under its size.
        unsafe {
            assert_eq!(
                sockaddr_ip((&a as *const libc::sockaddr_in).cast(), 4),
                None
            );
            assert_eq!(sockaddr_ip(core::ptr::null(), 16), None);
        }
        let un = libc::sockaddr {
            sa_family: libc::AF_UNIX as u16,
            sa_data: [0; 14],
        };
        // SAFETY: as above.
        unsafe { assert_eq!(sockaddr_ip(&un, 16), None) };
    }

    #[test]
    fn wildcard_is_recognised_for_both_families() {
        assert!(IpAddr128(0).is_unspecified());
        assert!(IpAddr128(v4_mapped([0, 0, 0, 0])).is_unspecified());
        assert!(!IpAddr128(1).is_unspecified());
    }
}
