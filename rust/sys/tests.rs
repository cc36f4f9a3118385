//! Each test runs every implementation this build has (on Linux: the fast paths and the
//! portable ones), called directly, whatever `SOCKETSERVER_RS_PORTABLE` says.

use super::*;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use mio::Events;

fn fd_flag(fd: RawFd, get: libc::c_int, flag: libc::c_int) -> bool {
    // SAFETY: F_GETFD/F_GETFL on a descriptor the test owns.
    let flags = unsafe { libc::fcntl(fd, get) };
    assert!(flags >= 0);
    flags & flag != 0
}

fn is_nonblocking(fd: &OwnedFd) -> bool {
    fd_flag(fd.as_raw_fd(), libc::F_GETFL, libc::O_NONBLOCK)
}

fn is_cloexec(fd: &OwnedFd) -> bool {
    fd_flag(fd.as_raw_fd(), libc::F_GETFD, libc::FD_CLOEXEC)
}

#[test]
fn accept_gives_a_blocking_cloexec_socket_and_the_ipv4_peer() {
    for &paths in Paths::ALL {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // A non-blocking listener: on macOS and the BSDs the accepted socket would inherit
        // O_NONBLOCK, and a socket handed to Python must block.
        listener.set_nonblocking(true).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (fd, peer) = accept_with(paths, listener.as_raw_fd(), false).unwrap();
        let port = client.local_addr().unwrap().port();
        let expected = PeerAddress::Inet {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(peer, expected, "{paths:?}");
        assert!(is_cloexec(&fd), "{paths:?}");
        assert!(!is_nonblocking(&fd), "{paths:?}");
    }
}

#[test]
fn the_portable_accept_clears_an_inherited_nonblocking_flag() {
    // What BSD's accept() hands over from a non-blocking listener (Linux's never does, so the
    // flag is set here by hand): the portable path must clear it for Python's sockets.
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = OwnedFd::from(a);
    portable::set_nonblocking(&fd, true).unwrap();
    assert!(is_nonblocking(&fd));
    portable::set_nonblocking(&fd, false).unwrap();
    assert!(!is_nonblocking(&fd));
    portable::set_cloexec(&fd).unwrap();
    assert!(is_cloexec(&fd));
}

#[test]
fn accept_nonblocking_sets_both_flags_and_reports_an_empty_backlog() {
    for &paths in Paths::ALL {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (fd, _) = accept_with(paths, listener.as_raw_fd(), true).unwrap();
        assert!(is_cloexec(&fd), "{paths:?}");
        assert!(is_nonblocking(&fd), "{paths:?}");
        let err = accept_with(paths, listener.as_raw_fd(), true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{paths:?}");
    }
}

#[test]
fn accept_reports_the_ipv6_peer() {
    for &paths in Paths::ALL {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 loopback on this host: nothing to check
        };
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_fd, peer) = accept_with(paths, listener.as_raw_fd(), false).unwrap();
        let PeerAddress::Inet6 { host, port, .. } = peer else {
            panic!("{paths:?}: {peer:?}")
        };
        let expected = ("::1", client.local_addr().unwrap().port());
        assert_eq!((host.as_str(), port), expected, "{paths:?}");
    }
}

