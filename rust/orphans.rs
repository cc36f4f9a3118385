//! Children never outliving their supervisor: the kernel's parent-death signal where the OS
//! has one (`sys::kill_with_parent`), and the parent check (`heartbeat::orphaned`) everywhere.

use crate::heartbeat;
use crate::sys;

/// Arrange for the calling process (a freshly forked child of `parent`) to die with it:
/// SIGKILL from the kernel where the OS offers it (Linux); everywhere, the serving loops'
/// beat also checks the parent. Returns false when `parent` is already gone (the caller must
/// exit).
///
/// Linux sends the signal when the *thread* that forked the child ends, so the supervisor
/// forks from the thread that runs its loop and outlives every child.
pub fn die_with_parent(parent: i32) -> bool {
    // Without it, the heartbeat's parent check is all there is (documented in workers.md).
    let _ = sys::kill_with_parent();
    heartbeat::set_parent(parent);
    // The parent may have died between fork() and the line above: then no signal will come.
    !heartbeat::orphaned()
}
