//! The TAP opener: a TAP device of stackd's network namespace as a [`FrameDevice`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::device::{ifreq_for, DeviceKind, FrameDevice, Interface};
use crate::sys::cvt;

/// Creates the TAP device `name` in the current network namespace, or attaches to an
/// existing (persistent) one, and brings its link up. Needs CAP_NET_ADMIN unless the
/// device is persistent and owned by our uid. Non-blocking, without packet-information
/// headers: one read or write is one Ethernet frame.
pub fn open(name: &str) -> io::Result<FrameDevice> {
    // SAFETY: a constant NUL-terminated path.
    let raw = cvt(unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq we pass.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;

    let iface = Interface::new(name)?;
    let mtu = iface.mtu()?;
    iface.bring_up()?;
    Ok(FrameDevice::new(fd, DeviceKind::Tap, name, 0, mtu))
}
