//! The AF_PACKET opener: an existing Ethernet interface of stackd's network namespace (a
//! veth end, a NIC) as a [`FrameDevice`], through a raw packet socket bound to it.
//!
//! What makes it behave like a TAP for smoltcp:
//! - bound with ETH_P_ALL to the one interface (created with protocol 0 and bound after,
//!   so no frame of another interface is ever queued on it);
//! - PACKET_IGNORE_OUTGOING: the socket would otherwise read back every frame stackd
//!   sends (and the kernel's own);
//! - PACKET_AUXDATA: each frame comes with its checksum status; a frame the sending
//!   kernel left to a checksum offload (TP_STATUS_CSUMNOTREADY: CHECKSUM_PARTIAL, what a
//!   veth peer with its default `tx-checksumming on` delivers) has its TCP checksum
//!   completed before smoltcp verifies it ([`crate::device`]), and the receive buffer
//!   takes the 64 KiB super-frames of a peer's TSO/GSO. So no offload has to be turned
//!   off on either end (the usual recipe for user-space stacks on veth, `ethtool -K IF
//!   tx off tso off gso off` on both ends, works too, and is tested); stackd changes
//!   nothing on the interface but its up flag;
//! - PACKET_QDISC_BYPASS: stackd's frames go straight to the driver (TCP does its own
//!   pacing and retransmission; a full driver queue is a counted loss);
//!
//! The interface keeps its MAC unless `--mac` names another; then the socket joins the
//! interface in promiscuous mode (a membership of this socket only: the kernel drops it
//! when stackd exits, nothing on the interface is changed for good). The kernel must not
//! also own stackd's address: an interface carrying it is refused.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::device::{DeviceKind, FrameDevice, Interface};
use crate::sys::cvt;

/// An opened AF_PACKET device, the MAC smoltcp should use, and warnings for the log.
#[derive(Debug)]
pub struct Opened {
    pub device: FrameDevice,
    pub mac: [u8; 6],
    pub warnings: Vec<String>,
}

fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a live int of the stated size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn context(what: &str, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// Opens interface `name` for stackd at `ip` (see the module docs); `mac` overrides the
/// interface's own address. Needs CAP_NET_RAW and CAP_NET_ADMIN.
pub fn open(name: &str, ip: Ipv4Addr, mac: Option<[u8; 6]>) -> io::Result<Opened> {
    let iface = Interface::new(name)?;
    let index = iface.index().map_err(|e| {
        if e.raw_os_error() == Some(libc::ENODEV) {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {name:?} in this network namespace"),
            )
        } else {
            context("SIOCGIFINDEX", e)
        }
    })?;
    let own_mac = iface.mac()?;
    let mut warnings = Vec::new();

    let kernel_addrs = iface.ipv4_addrs().map_err(|e| context("getifaddrs", e))?;
    if kernel_addrs.contains(&ip) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{name} carries {ip} on the kernel stack: the kernel would answer for stackd's \
                 address (ARP, RST); remove it (ip addr del {ip}/NN dev {name}) and leave the \
                 interface without addresses"
            ),
        ));
    }
    if !kernel_addrs.is_empty() {
        warnings.push(format!(
            "{name} also carries kernel addresses {kernel_addrs:?}: the kernel answers ARP and \
             traffic for those on this interface too (stackd's interface should have none)"
        ));
    }

    // Up before the bind: a packet socket bound to a down interface starts with a pending
    // ENETDOWN error.
    iface
        .bring_up()
        .map_err(|e| context("bringing the link up", e))?;

    // SAFETY: plain system call. Protocol 0: nothing is queued before the bind below.
    let raw = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
    .map_err(|e| context("socket(AF_PACKET)", e))?;
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let sock = fd.as_raw_fd();
    set_int(sock, libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)
        .map_err(|e| context("PACKET_AUXDATA", e))?;
    set_int(sock, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
        .map_err(|e| context("PACKET_IGNORE_OUTGOING (Linux 4.20 or later)", e))?;
    // An optimisation only: older kernels or drivers without it keep the qdisc.
    let _ = set_int(sock, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
    // A burst the loop has not read yet waits here; the default (~200 KiB) holds fewer
    // frames than smoltcp's 128 KiB window needs once per-frame overhead counts. FORCE
    // goes past rmem_max with CAP_NET_ADMIN; without it the capped size is still better.
    const RCVBUF: i32 = 4 << 20;
    if set_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
        let _ = set_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
    }

    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = index;
    // SAFETY: a live sockaddr_ll of the stated size.
    cvt(unsafe {
        libc::bind(
            sock,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map_err(|e| context("bind(AF_PACKET)", e))?;

    let mac = match mac {
        Some(mac) if mac != own_mac => {
            // SAFETY: packet_mreq is plain data; all-zero is valid.
            let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
            mreq.mr_ifindex = index;
            mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
            // SAFETY: a live packet_mreq of the stated size.
            cvt(unsafe {
                libc::setsockopt(
                    sock,
                    libc::SOL_PACKET,
                    libc::PACKET_ADD_MEMBERSHIP,
                    (&mreq as *const libc::packet_mreq).cast(),
                    size_of::<libc::packet_mreq>() as libc::socklen_t,
                )
            })
            .map_err(|e| context("promiscuous mode for --mac (PACKET_MR_PROMISC)", e))?;
            mac
        }
        _ => own_mac,
    };

    let mtu = iface.mtu()?;
    iface
        .bring_up()
        .map_err(|e| context("bringing the link up", e))?;
    Ok(Opened {
        device: FrameDevice::new(fd, DeviceKind::Packet, name, index, mtu),
        mac,
        warnings,
    })
}
