//! The network interface stackd owns: a TAP device of its network namespace, as a smoltcp
//! [`Device`].
//!
//! Written here instead of smoltcp's `TunTapInterface` because that one allocates a
//! buffer per frame and panics on any I/O error other than EAGAIN; this one reuses two
//! buffers and counts errors (a frame the kernel refuses is a lost packet, which TCP
//! repairs).

use std::io;
use std::mem::zeroed;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::sys::cvt;

const ETHERNET_HEADER: usize = 14;

/// Frame counters of the device.
#[derive(Clone, Copy, Debug, Default)]
pub struct TapCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub tx_errors: u64,
    pub rx_errors: u64,
}

/// An open TAP device (non-blocking, without packet-information headers).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    mtu: usize,
    rx_buffer: Vec<u8>,
    tx_buffer: Vec<u8>,
    pub counters: TapCounters,
    /// A read error other than EAGAIN: the device is gone; the loop stops.
    pub fatal: Option<io::Error>,
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

impl Tap {
    /// Creates the TAP device `name` in the current network namespace, or attaches to an
    /// existing (persistent) one, and brings its link up. Needs CAP_NET_ADMIN unless the
    /// device is persistent and owned by our uid.
    pub fn open(name: &str) -> io::Result<Tap> {
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

        // Interface ioctls go through any socket of the namespace.
        // SAFETY: plain system call.
        let sock =
            cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: the kernel just returned this descriptor to us.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut req = ifreq_for(name)?;
        // SAFETY: SIOCGIFMTU / SIOCGIFFLAGS / SIOCSIFFLAGS read and write the ifreq; the
        // union field read is the one the previous ioctl wrote.
        let mtu = unsafe {
            cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req))?;
            let mtu = req.ifr_ifru.ifru_mtu;
            cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req))?;
            mtu
        };
        let mtu = usize::try_from(mtu)
            .ok()
            .filter(|m| (576..=9000).contains(m))
            .unwrap_or(1500);
        Ok(Tap {
            fd,
            mtu,
            rx_buffer: vec![0; mtu + ETHERNET_HEADER + 4],
            tx_buffer: vec![0; mtu + ETHERNET_HEADER],
            counters: TapCounters::default(),
            fatal: None,
        })
    }

    /// The device's IP MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A received frame, borrowed from the device's receive buffer.
pub struct TapRxToken<'a> {
    frame: &'a [u8],
}

/// Room for one frame to send, written to the device when consumed.
pub struct TapTxToken<'a> {
    fd: RawFd,
    buffer: &'a mut Vec<u8>,
    counters: &'a mut TapCounters,
}

impl phy::RxToken for TapRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TapTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.buffer.len() < len {
            self.buffer.resize(len, 0);
        }
        let frame = &mut self.buffer[..len];
        let result = f(frame);
        // SAFETY: writes len initialised bytes from our buffer.
        let written = unsafe { libc::write(self.fd, frame.as_ptr().cast(), len) };
        if written == len as isize {
            self.counters.tx_frames += 1;
        } else {
            // EAGAIN (queue full) or a device error: the frame is lost; TCP retransmits.
            self.counters.tx_errors += 1;
        }
        result
    }
}

impl Device for Tap {
    type RxToken<'a> = TapRxToken<'a>;
    type TxToken<'a> = TapTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.fatal.is_some() {
            return None;
        }
        // SAFETY: reads at most rx_buffer.len() bytes into our buffer.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                self.rx_buffer.as_mut_ptr().cast(),
                self.rx_buffer.len(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                _ => {
                    self.counters.rx_errors += 1;
                    self.fatal = Some(err);
                }
            }
            return None;
        }
        self.counters.rx_frames += 1;
        let fd = self.fd.as_raw_fd();
        Some((
            TapRxToken {
                frame: &self.rx_buffer[..n as usize],
            },
            TapTxToken {
                fd,
                buffer: &mut self.tx_buffer,
                counters: &mut self.counters,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TapTxToken {
            fd: self.fd.as_raw_fd(),
            buffer: &mut self.tx_buffer,
            counters: &mut self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETHERNET_HEADER;
        caps
    }
}
