//! The platform layer: every system call whose form differs between operating systems, behind
//! one small API. The rest of the engine calls these functions and never `#[cfg]`s itself.
//!
//! What differs, Linux fast path (`linux.rs`) / portable path (`portable.rs`):
//! - accepting: `accept4` with `SOCK_CLOEXEC` (and `SOCK_NONBLOCK`) / `accept`, then `fcntl`
//!   (`FD_CLOEXEC` set, `O_NONBLOCK` set or cleared);
//! - receiving datagrams: one `recvmmsg` per batch / a loop of `recvmsg`, one datagram each;
//! - the listener's wakeups: level-triggered, straight on mio's epoll descriptor / mio's own
//!   edge-triggered registration, re-armed before every wait and deregistered while paused.
//!
//! Linux uses the fast paths unless `SOCKETSERVER_RS_PORTABLE=1` is set when the native
//! module is imported (read once per process, see [`select_from_env`]): then Linux runs the
//! portable paths, so the test suite covers them here. Every other POSIX system (macOS and
//! the BSDs, with kqueue under mio) always runs the portable paths.
//!
//! Five differences are fixed at compile time, because they are properties of the OS rather
//! than of a path: how a `send` avoids `SIGPIPE` ([`NO_SIGPIPE`], [`suppress_sigpipe`]),
//! whether mio's poll descriptors are copied into a `fork()`ed child ([`ForkBound`]),
//! whether Unix socket names may be abstract ([`ABSTRACT_UNIX_NAMES`]), whether a child
//! can ask to die with its parent ([`kill_with_parent`]), and whether `pthread_exit()`
//! unwinds, so that calls into Python need a C frame that stops it ([`EXIT_GUARD`]).
//! This module needs no Python (the guard takes the interpreter's objects as raw pointers)
//! and is tested with `cargo test`.

#[cfg(target_os = "linux")]
mod linux;
mod portable;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::OnceLock;

use mio::{Poll, Token};

use crate::net::{Datagram, PeerAddress};

/// The environment variable that forces the portable paths on Linux.
pub const PORTABLE_ENV: &str = "SOCKETSERVER_RS_PORTABLE";

/// The most datagrams one [`recv_batch`] call takes.
pub const DATAGRAM_BATCH: usize = 32;

/// Which implementation of this module's calls a process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paths {
    /// `accept4`, `recvmmsg`, the level-triggered listener on the epoll descriptor.
    #[cfg(target_os = "linux")]
    Linux,
    /// `accept` + `fcntl`, a `recvmsg` loop, the listener re-armed through mio.
    Portable,
}

impl Paths {
    /// The paths a process uses unless told otherwise.
    pub const NATIVE: Paths = {
        #[cfg(target_os = "linux")]
        {
            Paths::Linux
        }
        #[cfg(not(target_os = "linux"))]
        {
            Paths::Portable
        }
    };

    /// Every implementation this build has (so tests can run each).
    #[cfg(test)]
    pub const ALL: &'static [Paths] = &[
        #[cfg(target_os = "linux")]
        Paths::Linux,
        Paths::Portable,
    ];

    /// The name `_core.platform_paths()` reports: `"linux"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_os = "linux")]
            Paths::Linux => "linux",
            Paths::Portable => "portable",
        }
    }

    /// The paths chosen by a value of [`PORTABLE_ENV`]: unset, empty or `0` keep the native
    /// ones, `1` forces the portable ones; anything else is an error (a typo must not
    /// silently test the wrong path).
    fn from_env_value(value: Option<&OsStr>) -> Result<Paths, String> {
        match value.map(|v| v.to_str()) {
            None | Some(Some("" | "0")) => Ok(Paths::NATIVE),
            Some(Some("1")) => Ok(Paths::Portable),
            Some(_) => Err(format!(
                "{PORTABLE_ENV} must be '1' (portable paths) or '0' or unset (native paths), \
                 not {:?}",
                value.unwrap_or_default().to_string_lossy()
            )),
        }
    }
}

static ACTIVE: OnceLock<Paths> = OnceLock::new();

/// Choose the process's paths from [`PORTABLE_ENV`] (the native module calls this when it is
/// imported). The first choice holds for the life of the process: later calls, and a changed
/// environment, return it unchanged. An invalid value is an error and chooses nothing.
pub fn select_from_env() -> Result<Paths, String> {
    if let Some(paths) = ACTIVE.get() {
        return Ok(*paths);
    }
    let paths = Paths::from_env_value(std::env::var_os(PORTABLE_ENV).as_deref())?;
    Ok(*ACTIVE.get_or_init(|| paths))
}

/// The paths this process uses (chosen on first use when [`select_from_env`] has not run;
/// an invalid value then means the native paths, as the import has already reported it).
pub fn active() -> Paths {
    match ACTIVE.get() {
        Some(paths) => *paths,
        None => select_from_env().unwrap_or_else(|_| *ACTIVE.get_or_init(|| Paths::NATIVE)),
    }
}

