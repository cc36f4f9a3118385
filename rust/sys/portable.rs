//! The portable paths, for every POSIX system (macOS and the BSDs always, Linux on request):
//! `accept` followed by `fcntl`, a loop of `recvmsg` calls, and the listener registered
//! through mio (edge-triggered on every OS: kqueue's `EV_CLEAR`, epoll's `EPOLLET`), re-armed
//! before each wait.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};

use crate::net::{Datagram, PeerAddress, RawAddr, empty_storage};

/// `accept`, then the flags `accept4` would have set. The descriptor's `O_NONBLOCK` is set
/// or cleared explicitly: on macOS and the BSDs an accepted socket inherits it from the
/// listener (Linux's does not), and a socket handed to Python must block, as
/// `socket.accept()` makes it.
///
/// Between `accept` and `fcntl` a `fork()` on another thread could inherit the descriptor
/// without close-on-exec; an `exec` in that child would carry it on. CPython's own
/// `socket.accept()` has the same window on these systems.
pub fn accept(listener: RawFd, nonblocking: bool) -> io::Result<(OwnedFd, PeerAddress)> {
    let (mut storage, mut len) = empty_storage();
    // SAFETY: `storage`/`len` describe a writable buffer of the size given.
    let fd = unsafe {
        libc::accept(
            listener,
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept returned a new descriptor that nothing else owns. Owned from here on,
    // it is closed if setting its flags fails.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(&fd)?;
    set_nonblocking(&fd, nonblocking)?;
    Ok((fd, PeerAddress::decode(&storage, len)))
}

fn fcntl(
    fd: &OwnedFd,
    get: libc::c_int,
    set: libc::c_int,
    change: impl Fn(i32) -> i32,
) -> io::Result<()> {
    // SAFETY: F_GETFD/F_GETFL on an open descriptor take no argument.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), get) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = change(flags);
    if wanted == flags {
        return Ok(());
    }
    // SAFETY: F_SETFD/F_SETFL on an open descriptor with an int argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), set, wanted) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set `FD_CLOEXEC`.
pub fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    fcntl(fd, libc::F_GETFD, libc::F_SETFD, |flags| {
        flags | libc::FD_CLOEXEC
    })
}

/// Set or clear `O_NONBLOCK`.
pub fn set_nonblocking(fd: &OwnedFd, nonblocking: bool) -> io::Result<()> {
    fcntl(fd, libc::F_GETFL, libc::F_SETFL, |flags| {
        if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        }
    })
}

/// Set an integer socket option.
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
pub fn set_int_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; the option value is a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg` per datagram into the first `slots` slots of `buffer`, without waiting,
/// until none is left. `recvmsg` rather than `recvfrom`: its `MSG_TRUNC` flag says whether
/// a datagram was cut to fit, on every system (`recvfrom`'s length does so on Linux only).
/// Fails only when the first call does; a later failure ends the batch and is reported by
/// the next call, as `recvmmsg` does.
pub fn recv_batch(
    fd: RawFd,
    buffer: &mut [u8],
    slot_size: usize,
    slots: usize,
    out: &mut Vec<Datagram>,
) -> io::Result<usize> {
    let mut received = 0;
    for slot in buffer.chunks_mut(slot_size.max(1)).take(slots) {
        match recv_one(fd, slot) {
            Ok(datagram) => {
                out.push(datagram);
                received += 1;
            }
            Err(err) if received == 0 => return Err(err),
            Err(_) => break,
        }
    }
    Ok(received)
}

fn recv_one(fd: RawFd, slot: &mut [u8]) -> io::Result<Datagram> {
    let (mut storage, len) = empty_storage();
    let mut iovec = libc::iovec {
        iov_base: slot.as_mut_ptr() as *mut libc::c_void,
        iov_len: slot.len(),
    };
    // SAFETY: msghdr is plain old data; all zeroes is a valid value (its padding differs
    // between systems, so it is not built field by field).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_name = &mut storage as *mut _ as *mut libc::c_void;
    header.msg_namelen = len;
    header.msg_iov = &mut iovec;
    header.msg_iovlen = 1;
    // SAFETY: `header` points at `slot` and `storage`, both live and writable for the sizes
    // given.
    let n = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Datagram {
        from: RawAddr::from_kernel(storage, header.msg_namelen),
        len: n as usize,
        truncated: header.msg_flags & libc::MSG_TRUNC != 0,
    })
}

/// Register `fd` readable through mio.
pub fn register(poll: &Poll, fd: RawFd, token: Token) -> io::Result<()> {
    poll.registry()
        .register(&mut SourceFd(&fd), token, Interest::READABLE)
}

/// Re-register `fd`: both epoll (`EPOLL_CTL_MOD`) and kqueue (`EV_ADD` on an existing event)
/// evaluate readiness again, so a listener with clients still queued is reported on the next
/// wait even though its edge was consumed by an earlier one.
pub fn rearm(poll: &Poll, fd: RawFd, token: Token) -> io::Result<()> {
    poll.registry()
        .reregister(&mut SourceFd(&fd), token, Interest::READABLE)
}

/// Remove `fd`'s registration.
pub fn deregister(poll: &Poll, fd: RawFd) -> io::Result<()> {
    poll.registry().deregister(&mut SourceFd(&fd))
}
