//! Worker liveness: a board of heartbeat timestamps shared between a prefork parent and its
//! children, and the beat the serving loops of a child write to it.
//!
//! The board is one anonymous `MAP_SHARED` mapping made by the parent before it forks, so
//! every child writes to memory the parent reads, with no descriptor and no syscall. A child
//! attaches itself to one slot; from then on every wait of every serving loop in that process
//! (`Poller::wait`) writes the monotonic clock to the slot and is capped at the beat interval,
//! so a child that serves nothing (even with `poll_interval=None`) still beats, and a child
//! whose loop is blocked (a handler that never returns on the serving thread) stops beating.
//! The same beat notices when the parent that forked the child is gone (see `orphaned`).
//! This file needs no Python and is tested with `cargo test`.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Milliseconds on the system-wide monotonic clock (the same in every process), never 0.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists on POSIX systems.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000 + 1
}

/// Heartbeat slots in shared memory: one `u64` timestamp (ms, 0 = never beat) per slot.
#[derive(Debug)]
pub struct Board {
    base: NonNull<AtomicU64>,
    slots: usize,
}

// SAFETY: the mapping is only accessed through atomics and lives until the board is dropped.
unsafe impl Send for Board {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for Board {}

impl Board {
    /// Map a board of `slots` slots, shared with every process forked afterwards.
    pub fn new(slots: usize) -> io::Result<Board> {
        if slots == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a heartbeat board needs at least one slot",
            ));
        }
        let len = slots * std::mem::size_of::<AtomicU64>();
        // SAFETY: an anonymous shared mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Anonymous mappings are zero-filled: every slot starts as "never beat".
        let base = NonNull::new(ptr.cast::<AtomicU64>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Board { base, slots })
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    fn slot(&self, index: usize) -> Option<&AtomicU64> {
        // SAFETY: in bounds (checked), and the mapping outlives `&self`.
        (index < self.slots).then(|| unsafe { &*self.base.as_ptr().add(index) })
    }

    /// The last beat in `index` (ms on `now_ms`'s clock; 0: never).
    pub fn last(&self, index: usize) -> Option<u64> {
        self.slot(index).map(|s| s.load(Ordering::Relaxed))
    }

    /// Set the slot's time (a new child starts with a full `worker_timeout`).
    pub fn set(&self, index: usize, when: u64) -> bool {
        self.slot(index)
            .map(|s| s.store(when, Ordering::Relaxed))
            .is_some()
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, with its length; nothing refers to it any more
        // (an attached process keeps its own `Arc` in `ATTACHED`).
        unsafe {
            libc::munmap(
                self.base.as_ptr().cast(),
                self.slots * std::mem::size_of::<AtomicU64>(),
            )
        };
    }
}

/// The slot this process beats into (null: not a supervised child).
static BEAT_SLOT: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// The longest a serving loop may wait between beats (ms).
static BEAT_EVERY_MS: AtomicU64 = AtomicU64::new(0);
/// The pid of the parent this child must not outlive (0: none).
static PARENT: AtomicI32 = AtomicI32::new(0);
/// When the beat next looks at the parent (ms on `now_ms`'s clock): `getppid` is a real
/// system call, so at most once a second.
static NEXT_PARENT_CHECK: AtomicU64 = AtomicU64::new(0);
/// How often the beat looks at the parent.
const PARENT_CHECK_EVERY_MS: u64 = 1000;
/// Keeps the attached board mapped for as long as the process beats into it.
static ATTACHED: Mutex<Option<Arc<Board>>> = Mutex::new(None);

/// Make every serving loop of this process beat into `board[index]`, waiting at most
/// `every` between beats.
pub fn attach(board: &Arc<Board>, index: usize, every: Duration) -> io::Result<()> {
    let slot = board.slot(index).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "heartbeat slot out of range")
    })?;
    *ATTACHED.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(board));
    let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
    BEAT_EVERY_MS.store(every_ms, Ordering::Relaxed);
    slot.store(now_ms(), Ordering::Relaxed);
    BEAT_SLOT.store(std::ptr::from_ref(slot).cast_mut(), Ordering::Release);
    Ok(())
}

/// Remember the parent this process must not outlive (checked by `orphaned`).
pub fn set_parent(pid: i32) {
    PARENT.store(pid, Ordering::Relaxed);
}

/// Whether this process was given a parent and that parent is gone (re-parented).
pub fn orphaned() -> bool {
    let parent = PARENT.load(Ordering::Relaxed);
    // SAFETY: getppid has no preconditions and cannot fail.
    parent != 0 && unsafe { libc::getppid() } != parent
}

/// Called by every serving loop around each wait: record that the loop is alive.
pub fn beat() {
    let slot = BEAT_SLOT.load(Ordering::Acquire);
    if slot.is_null() {
        return;
    }
    let now = now_ms();
    if now >= NEXT_PARENT_CHECK.load(Ordering::Relaxed) {
        NEXT_PARENT_CHECK.store(now + PARENT_CHECK_EVERY_MS, Ordering::Relaxed);
        if orphaned() {
            // The fallback for systems without a parent-death signal: a child must never
            // serve on after its supervisor is gone. Nothing of the parent's to clean up.
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(1) };
        }
    }
    // SAFETY: `slot` points into the board kept mapped by `ATTACHED`.
    unsafe { &*slot }.store(now, Ordering::Relaxed);
}

/// `timeout`, shortened so that the loop beats again in time (unchanged when not attached).
pub fn cap(timeout: Option<Duration>) -> Option<Duration> {
    if BEAT_SLOT.load(Ordering::Relaxed).is_null() {
        return timeout;
    }
    let every = Duration::from_millis(BEAT_EVERY_MS.load(Ordering::Relaxed));
    Some(timeout.map_or(every, |t| t.min(every)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_board_has_never_beaten() {
        let board = Board::new(4).unwrap();
        assert_eq!(board.last(3), Some(0));
        assert_eq!(board.last(4), None);
    }

    #[test]
    fn the_board_is_shared_with_a_forked_child() {
        let board = Board::new(2).unwrap();
        // SAFETY: the child only stores to the mapping and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            board.set(1, 42);
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(board.last(1), Some(42));
    }

    #[test]
    fn clock_is_monotonic_and_never_zero() {
        let a = now_ms();
        let b = now_ms();
        assert!(a > 0 && b >= a);
    }
}
