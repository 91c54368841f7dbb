//! The network interface stackd owns, as a smoltcp [`Device`]: one frame-device core
//! ([`FrameDevice`]) over a descriptor that reads and writes whole Ethernet frames, with
//! two openers — a TAP device ([`crate::tap`]) or an existing interface through an
//! AF_PACKET socket ([`crate::packet`]).
//!
//! Written here instead of smoltcp's `TunTapInterface`/`RawSocket` because those allocate
//! a buffer per frame and panic on any I/O error other than EAGAIN; this one reuses two
//! buffers and counts errors (a frame the kernel refuses is a lost packet, which TCP
//! repairs). Both kinds are one `read`/`write` per frame on a non-blocking descriptor the
//! event loop waits on with epoll; only the receive call differs (AF_PACKET asks for the
//! frame's checksum status alongside, see [`FrameDevice::receive`]).
//!
//! Also here: the interface ioctls both openers need (MTU, flags, MAC, the interface's
//! IPv4 addresses), through any socket of the namespace.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::sys::cvt;

pub(crate) const ETHERNET_HEADER: usize = 14;

/// Frame counters of the device.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub tx_errors: u64,
    pub rx_errors: u64,
    /// Frames longer than the receive buffer ([`rx_capacity`]): dropped; TCP sees a
    /// loss.
    pub rx_oversize: u64,
    /// AF_PACKET frames whose TCP checksum the sending kernel left to an offload
    /// (CHECKSUM_PARTIAL, reported as TP_STATUS_CSUMNOTREADY): completed here before
    /// smoltcp verifies it.
    pub rx_checksums_completed: u64,
}

/// Which opener made the device (how frames are received, what the log says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Tap,
    Packet,
}

impl DeviceKind {
    pub fn label(self) -> &'static str {
        match self {
            DeviceKind::Tap => "TAP",
            DeviceKind::Packet => "AF_PACKET",
        }
    }
}

/// Receive buffer size. A TAP hands over frames of at most the MTU (room for a VLAN tag
/// on top). An AF_PACKET socket sees what the peer's kernel sent: with TSO/GSO on there
/// (veth's default), whole segmentation super-frames up to 64 KiB, which smoltcp takes as
/// one large TCP segment; refusing them would stall every bulk transfer unless the peer
/// turned its offloads off. Longer frames (BIG TCP, jumbo MTUs past the buffer) are
/// counted in `rx_oversize` and dropped.
fn rx_capacity(kind: DeviceKind, mtu: usize) -> usize {
    match kind {
        DeviceKind::Tap => mtu + ETHERNET_HEADER + 4,
        DeviceKind::Packet => (mtu + ETHERNET_HEADER + 4).max(65535 + ETHERNET_HEADER + 4),
    }
}

/// An open frame device: non-blocking descriptor, IP MTU, two reused buffers.
#[derive(Debug)]
pub struct FrameDevice {
    fd: OwnedFd,
    kind: DeviceKind,
    name: String,
    /// The interface index an AF_PACKET socket is bound to (0 for a TAP).
    ifindex: i32,
    mtu: usize,
    rx_buffer: Vec<u8>,
    tx_buffer: Vec<u8>,
    pub counters: DeviceCounters,
    /// A read error other than EAGAIN: the device is gone; the loop stops.
    pub fatal: Option<io::Error>,
}

impl FrameDevice {
    /// Wraps a descriptor that reads and writes one Ethernet frame per call.
    pub(crate) fn new(
        fd: OwnedFd,
        kind: DeviceKind,
        name: &str,
        ifindex: i32,
        mtu: usize,
    ) -> FrameDevice {
        FrameDevice {
            fd,
            kind,
            name: name.to_string(),
            ifindex,
            mtu,
            rx_buffer: vec![0; rx_capacity(kind, mtu)],
            tx_buffer: vec![0; mtu + ETHERNET_HEADER],
            counters: DeviceCounters::default(),
            fatal: None,
        }
    }

    /// The device's IP MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// Frames the kernel dropped because stackd's receive queue was full (AF_PACKET's
    /// PACKET_STATISTICS, which resets on reading); `None` for a TAP.
    pub fn kernel_drops(&self) -> Option<u64> {
        if self.kind != DeviceKind::Packet {
            return None;
        }
        // SAFETY: tpacket_stats is plain data.
        let mut stats: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: the kernel writes at most len bytes into stats.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        (ret == 0).then_some(u64::from(stats.tp_drops))
    }

