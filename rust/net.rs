//! The socket calls that are the same on every POSIX system (`read`, `send`, `sendto`,
//! `recvfrom`, `poll`, `setsockopt`), and the peer addresses the kernel returns, decoded the
//! way CPython's `socket` module decodes them. The calls whose form differs between systems
//! (`accept4`, `recvmmsg`, …) are in `sys/`.
//! This file needs no Python and is tested with `cargo test`.

use std::ffi::CStr;
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;

/// A peer address, one variant per shape CPython gives it in Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddress {
    /// `(host, port)`.
    Inet { host: String, port: u16 },
    /// `(host, port, flowinfo, scope_id)`.
    Inet6 {
        host: String,
        port: u16,
        flowinfo: u32,
        scope_id: u32,
    },
    /// A filesystem path as raw bytes (decoded with the filesystem encoding in Python);
    /// empty for an unnamed peer, which Python shows as `''`.
    UnixPath(Vec<u8>),
    /// A Linux abstract-namespace name, leading NUL included (Python shows `bytes`). Other
    /// systems have no such names: there a leading NUL is an empty path, as CPython reads it.
    UnixAbstract(Vec<u8>),
    /// The kernel gave no address at all (Python shows `None`).
    Absent,
    /// A family the fast path does not decode.
    Unsupported(i32),
}

impl PeerAddress {
    pub(crate) fn decode(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> PeerAddress {
        if len == 0 {
            return PeerAddress::Absent;
        }
        match i32::from(storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in for AF_INET, and sockaddr_storage is
                // large and aligned enough for every sockaddr type.
                let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
                PeerAddress::Inet {
                    host: ntop(libc::AF_INET, &sin.sin_addr as *const _ as *const _),
                    port: u16::from_be(sin.sin_port),
                }
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for AF_INET6 and sockaddr_in6.
                let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
                PeerAddress::Inet6 {
                    host: ntop(libc::AF_INET6, &sin6.sin6_addr as *const _ as *const _),
                    port: u16::from_be(sin6.sin6_port),
                    flowinfo: u32::from_be(sin6.sin6_flowinfo),
                    scope_id: sin6.sin6_scope_id,
                }
            }
            libc::AF_UNIX => {
                // SAFETY: as above, for AF_UNIX and sockaddr_un.
                let sun = unsafe { &*(storage as *const _ as *const libc::sockaddr_un) };
                // Where the path starts: after `sun_family` on Linux, after `sun_len` and
                // `sun_family` (one byte each) on macOS and the BSDs.
                let header = std::mem::offset_of!(libc::sockaddr_un, sun_path);
                let path_len = (len as usize)
                    .saturating_sub(header)
                    .min(sun.sun_path.len());
                let path: Vec<u8> = sun.sun_path[..path_len].iter().map(|&c| c as u8).collect();
                if sys::ABSTRACT_UNIX_NAMES && path.first() == Some(&0) {
                    PeerAddress::UnixAbstract(path)
                } else {
                    // A path is NUL-terminated within the reported length, when terminated.
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    PeerAddress::UnixPath(path[..end].to_vec())
                }
            }
            family => PeerAddress::Unsupported(family),
        }
    }
}

