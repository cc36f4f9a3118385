//! Client sockets: TCP bound to a chosen loopback source address, Unix streams, either one
//! wrapped in TLS, and the payload.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::ClientConfig;

use crate::tls::TlsStream;

/// A connected (or connecting) non-blocking byte stream.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A client TLS session over one of the others.
    Tls(Box<TlsStream<Stream>>),
}

impl Stream {
    /// Starts connecting to `dest` from `source` (IPv4 only; ignored for IPv6), with Nagle off.
    pub fn tcp(dest: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<Stream> {
        let stream = match dest {
            SocketAddr::V4(dest) => connect_v4(dest, source)?,
            SocketAddr::V6(_) => TcpStream::connect(dest)?,
        };
        stream.set_nodelay(true)?;
        Ok(Stream::Tcp(stream))
    }

    pub fn unix(path: &Path) -> io::Result<Stream> {
        UnixStream::connect(path).map(Stream::Unix)
    }

    /// This stream as the transport of a TLS client session with `config`, if given; the
    /// handshake starts with the first write (or `flush`) once the socket is connected.
    pub fn with_tls(self, config: Option<&Arc<ClientConfig>>) -> io::Result<Stream> {
        match config {
            Some(config) => Ok(Stream::Tls(Box::new(TlsStream::new(self, config)?))),
            None => Ok(self),
        }
    }

    /// Ends a TLS session with a close_notify before the socket is dropped (best effort: the
    /// records the socket does not take now are lost); nothing for a plain stream.
    pub fn close_notify(&mut self) {
        if let Stream::Tls(s) = self {
            s.close_notify();
        }
    }

    /// The pending connect's outcome: `Ok(true)` once connected, `Ok(false)` while in progress.
    pub fn connected(&self) -> io::Result<bool> {
        if let Some(error) = self.take_error()? {
            return Err(error);
        }
        let peer = match self {
            Stream::Tcp(s) => s.peer_addr().map(drop),
            Stream::Unix(s) => s.peer_addr().map(drop),
            Stream::Tls(s) => return s.get_ref().connected(),
        };
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
            Stream::Tls(s) => s.get_ref().take_error(),
        }
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self {
            Stream::Tcp(s) => s.register(registry, token, interest),
            Stream::Unix(s) => s.register(registry, token, interest),
            Stream::Tls(s) => s.get_mut().register(registry, token),
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
            Stream::Tls(s) => {
                s.get_mut().deregister(registry);
                Ok(())
            }
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    /// Sends what a TLS session still holds (plain streams hold nothing).
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

/// `socket` + `bind(source:0)` + non-blocking `connect`. `IP_BIND_ADDRESS_NO_PORT` defers the
/// port choice to `connect`, so ports are shared per destination and each source address adds
/// a full ephemeral range: the kernel's port search then stays cheap at high connection rates.
fn connect_v4(dest: SocketAddrV4, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, flags, 0) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; `OwnedFd` closes it on every
    // path, including the early returns below.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(source) = source {
        set_int_option(&owned, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        let addr = sockaddr_v4(SocketAddrV4::new(source, 0));
        // SAFETY: `addr` is a valid `sockaddr_in` that outlives the call, and its exact size
        // is passed.
        cvt(unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
    }
    let addr = sockaddr_v4(dest);
    // SAFETY: as for bind above.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(error);
        }
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(owned)))
}

fn set_int_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `value` is a live `c_int` and its exact size is passed; `fd` is open.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn sockaddr_v4(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A `size`-byte message: printable filler ending in one newline, so line-based handlers
/// (`readline()` + `write()`) echo it as one line.
pub fn payload(size: usize) -> Vec<u8> {
    let mut message: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    if let Some(last) = message.last_mut() {
        *last = b'\n';
    }
    message
}

/// Tokens carry a slot index and a generation, so events left over for a socket that was
/// closed and replaced in the same slot are recognised and ignored.
pub fn token(slot: usize, generation: u32) -> Token {
    Token((generation as usize) << 24 | slot)
}

/// The `(slot, generation)` a token was made from.
pub fn untoken(token: Token) -> (usize, u32) {
    (token.0 & 0xff_ffff, (token.0 >> 24) as u32)
}

/// CPU seconds (user + system) this process has used so far.
pub fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the whole struct it is given, which is large enough.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: the call succeeded, so the struct is initialised (it was zeroed before anyway).
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_one_line_of_the_requested_size() {
        for size in [1, 2, 64, 1000] {
            let p = payload(size);
            assert_eq!(p.len(), size);
            assert_eq!(p.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(p.last(), Some(&b'\n'));
        }
        assert!(payload(0).is_empty());
    }

    #[test]
    fn tokens_round_trip() {
        for (slot, generation) in [(0, 0), (255, 1), (9_999, 123), (0xff_ffff, 0xff)] {
            assert_eq!(untoken(token(slot, generation)), (slot, generation));
        }
    }
}