    /// One frame into `rx_buffer`: its length, `None` when nothing is queued (or the
    /// device failed: `fatal`). Oversized frames are skipped and counted.
    fn read_frame(&mut self) -> Option<usize> {
        loop {
            let (n, csum_not_ready) = match self.kind {
                DeviceKind::Tap => {
                    // SAFETY: reads at most rx_buffer.len() bytes into our buffer.
                    let n = unsafe {
                        libc::read(
                            self.fd.as_raw_fd(),
                            self.rx_buffer.as_mut_ptr().cast(),
                            self.rx_buffer.len(),
                        )
                    };
                    (n, false)
                }
                DeviceKind::Packet => recv_packet(self.fd.as_raw_fd(), &mut self.rx_buffer),
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                    // The interface went down (the socket reports it once and receives
                    // again when it is back up) or was deleted (the same ENETDOWN, then
                    // the socket stays unbound for good: fatal, or stackd would sleep
                    // forever on a dead socket).
                    _ if self.kind == DeviceKind::Packet
                        && err.raw_os_error() == Some(libc::ENETDOWN) =>
                    {
                        self.counters.rx_errors += 1;
                        if !self.interface_still_bound() {
                            self.fatal = Some(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("interface {:?} was removed", self.name),
                            ));
                        }
                    }
                    _ => {
                        self.counters.rx_errors += 1;
                        self.fatal = Some(err);
                    }
                }
                return None;
            }
            let n = n as usize;
            if n > self.rx_buffer.len() {
                // MSG_TRUNC (AF_PACKET) reports the real length; a TAP read never exceeds
                // the buffer but would cut the frame silently, so its MTU bounds it.
                self.counters.rx_oversize += 1;
                continue;
            }
            self.counters.rx_frames += 1;
            if csum_not_ready && complete_tcp_checksum(&mut self.rx_buffer[..n]) {
                self.counters.rx_checksums_completed += 1;
            }
            return Some(n);
        }
    }
}

impl FrameDevice {
    /// Whether the interface the socket was bound to still exists under its name (a new
    /// interface of the same name has another index and is not bound).
    fn interface_still_bound(&self) -> bool {
        let Ok(name) = std::ffi::CString::new(self.name.as_str()) else {
            return false;
        };
        // SAFETY: a NUL-terminated name that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        index != 0 && index as i32 == self.ifindex
    }
}

/// `recvmsg` of one frame with MSG_TRUNC (returns the frame's full length) and the
/// PACKET_AUXDATA control message; returns (length or -1, whether the checksum is not
/// ready).
fn recv_packet(fd: RawFd, buffer: &mut [u8]) -> (isize, bool) {
    // u64 elements: cmsghdr alignment. 64 bytes hold CMSG_SPACE(tpacket_auxdata) = 40.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid (no name).
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>();
    // SAFETY: every pointer in msg points into live locals/buffer of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return (n, false);
    }
    let mut not_ready = false;
    // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled, bounded by
    // msg_controllen; the auxdata payload is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                let aux: libc::tpacket_auxdata =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                not_ready = aux.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0;
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    (n, not_ready)
}

/// Fills in the TCP checksum of an IPv4/TCP Ethernet frame whose sender left it to an
/// offload (the field then holds only the pseudo-header sum). Returns whether the frame
/// was IPv4/TCP and got a checksum; other frames are left alone (smoltcp verifies them).
pub(crate) fn complete_tcp_checksum(frame: &mut [u8]) -> bool {
    if frame.len() < ETHERNET_HEADER + 20 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &frame[ETHERNET_HEADER..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ip[9] != 6 || ihl < 20 || total > ip.len() || total < ihl + 20 {
        return false;
    }
    // A fragment's TCP header is not in this frame (and offloads never fragment).
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return false;
    }
    let tcp_len = total - ihl;
    let mut sum: u32 = 0;
    for pair in ip[12..20].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum += 6 + tcp_len as u32;
    let start = ETHERNET_HEADER + ihl;
    frame[start + 16] = 0;
    frame[start + 17] = 0;
    let segment = &frame[start..start + tcp_len];
    let mut chunks = segment.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        // Fold early: 64 KiB of 0xffff words would overflow u32 only past 65537 words,
        // but folding keeps the loop free of that reasoning.
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !(sum as u16);
    frame[start + 16..start + 18].copy_from_slice(&checksum.to_be_bytes());
    true
}

impl AsRawFd for FrameDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A received frame, borrowed from the device's receive buffer.
pub struct FrameRxToken<'a> {
    frame: &'a [u8],
}

/// Room for one frame to send, written to the device when consumed.
pub struct FrameTxToken<'a> {
    fd: RawFd,
    buffer: &'a mut Vec<u8>,
    counters: &'a mut DeviceCounters,
}

impl phy::RxToken for FrameRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for FrameTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.buffer.len() < len {
            self.buffer.resize(len, 0);
        }
        let frame = &mut self.buffer[..len];
        let result = f(frame);
        // SAFETY: writes len initialised bytes from our buffer. A TAP takes the frame as
        // it is; a bound AF_PACKET socket sends it on its interface.
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