/// Accept one connection: blocking and close-on-exec, as `socket.accept()` makes it.
pub fn accept(listener: RawFd) -> io::Result<(OwnedFd, PeerAddress)> {
    accept_with(active(), listener, false)
}

/// Accept one connection for a reactor: non-blocking and close-on-exec, and on systems
/// without `MSG_NOSIGNAL` marked not to raise `SIGPIPE`. The listener must be non-blocking
/// itself (`WouldBlock` once the backlog is empty).
pub fn accept_nonblocking(listener: RawFd) -> io::Result<(OwnedFd, PeerAddress)> {
    accept_with(active(), listener, true)
}

fn accept_with(
    paths: Paths,
    listener: RawFd,
    nonblocking: bool,
) -> io::Result<(OwnedFd, PeerAddress)> {
    let (fd, peer) = match paths {
        #[cfg(target_os = "linux")]
        Paths::Linux => linux::accept(listener, nonblocking)?,
        Paths::Portable => portable::accept(listener, nonblocking)?,
    };
    if nonblocking {
        suppress_sigpipe(&fd)?;
    }
    Ok((fd, peer))
}

/// Receive the datagrams waiting on `fd` (up to [`DATAGRAM_BATCH`], and no more than
/// `buffer` has slots of `slot_size` bytes for) without waiting, appending one [`Datagram`]
/// per datagram to `out`; returns how many. Fails with `WouldBlock` when none is waiting.
pub fn recv_batch(
    fd: RawFd,
    buffer: &mut [u8],
    slot_size: usize,
    out: &mut Vec<Datagram>,
) -> io::Result<usize> {
    recv_batch_with(active(), fd, buffer, slot_size, out)
}

fn recv_batch_with(
    paths: Paths,
    fd: RawFd,
    buffer: &mut [u8],
    slot_size: usize,
    out: &mut Vec<Datagram>,
) -> io::Result<usize> {
    let slots = (buffer.len() / slot_size.max(1)).min(DATAGRAM_BATCH);
    match paths {
        #[cfg(target_os = "linux")]
        Paths::Linux => linux::recv_batch(fd, buffer, slot_size, slots, out),
        Paths::Portable => portable::recv_batch(fd, buffer, slot_size, slots, out),
    }
}

/// The listening descriptor's registration on a mio [`Poll`], with the stdlib's
/// level-triggered meaning whatever the OS gives: while accepting is on, every wait reports
/// the listener as long as a client waits in its backlog; while it is paused (back-off, full
/// pool), no wait reports it at all.
///
/// The Linux path registers it level-triggered on mio's epoll descriptor. mio itself only
/// registers edge-triggered (kqueue's `EV_CLEAR`, epoll's `EPOLLET`), where clients still
/// queued after one is accepted would never be reported again; so the portable path re-arms
/// the registration before every wait ([`before_wait`](Self::before_wait)), which makes the
/// kernel report a still-readable listener again, and deregisters it while paused.
#[derive(Debug)]
pub struct Listener {
    paths: Paths,
    fd: RawFd,
    token: Token,
    listening: bool,
}

impl Listener {
    /// Register `fd` on `poll` under `token`, listening.
    pub fn watch(paths: Paths, poll: &Poll, fd: RawFd, token: Token) -> io::Result<Listener> {
        match paths {
            #[cfg(target_os = "linux")]
            Paths::Linux => linux::watch_level_triggered(poll, fd, token)?,
            Paths::Portable => portable::register(poll, fd, token)?,
        }
        Ok(Listener {
            paths,
            fd,
            token,
            listening: true,
        })
    }

    /// Whether readiness is asked for (accepting is not paused).
    pub fn is_listening(&self) -> bool {
        self.listening
    }

    /// Ask for readiness, or not. A no-op when nothing changes, so callers may say it before
    /// every wait.
    pub fn set_listening(&mut self, poll: &Poll, listening: bool) -> io::Result<()> {
        if self.listening == listening {
            return Ok(());
        }
        self.listening = listening;
        match (self.paths, listening) {
            #[cfg(target_os = "linux")]
            (Paths::Linux, _) => linux::set_level_triggered(poll, self.fd, self.token, listening),
            (Paths::Portable, true) => portable::register(poll, self.fd, self.token),
            (Paths::Portable, false) => portable::deregister(poll, self.fd),
        }
    }

    /// Call right before every wait: re-arms an edge-triggered registration so a listener
    /// with clients still queued is reported again. Nothing to do for a level-triggered one.
    pub fn before_wait(&mut self, poll: &Poll) -> io::Result<()> {
        match self.paths {
            #[cfg(target_os = "linux")]
            Paths::Linux => Ok(()),
            Paths::Portable if self.listening => portable::rearm(poll, self.fd, self.token),
            Paths::Portable => Ok(()),
        }
    }

