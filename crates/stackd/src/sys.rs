//! Thin wrappers over the system calls both sides of the protocol need: eventfds, memfd
//! segments and their mappings, unix SEQPACKET sockets with descriptor passing, and peer
//! credentials. One rule: a failing call becomes `io::Error::last_os_error()`.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

/// Turns a -1 return into the thread's errno.
pub fn cvt<T: Default + PartialOrd>(ret: T) -> io::Result<T> {
    if ret < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a descriptor a successful call returned.
fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: fd was just returned by the kernel to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking, close-on-exec eventfd (counter semantics).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain system call without pointers.
    owned(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
}

/// Adds one to an eventfd (wakes its waiters). A full counter (EAGAIN) is already a
/// pending wake-up, so it is not an error.
pub fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    let ret = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Err(err);
        }
    }
    Ok(())
}

/// Resets a non-blocking eventfd's counter; returns whether it was signalled.
pub fn eventfd_drain(fd: RawFd) -> bool {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64.
    let ret = unsafe { libc::read(fd, (&mut value as *mut u64).cast(), 8) };
    ret == 8
}

/// A shared read-write mapping of a whole file, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all concurrent access to it goes through the
// protocol's atomics (see proto.rs).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared.
    pub fn map(fd: RawFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel; we check the result.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping we created and nobody uses any more (views
        // borrow the owner that holds this Mapping).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Creates a segment: a memfd of `bytes` bytes, mode 0600, sealed so that nobody can
/// shrink it (a shrunk segment would turn stackd's accesses into SIGBUS).
pub fn memfd_segment(name: &str, bytes: u64) -> io::Result<OwnedFd> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: cname is a valid NUL-terminated string.
    let fd = owned(unsafe {
        libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    let raw = fd.as_raw_fd();
    let len =
        libc::off_t::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain system calls on a descriptor we own.
    unsafe {
        cvt(libc::fchmod(raw, 0o600))?;
        cvt(libc::ftruncate(raw, len))?;
        cvt(libc::fcntl(
            raw,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        ))?;
    }
    Ok(fd)
}

/// The size of the file behind a descriptor.
pub fn file_size(fd: RawFd) -> io::Result<u64> {
    // SAFETY: fstat fills a zeroed stat we own.
    unsafe {
        let mut st: libc::stat = zeroed();
        cvt(libc::fstat(fd, &mut st))?;
        Ok(st.st_size as u64)
    }
}

fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unix socket path is empty, too long or contains NUL",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    Ok((addr, len))
}

fn seqpacket_socket(nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_SEQPACKET
        | libc::SOCK_CLOEXEC
        | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain system call.
    owned(unsafe { libc::socket(libc::AF_UNIX, flags, 0) })
}

/// A blocking SEQPACKET connection to `path`.
pub fn connect_seqpacket(path: &Path) -> io::Result<OwnedFd> {
    let sock = seqpacket_socket(false)?;
    let (addr, len) = unix_addr(path)?;
    // SAFETY: addr/len describe a valid sockaddr_un.
    cvt(unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    Ok(sock)
}

/// A non-blocking SEQPACKET listener bound at `path`.
pub fn listen_seqpacket(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    let sock = seqpacket_socket(true)?;
    let (addr, len) = unix_addr(path)?;
    // SAFETY: addr/len describe a valid sockaddr_un; plain system calls.
    unsafe {
        cvt(libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        ))?;
        cvt(libc::listen(sock.as_raw_fd(), backlog))?;
    }
    Ok(sock)
}

/// Accepts one connection (non-blocking, close-on-exec); None when none is waiting.
pub fn accept(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: plain system call; no address wanted.
    let fd = unsafe {
        libc::accept4(
            listener,
            ptr::null_mut(),
            ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    match owned(fd) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Room for the descriptors one reply carries.
const MAX_PASSED_FDS: usize = 4;

/// Sends one datagram with `fds` attached (SCM_RIGHTS).
pub fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // Aligned room for one cmsghdr with up to MAX_PASSED_FDS ints.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; we fill the fields we use.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the control buffer (64 bytes)
        // holds CMSG_SPACE(4 * 4) = 32 bytes; CMSG_FIRSTHDR of a msghdr whose control
        // points at that buffer is inside it, and the fds are copied into its data area.
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(payload) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: msg points at live iov and control buffers for the duration of the call.
    cvt(unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) })?;
    Ok(())
}

/// Receives one datagram and the descriptors attached to it (close-on-exec). Returns the
/// datagram's length (0 = the peer closed) and the descriptors.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>() as _;
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = cvt(unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs; the CMSG_*
    // macros walk them within that length; SCM_RIGHTS data holds ints that are new
    // descriptors owned by us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok((n as usize, fds))
}

/// The credentials of a unix socket's peer at connect time (SO_PEERCRED).
pub fn peer_credentials(sock: RawFd) -> io::Result<libc::ucred> {
    // SAFETY: getsockopt fills a zeroed ucred of the size we pass.
    unsafe {
        let mut cred: libc::ucred = zeroed();
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        cvt(libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        ))?;
        Ok(cred)
    }
}

/// The peer's supplementary groups at connect time (SO_PEERGROUPS).
pub fn peer_groups(sock: RawFd) -> io::Result<Vec<libc::gid_t>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer has len bytes.
        let ret = unsafe {
            libc::getsockopt(
                sock,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if ret == 0 {
            groups.truncate(len as usize / size_of::<libc::gid_t>());
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && groups.len() < 65_536 {
            groups.resize(len as usize / size_of::<libc::gid_t>() + 1, 0);
            continue;
        }
        return Err(err);
    }
}

/// The parent of process `pid` (from /proc), if it can be read.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}
