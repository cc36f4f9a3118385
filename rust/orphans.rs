//! Children never outliving their supervisor: the parent-death signal where the OS has one,
//! the parent check (`heartbeat::orphaned`) everywhere.
//!
//! The one OS-specific call of the prefork layer lives here behind a portable function, so
//! it can move into the platform layer as it is.

use crate::heartbeat;

/// Arrange for the calling process (a freshly forked child of `parent`) to die with it:
/// `PR_SET_PDEATHSIG` with SIGKILL on Linux; elsewhere the serving loops' beat checks the
/// parent instead. Returns false when `parent` is already gone (the caller must exit).
///
/// Linux sends the signal when the *thread* that forked the child ends, so the supervisor
/// forks from the thread that runs its loop and outlives every child.
pub fn die_with_parent(parent: i32) -> bool {
    set_death_signal();
    heartbeat::set_parent(parent);
    // The parent may have died between fork() and the line above: then no signal will come.
    !heartbeat::orphaned()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_death_signal() {
    // SAFETY: prctl(PR_SET_PDEATHSIG, signal) takes plain integers and only affects us.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_death_signal() {}
