//! `mio-echo`: a single-threaded mio echo server, the native ceiling the Python servers are
//! compared with. `mio-echo tcp|udp|unix ADDRESS [--max-seconds N]` prints `READY <address>`
//! once listening, echoes every byte (or datagram) back, and exits by itself after
//! `--max-seconds` (default 3600) in case whoever started it forgets to stop it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket, UnixListener};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX - 1);
/// The listen backlog. mio (like std) listens with 128; the benchmark gives the Python servers
/// 1024 or 4096, so mio-echo asks for as much (the kernel caps it at net.core.somaxconn).
const BACKLOG: libc::c_int = 4096;
const USAGE: &str = "usage: mio-echo tcp|udp|unix ADDRESS [--max-seconds N]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, address, max_seconds) = match args.as_slice() {
        [kind, address] => (kind.as_str(), address.as_str(), 3600.0),
        [kind, address, flag, secs] if flag == "--max-seconds" => match secs.parse::<f64>() {
            Ok(secs) if secs > 0.0 => (kind.as_str(), address.as_str(), secs),
            _ => return usage(),
        },
        _ => return usage(),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(max_seconds);
    let outcome = match kind {
        "tcp" => match address.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => serve_tcp(addr, deadline),
            _ => return usage(),
        },
        "unix" => serve_unix(PathBuf::from(address), deadline),
        "udp" => match address.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => serve_udp(addr, deadline),
            _ => return usage(),
        },
        _ => return usage(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mio-echo: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE} (loopback addresses only)");
    ExitCode::from(2)
}

fn ready(address: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "READY {address}")?;
    out.flush()
}

/// Waits for events until `deadline`; `false` once it has passed.
fn wait(poll: &mut Poll, events: &mut Events, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(false);
    }
    match poll.poll(events, Some(left.min(Duration::from_secs(1)))) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// One echoed connection: bytes read but not yet written back wait in `backlog`.
#[derive(Debug)]
struct Echo<S> {
    stream: S,
    backlog: Vec<u8>,
    /// The poller reported the peer's end of stream or an error, which raises no later edge.
    hung_up: bool,
}

impl<S: Read + Write> Echo<S> {
    /// Echoes until the socket would block; `false` when the connection is finished.
    ///
    /// A read shorter than `buf` has emptied the receive queue, and later bytes raise a new
    /// edge, so once its echo is written the connection waits for that edge instead of
    /// reading again for `WouldBlock` (as the reactor does; uvloop reads once per wakeup too). A peer
    /// that hung up is read to the end.
    fn drive(&mut self, buf: &mut [u8]) -> bool {
        let mut emptied = false;
        loop {
            while !self.backlog.is_empty() {
                match self.stream.write(&self.backlog) {
                    Ok(n) => {
                        self.backlog.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            if emptied {
                return true;
            }
            let n = match self.stream.read(buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            self.backlog.extend_from_slice(&buf[..n]);
            emptied = n < buf.len() && !self.hung_up;
        }
    }
}

/// Accept-and-echo loop shared by TCP and Unix listeners.
fn serve_streams<L, S>(
    mut listener: L,
    accept: impl Fn(&L) -> io::Result<S>,
    prepare: impl Fn(&S),
    deadline: Instant,
) -> io::Result<()>
where
    L: mio::event::Source,
    S: Read + Write + mio::event::Source,
{
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut conns: HashMap<Token, Echo<S>> = HashMap::new();
    let mut next = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while wait(&mut poll, &mut events, deadline)? {
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match accept(&listener) {
                        Ok(mut stream) => {
                            prepare(&stream);
                            let token = Token(next);
                            next = (next + 1) % (usize::MAX - 2);
                            let interest = Interest::READABLE | Interest::WRITABLE;
                            poll.registry().register(&mut stream, token, interest)?;
                            conns.insert(
                                token,
                                Echo {
                                    stream,
                                    backlog: Vec::new(),
                                    hung_up: false,
                                },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // EMFILE and friends: leave the rest in the backlog for the next wakeup.
                        Err(_) => break,
                    }
                }
            } else if let Some(conn) = conns.get_mut(&event.token()) {
                conn.hung_up |= event.is_read_closed() || event.is_error();
                if !conn.drive(&mut buf) {
                    if let Some(mut conn) = conns.remove(&event.token()) {
                        poll.registry().deregister(&mut conn.stream)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn serve_tcp(addr: SocketAddr, deadline: Instant) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    widen_backlog(&listener)?;
    ready(&listener.local_addr()?.to_string())?;
    serve_streams(
        listener,
        |l| l.accept().map(|(s, _)| s),
        |s| {
            let _ = s.set_nodelay(true);
        },
        deadline,
    )
}

fn serve_unix(path: PathBuf, deadline: Instant) -> io::Result<()> {
    let listener = UnixListener::bind(&path)?;
    widen_backlog(&listener)?;
    ready(&path.display().to_string())?;
    let outcome = serve_streams(listener, |l| l.accept().map(|(s, _)| s), |_| {}, deadline);
    let _ = std::fs::remove_file(&path);
    outcome
}

/// Listens again with `BACKLOG`: on Linux, `listen()` on a listening socket only changes its
/// backlog.
fn widen_backlog(listener: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: listen(2) on a descriptor that `listener` owns and keeps open during the call.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn serve_udp(addr: SocketAddr, deadline: Instant) -> io::Result<()> {
    let mut socket = UdpSocket::bind(addr)?;
    ready(&socket.local_addr()?.to_string())?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut socket, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 65_536];
    while wait(&mut poll, &mut events, deadline)? {
        if events.is_empty() {
            continue;
        }
        loop {
            match socket.recv_from(&mut buf) {
                // A datagram that cannot be sent at once is dropped, as UDP may drop it anyway.
                Ok((n, peer)) => {
                    let _ = socket.send_to(&buf[..n], peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // a queued error: the next datagram wakes us again
            }
        }
    }
    Ok(())
}
