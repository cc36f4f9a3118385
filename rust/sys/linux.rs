//! The Linux fast paths: `accept4` (the new descriptor's flags set in the same call),
//! `recvmmsg` (a batch of datagrams per call), and the listener registered level-triggered
//! straight on mio's epoll descriptor (so it needs no re-arming between waits).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use mio::{Poll, Token};

use crate::net::{Datagram, PeerAddress, RawAddr, empty_storage};

use super::DATAGRAM_BATCH;

/// `accept4`: close-on-exec, and non-blocking when asked, in one system call.
pub fn accept(listener: RawFd, nonblocking: bool) -> io::Result<(OwnedFd, PeerAddress)> {
    let flags = if nonblocking {
        libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK
    } else {
        libc::SOCK_CLOEXEC
    };
    let (mut storage, mut len) = empty_storage();
    // SAFETY: `storage`/`len` describe a writable buffer of the size given.
    let fd = unsafe {
        libc::accept4(
            listener,
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
            flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((fd, PeerAddress::decode(&storage, len)))
}

/// `recvmmsg` into the first `slots` slots of `buffer`, without waiting.
pub fn recv_batch(
    fd: RawFd,
    buffer: &mut [u8],
    slot_size: usize,
    slots: usize,
    out: &mut Vec<Datagram>,
) -> io::Result<usize> {
    let (storage, len) = empty_storage();
    let mut addrs = [storage; DATAGRAM_BATCH];
    // SAFETY: iovec and mmsghdr are plain old data; all zeroes is a valid value.
    let mut iovecs: [libc::iovec; DATAGRAM_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; DATAGRAM_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..slots {
        iovecs[i].iov_base = buffer[i * slot_size..].as_mut_ptr() as *mut libc::c_void;
        iovecs[i].iov_len = slot_size;
        headers[i].msg_hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
        headers[i].msg_hdr.msg_namelen = len;
        headers[i].msg_hdr.msg_iov = &mut iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `headers[..slots]` point at live, disjoint buffers and address slots above.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            slots as libc::c_uint,
            // The flags are an int in glibc's prototype, an unsigned int in musl's.
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (header, addr) in headers.iter().zip(addrs.iter()).take(n) {
        out.push(Datagram {
            from: RawAddr::from_kernel(*addr, header.msg_hdr.msg_namelen),
            len: header.msg_len as usize,
            truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        });
    }
    Ok(n)
}

/// `epoll_ctl` on mio's epoll instance, level-triggered (no `EPOLLET`).
fn control(
    poll: &Poll,
    op: libc::c_int,
    fd: RawFd,
    token: Token,
    readable: bool,
) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: if readable { libc::EPOLLIN as u32 } else { 0 },
        u64: token.0 as u64,
    };
    // SAFETY: a valid epoll descriptor (owned by `poll`) and a valid event struct.
    let rc = unsafe { libc::epoll_ctl(poll.as_raw_fd(), op, fd, &mut event) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Add `fd` to the epoll set, readable, level-triggered.
pub fn watch_level_triggered(poll: &Poll, fd: RawFd, token: Token) -> io::Result<()> {
    control(poll, libc::EPOLL_CTL_ADD, fd, token, true)
}

/// Ask for `fd`'s readability or not; it stays in the epoll set either way.
pub fn set_level_triggered(poll: &Poll, fd: RawFd, token: Token, readable: bool) -> io::Result<()> {
    control(poll, libc::EPOLL_CTL_MOD, fd, token, readable)
}

/// Remove `fd` from the epoll set.
pub fn unwatch(poll: &Poll, fd: RawFd) -> io::Result<()> {
    control(poll, libc::EPOLL_CTL_DEL, fd, Token(0), false)
}