// The libc crate does not bind inet_ntop; its C signature is fixed by POSIX.
unsafe extern "C" {
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// `inet_ntop`, the function CPython formats IP addresses with (so `::ffff:1.2.3.4` and
/// every other corner case reads exactly as `socket.accept()` would show it).
fn ntop(family: i32, addr: *const libc::c_void) -> String {
    let mut text = [0 as libc::c_char; 64];
    // SAFETY: `addr` points at an in_addr/in6_addr matching `family`; `text` is longer than
    // INET6_ADDRSTRLEN, and inet_ntop NUL-terminates on success.
    let ok = unsafe { inet_ntop(family, addr, text.as_mut_ptr(), text.len() as _) };
    if ok.is_null() {
        return String::new();
    }
    // SAFETY: inet_ntop succeeded, so `text` holds a NUL-terminated ASCII string.
    unsafe { CStr::from_ptr(text.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A zeroed address buffer and its size, for the kernel to write a peer address into.
pub(crate) fn empty_storage() -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let storage = unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
    (
        storage,
        size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    )
}

/// A socket address exactly as the kernel gave it, to send replies back to.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawAddr({:?})", self.peer())
    }
}

impl RawAddr {
    /// The address the kernel wrote into `storage`, `len` bytes of it.
    pub(crate) fn from_kernel(storage: libc::sockaddr_storage, len: libc::socklen_t) -> RawAddr {
        RawAddr { storage, len }
    }

    pub fn peer(&self) -> PeerAddress {
        PeerAddress::decode(&self.storage, self.len)
    }
}

/// One `read()`; `Ok(0)` is end of stream.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One non-blocking `send()` that raises no SIGPIPE (a vanished peer is an `EPIPE` error).
/// On macOS that takes a socket from `sys::accept_nonblocking`, which marks it so.
pub fn send_quietly(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is readable for its length.
    let n = unsafe {
        libc::send(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT | sys::NO_SIGPIPE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Send one datagram to `to` without waiting.
pub fn send_to(fd: RawFd, data: &[u8], to: &RawAddr) -> io::Result<usize> {
    // SAFETY: `data` is readable for its length; `to` holds a kernel-provided address.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT | sys::NO_SIGPIPE,
            &to.storage as *const _ as *const libc::sockaddr,
            to.len,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One received datagram of a batch (`sys::recv_batch`): where it came from, its length in
/// its slot of the batch buffer, and whether it was cut to fit.
#[derive(Debug, Clone, Copy)]
pub struct Datagram {
    pub from: RawAddr,
    pub len: usize,
    pub truncated: bool,
}

/// Receive one datagram into `buf` (truncating it to `buf.len()`, like `recvfrom(n)`),
/// without waiting: readiness was reported, and if another reader took the datagram first
/// this fails with `WouldBlock` instead of blocking the serving loop.
pub fn recv_from(socket: RawFd, buf: &mut [u8]) -> io::Result<(usize, PeerAddress)> {
    let (mut storage, mut len) = empty_storage();
    // SAFETY: `buf` is writable for its length; `storage`/`len` as in `accept`.
    let n = unsafe {
        libc::recvfrom(
            socket,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, PeerAddress::decode(&storage, len)))
}

/// One non-blocking `recv()` into `buf`; `Ok(0)` is end of stream.
pub fn recv_nonblocking(socket: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::recv(
            socket,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One blocking `recv()` into `buf` (call it without the GIL); `Ok(0)` is end of stream.
pub fn recv_blocking(socket: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::recv(socket, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Wait until `socket` has data (or end of stream, or an error) to read; false if `timeout`
/// (`None`: no limit) ran out.
pub fn wait_readable(socket: RawFd, timeout: Option<std::time::Duration>) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: socket,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = match timeout {
        None => -1,
        // Round up, so a short remaining time still waits rather than spinning.
        Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pollfd, 1, millis) };
    match rc {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Turn off Nagle's algorithm on a TCP connection.
pub fn set_nodelay(fd: &OwnedFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; the option value is a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &on as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether accept() failed for lack of file descriptors (retrying at once would spin).
pub fn is_descriptor_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    #[test]
    fn unix_datagram_peers_decode_like_cpython() {
        let dir = std::env::temp_dir().join(format!("ssrs-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let server_path = dir.join("dgram");
        let server = UnixDatagram::bind(&server_path).unwrap();
        let client_path = dir.join("client");
        let client = UnixDatagram::bind(&client_path).unwrap();
        client.send_to(b"ping", &server_path).unwrap();
        let mut buf = [0u8; 2];
        let (n, peer) = recv_from(server.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(n, 2, "a datagram longer than the buffer is truncated");
        let expected = client_path.as_os_str().as_encoded_bytes().to_vec();
        assert_eq!(peer, PeerAddress::UnixPath(expected));
        // An unbound sender has no address: Python shows None.
        let anonymous = UnixDatagram::unbound().unwrap();
        anonymous.send_to(b"x", &server_path).unwrap();
        let (_, peer) = recv_from(server.as_raw_fd(), &mut buf).unwrap();
        assert!(
            match &peer {
                PeerAddress::Absent => true,
                PeerAddress::UnixPath(path) => path.is_empty(),
                _ => false,
            },
            "{peer:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unix_names_decode_as_cpython_reads_them_on_this_system() {
        let (mut storage, _) = empty_storage();
        storage.ss_family = libc::AF_UNIX as libc::sa_family_t;
        let header = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_un.
        let sun = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_un) };
        for (i, byte) in b"/tmp/s\0".iter().enumerate() {
            sun.sun_path[i] = *byte as libc::c_char;
        }
        let len = (header + 7) as libc::socklen_t;
        let path = PeerAddress::UnixPath(b"/tmp/s".to_vec());
        assert_eq!(PeerAddress::decode(&storage, len), path);
        sun.sun_path[0] = 0; // "\0tmp/s": an abstract name on Linux, an empty path elsewhere
        let expected = if sys::ABSTRACT_UNIX_NAMES {
            PeerAddress::UnixAbstract(b"\0tmp/s\0".to_vec())
        } else {
            PeerAddress::UnixPath(Vec::new())
        };
        assert_eq!(PeerAddress::decode(&storage, len), expected);
        assert_eq!(PeerAddress::decode(&storage, 0), PeerAddress::Absent);
    }

    #[test]
    fn recv_from_reports_the_udp_sender() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .send_to(b"hello", server.local_addr().unwrap())
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, peer) = recv_from(server.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let port = client.local_addr().unwrap().port();
        assert_eq!(
            peer,
            PeerAddress::Inet {
                host: "127.0.0.1".into(),
                port
            }
        );
    }

    #[test]
    fn nonblocking_recv_reports_nothing_there_and_waiting_times_out_until_data_comes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 16];
        let err = recv_nonblocking(a.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let short = Some(std::time::Duration::from_millis(20));
        assert!(!wait_readable(a.as_raw_fd(), short).unwrap());
        b.write_all(b"data").unwrap();
        assert!(wait_readable(a.as_raw_fd(), short).unwrap());
        assert_eq!(recv_nonblocking(a.as_raw_fd(), &mut buf).unwrap(), 4);
        drop(b);
        assert_eq!(
            recv_blocking(a.as_raw_fd(), &mut buf).unwrap(),
            0,
            "end of stream"
        );
    }

    #[test]
    fn sending_to_a_vanished_peer_is_an_epipe_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = send_quietly(a.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn nodelay_is_set() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let fd = OwnedFd::from(stream);
        set_nodelay(&fd).unwrap();
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int of the size given.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &mut value as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!((rc, value != 0), (0, true));
    }

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        assert!(is_descriptor_exhaustion(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!is_descriptor_exhaustion(&io::Error::from_raw_os_error(
            libc::EBADF
        )));
    }
}