#[test]
fn an_unnamed_unix_peer_is_an_empty_path() {
    let dir = std::env::temp_dir().join(format!("ssrs-sys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stream");
    let listener = UnixListener::bind(&path).unwrap();
    for &paths in Paths::ALL {
        let _client = UnixStream::connect(&path).unwrap();
        let (_fd, peer) = accept_with(paths, listener.as_raw_fd(), false).unwrap();
        assert_eq!(peer, PeerAddress::UnixPath(Vec::new()), "{paths:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn accept_errors_keep_their_errno() {
    for &paths in Paths::ALL {
        let err = accept_with(paths, -1, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{paths:?}");
    }
}

#[test]
fn batches_of_datagrams_keep_sender_and_truncation() {
    for &paths in Paths::ALL {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for payload in [&b"one"[..], b"two", b"a longer one"] {
            client
                .send_to(payload, server.local_addr().unwrap())
                .unwrap();
        }
        let mut buffer = vec![0u8; 8 * DATAGRAM_BATCH];
        let mut got = Vec::new();
        let mut total = 0;
        while total < 3 {
            total += recv_batch_with(paths, server.as_raw_fd(), &mut buffer, 8, &mut got).unwrap();
        }
        assert_eq!(got.len(), 3, "{paths:?}");
        assert_eq!(&buffer[..got[0].len], b"one", "{paths:?}");
        assert_eq!(&buffer[8..8 + got[1].len], b"two", "{paths:?}");
        assert!(!got[1].truncated, "{paths:?}");
        assert!(got[2].truncated, "{paths:?}: 12 bytes into an 8-byte slot");
        assert_eq!(&buffer[16..24], b"a longer", "{paths:?}");
        let port = client.local_addr().unwrap().port();
        let expected = PeerAddress::Inet {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(got[1].from.peer(), expected, "{paths:?}");
        // Replies go back to the recorded sender.
        crate::net::send_to(server.as_raw_fd(), b"back", &got[1].from).unwrap();
        let mut reply = [0u8; 8];
        assert_eq!(client.recv(&mut reply).unwrap(), 4, "{paths:?}");
        let err = recv_batch_with(paths, server.as_raw_fd(), &mut buffer, 8, &mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{paths:?}");
    }
}

#[test]
fn a_batch_takes_no_more_than_its_slots() {
    for &paths in Paths::ALL {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            client.send_to(&[i], server.local_addr().unwrap()).unwrap();
        }
        // Three slots of four bytes (and a stub that is no slot): three datagrams, in order.
        let mut buffer = vec![0u8; 3 * 4 + 2];
        let mut got = Vec::new();
        let mut taken = 0;
        while taken < 3 {
            taken += recv_batch_with(paths, server.as_raw_fd(), &mut buffer, 4, &mut got).unwrap();
        }
        assert_eq!(taken, 3, "{paths:?}");
        assert_eq!([buffer[0], buffer[4], buffer[8]], [0, 1, 2], "{paths:?}");
        got.clear();
        let mut rest = 0;
        while rest < 2 {
            rest += recv_batch_with(paths, server.as_raw_fd(), &mut buffer, 4, &mut got).unwrap();
        }
        assert_eq!([buffer[0], buffer[4]], [3, 4], "{paths:?}");
    }
}

const LISTENER: Token = Token(7);
const SHORT: Option<Duration> = Some(Duration::from_millis(50));

/// Wait as `Poller::wait` does: re-arm, then poll; whether the listener was reported.
fn listener_reported(poll: &mut Poll, listener: &mut Listener) -> bool {
    listener.before_wait(poll).unwrap();
    let mut events = Events::with_capacity(8);
    poll.poll(&mut events, SHORT).unwrap();
    events.iter().any(|event| event.token() == LISTENER)
}

#[test]
fn queued_clients_are_reported_until_all_are_accepted() {
    for &paths in Paths::ALL {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..3)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        let mut poll = Poll::new().unwrap();
        let mut watched = Listener::watch(paths, &poll, listener.as_raw_fd(), LISTENER).unwrap();
        for _ in 0..clients.len() {
            // One client per wakeup, as socketserver serves: the rest must be reported on the
            // next wait (level-triggered, or re-armed).
            assert!(listener_reported(&mut poll, &mut watched), "{paths:?}");
            listener.accept().unwrap();
        }
        assert!(!listener_reported(&mut poll, &mut watched), "{paths:?}");
        watched.unwatch(&poll);
    }
}

#[test]
fn paused_listening_ignores_readiness_until_resumed() {
    for &paths in Paths::ALL {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut poll = Poll::new().unwrap();
        let mut watched = Listener::watch(paths, &poll, listener.as_raw_fd(), LISTENER).unwrap();
        watched.set_listening(&poll, false).unwrap();
        assert!(!watched.is_listening());
        assert!(
            !listener_reported(&mut poll, &mut watched),
            "{paths:?}: paused"
        );
        watched.set_listening(&poll, false).unwrap(); // saying it again is harmless
        watched.set_listening(&poll, true).unwrap();
        assert!(
            listener_reported(&mut poll, &mut watched),
            "{paths:?}: resumed"
        );
        assert!(
            listener_reported(&mut poll, &mut watched),
            "{paths:?}: still queued"
        );
        watched.unwatch(&poll);
        assert!(
            !listener_reported_without_rearm(&mut poll),
            "{paths:?}: unwatched"
        );
    }
}

fn listener_reported_without_rearm(poll: &mut Poll) -> bool {
    let mut events = Events::with_capacity(8);
    poll.poll(&mut events, SHORT).unwrap();
    events.iter().any(|event| event.token() == LISTENER)
}

#[test]
fn unwatching_a_closed_descriptor_is_harmless() {
    for &paths in Paths::ALL {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let poll = Poll::new().unwrap();
        let watched = Listener::watch(paths, &poll, listener.as_raw_fd(), LISTENER).unwrap();
        drop(listener);
        watched.unwatch(&poll);
    }
}

#[test]
fn the_environment_value_chooses_the_paths() {
    assert_eq!(Paths::from_env_value(None), Ok(Paths::NATIVE));
    assert_eq!(
        Paths::from_env_value(Some(OsStr::new(""))),
        Ok(Paths::NATIVE)
    );
    assert_eq!(
        Paths::from_env_value(Some(OsStr::new("0"))),
        Ok(Paths::NATIVE)
    );
    assert_eq!(
        Paths::from_env_value(Some(OsStr::new("1"))),
        Ok(Paths::Portable)
    );
    let err = Paths::from_env_value(Some(OsStr::new("yes"))).unwrap_err();
    assert!(
        err.contains("SOCKETSERVER_RS_PORTABLE") && err.contains("\"yes\""),
        "{err}"
    );
    assert_eq!(Paths::Portable.name(), "portable");
}

#[test]
fn the_choice_holds_for_the_process() {
    let first = active();
    assert_eq!(select_from_env(), Ok(first));
    assert_eq!(active(), first);
}

/// Counts its drops, to see whether `ForkBound` dropped it.
struct Counted<'a>(&'a std::cell::Cell<u32>);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn fork_bound_values_are_dropped_only_where_closing_is_right() {
    let drops = std::cell::Cell::new(0);
    // As in a child on a kqueue system: made by another process, not copied by fork.
    let mut inherited = ForkBound {
        value: std::mem::ManuallyDrop::new(Counted(&drops)),
        owner_pid: std::process::id() + 1,
    };
    assert!(!inherited.is_owned_by_this_process());
    inherited.drop_with(false);
    assert_eq!(
        drops.get(),
        0,
        "left alone: its numbers may name other files there"
    );
    // As in a child on Linux, where fork copied the descriptors: closed.
    let mut copied = ForkBound {
        value: std::mem::ManuallyDrop::new(Counted(&drops)),
        owner_pid: std::process::id() + 1,
    };
    copied.drop_with(true);
    std::mem::forget(copied); // dropped once above; Drop must not run again
    assert_eq!(drops.get(), 1);
    drop(ForkBound::new(Counted(&drops))); // made here: always closed
    assert_eq!(drops.get(), 2);
    std::mem::forget(inherited);
}