impl Device for FrameDevice {
    type RxToken<'a> = FrameRxToken<'a>;
    type TxToken<'a> = FrameTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.fatal.is_some() {
            return None;
        }
        let n = self.read_frame()?;
        let fd = self.fd.as_raw_fd();
        Some((
            FrameRxToken {
                frame: &self.rx_buffer[..n],
            },
            FrameTxToken {
                fd,
                buffer: &mut self.tx_buffer,
                counters: &mut self.counters,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(FrameTxToken {
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

// ---- interface ioctls -------------------------------------------------------------

pub(crate) fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
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

/// Interface ioctls on `name`, through a datagram socket of the current namespace.
pub struct Interface {
    name: String,
    sock: OwnedFd,
}

impl Interface {
    pub fn new(name: &str) -> io::Result<Interface> {
        ifreq_for(name)?;
        // SAFETY: plain system call.
        let sock =
            cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: the kernel just returned this descriptor to us.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        Ok(Interface {
            name: name.to_string(),
            sock,
        })
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: every request used here reads and/or writes only the ifreq passed.
        cvt(unsafe { libc::ioctl(self.sock.as_raw_fd(), request as _, req as *mut _) })?;
        Ok(())
    }

    /// The interface index (ENODEV when there is no such interface).
    pub fn index(&self) -> io::Result<i32> {
        let mut req = ifreq_for(&self.name)?;
        self.ioctl(libc::SIOCGIFINDEX, &mut req)?;
        // SAFETY: SIOCGIFINDEX wrote this union field.
        Ok(unsafe { req.ifr_ifru.ifru_ifindex })
    }

    /// The IP MTU, clamped to what stackd supports (576..=9000; else 1500).
    pub fn mtu(&self) -> io::Result<usize> {
        let mut req = ifreq_for(&self.name)?;
        self.ioctl(libc::SIOCGIFMTU, &mut req)?;
        // SAFETY: SIOCGIFMTU wrote this union field.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        Ok(usize::try_from(mtu)
            .ok()
            .filter(|m| (576..=9000).contains(m))
            .unwrap_or(1500))
    }

    /// Sets IFF_UP.
    pub fn bring_up(&self) -> io::Result<()> {
        let mut req = ifreq_for(&self.name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS wrote this union field.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
    }

    /// The Ethernet address (an error for a device of another type).
    pub fn mac(&self) -> io::Result<[u8; 6]> {
        let mut req = ifreq_for(&self.name)?;
        self.ioctl(libc::SIOCGIFHWADDR, &mut req)?;
        // SAFETY: SIOCGIFHWADDR wrote this union field.
        let addr = unsafe { req.ifr_ifru.ifru_hwaddr };
        if addr.sa_family != libc::ARPHRD_ETHER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not an Ethernet interface (ARPHRD type {})", addr.sa_family),
            ));
        }
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(addr.sa_data) {
            *dst = src as u8;
        }
        Ok(mac)
    }

    /// The interface's IPv4 addresses (the kernel's own, in this namespace).
    pub fn ipv4_addrs(&self) -> io::Result<Vec<std::net::Ipv4Addr>> {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list`, freed below.
        cvt(unsafe { libc::getifaddrs(&mut list) })?;
        let mut addrs = Vec::new();
        let mut cursor = list;
        // SAFETY: walks the list getifaddrs returned (each node, name and address valid
        // until freeifaddrs); an AF_INET ifa_addr is a sockaddr_in.
        unsafe {
            while !cursor.is_null() {
                let entry = &*cursor;
                let addr = entry.ifa_addr;
                if !addr.is_null()
                    && i32::from((*addr).sa_family) == libc::AF_INET
                    && std::ffi::CStr::from_ptr(entry.ifa_name).to_bytes() == self.name.as_bytes()
                {
                    let sin = &*(addr as *const libc::sockaddr_in);
                    addrs.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                }
                cursor = entry.ifa_next;
            }
            libc::freeifaddrs(list);
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame with the given payload and a zero checksum field.
    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETHERNET_HEADER];
        f[12] = 0x08;
        let total = (20 + 20 + payload.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[198, 51, 100, 1, 198, 51, 100, 2]);
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&7000u16.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x18;
        f.extend_from_slice(&tcp);
        f.extend_from_slice(payload);
        f.extend_from_slice(&[0xee; 6]); // Ethernet padding past the IP length
        f
    }

    #[test]
    fn completed_checksums_verify_with_smoltcp() {
        use smoltcp::wire::{Ipv4Packet, TcpPacket};
        for len in [0usize, 1, 5, 1460, 65000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut frame = tcp_frame(&payload);
            // What CHECKSUM_PARTIAL leaves: some partial sum in the field.
            frame[ETHERNET_HEADER + 20 + 16] = 0x12;
            assert!(complete_tcp_checksum(&mut frame));
            let ip = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER..]).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(
                tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()),
                "payload {len}"
            );
        }
        let mut arp = vec![0u8; 60];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(!complete_tcp_checksum(&mut arp));
    }
}