    /// Remove the registration. The descriptor may already be closed (it then left the
    /// poll set by itself), so failures are ignored.
    pub fn unwatch(self, poll: &Poll) {
        let _ = match self.paths {
            #[cfg(target_os = "linux")]
            Paths::Linux => linux::unwatch(poll, self.fd),
            Paths::Portable if self.listening => portable::deregister(poll, self.fd),
            Paths::Portable => Ok(()),
        };
    }
}

/// The `send`/`sendto` flag that turns a would-be `SIGPIPE` into an `EPIPE` error, where the
/// OS has one; macOS has it only in recent SDKs, so there [`suppress_sigpipe`] marks the
/// socket itself instead (as Rust's standard library and mio do).
#[cfg(not(target_vendor = "apple"))]
pub const NO_SIGPIPE: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(target_vendor = "apple")]
pub const NO_SIGPIPE: libc::c_int = 0;

/// Mark a socket the engine writes to itself never to raise `SIGPIPE` (`SO_NOSIGPIPE`), on
/// systems where [`NO_SIGPIPE`] cannot say it per call; a no-op elsewhere.
pub fn suppress_sigpipe(fd: &OwnedFd) -> io::Result<()> {
    #[cfg(target_vendor = "apple")]
    {
        portable::set_int_option(fd, libc::SOL_SOCKET, libc::SO_NOSIGPIPE, 1)
    }
    #[cfg(not(target_vendor = "apple"))]
    {
        let _ = fd;
        Ok(())
    }
}

/// Ask the kernel to SIGKILL the calling process when its parent ends (Linux's
/// `PR_SET_PDEATHSIG`; strictly, when the parent *thread* that forked it ends). Returns false
/// where the OS has no such request: the caller must then watch its parent itself.
pub fn kill_with_parent() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: prctl(PR_SET_PDEATHSIG, signal) takes plain integers and only affects us.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == 0 }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        false
    }
}

/// The C function of `exit_guard.c`, where `pthread_exit()` unwinds the stack (glibc):
/// `PyObject_Call(callable, args, kwargs)` in a frame that parks the calling thread if the
/// interpreter ends it during the call, before the unwind reaches the Rust frames above
/// (see `finalize.rs`). `None` where `pthread_exit()` does not unwind (musl, macOS, the BSDs):
/// a plain call is safe there.
pub type ExitGuardedCall = unsafe extern "C" fn(
    callable: *mut std::ffi::c_void,
    args: *mut std::ffi::c_void,
    kwargs: *mut std::ffi::c_void,
) -> *mut std::ffi::c_void;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    /// rust/sys/exit_guard.c, compiled by build.rs for glibc targets only.
    fn socketserver_rs_guarded_call(
        callable: *mut std::ffi::c_void,
        args: *mut std::ffi::c_void,
        kwargs: *mut std::ffi::c_void,
    ) -> *mut std::ffi::c_void;
}

/// See [`ExitGuardedCall`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub const EXIT_GUARD: Option<ExitGuardedCall> = Some(socketserver_rs_guarded_call);
/// See [`ExitGuardedCall`].
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub const EXIT_GUARD: Option<ExitGuardedCall> = None;

/// Whether Unix socket addresses starting with a NUL byte are names in Linux's abstract
/// namespace (CPython returns them as `bytes`); elsewhere such an address is an empty path.
pub const ABSTRACT_UNIX_NAMES: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Whether a `fork()`ed child gets copies of mio's poll descriptors. Linux copies the epoll
/// and eventfd descriptors like any other. kqueue descriptors are not inherited (kqueue(2) on
/// macOS and the BSDs): in the child their numbers are free and may already name another file.
const POLL_INHERITED_BY_FORK: bool = cfg!(target_os = "linux");

/// A value holding mio poll descriptors (a `Poll`, a `Waker`), closed on drop only where
/// closing is right: in the process that made it, or in a `fork()`ed child where the OS
/// copied the descriptors (Linux). A child on a kqueue system leaves them alone, since
/// closing those numbers could close one of its own, unrelated files.
#[derive(Debug)]
pub struct ForkBound<T> {
    value: std::mem::ManuallyDrop<T>,
    owner_pid: u32,
}

impl<T> ForkBound<T> {
    pub fn new(value: T) -> ForkBound<T> {
        ForkBound {
            value: std::mem::ManuallyDrop::new(value),
            owner_pid: std::process::id(),
        }
    }

    /// Whether the calling process made this value.
    pub fn is_owned_by_this_process(&self) -> bool {
        self.owner_pid == std::process::id()
    }

    fn drop_with(&mut self, inherited_by_fork: bool) {
        if inherited_by_fork || self.is_owned_by_this_process() {
            // SAFETY: `drop_with` runs once, from `drop`; `value` is not used afterwards.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.value) };
        }
    }
}

impl<T> std::ops::Deref for ForkBound<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::DerefMut for ForkBound<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for ForkBound<T> {
    fn drop(&mut self) {
        self.drop_with(POLL_INHERITED_BY_FORK);
    }
}

#[cfg(test)]
mod tests;
