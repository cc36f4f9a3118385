//! Leaving the interpreter safely: `detach`, the one way this crate releases the GIL, and
//! `call`, the engine's way into Python code, both safe for a daemon thread that is still
//! inside them when the interpreter exits.
//!
//! A daemon thread may still be in a Rust wait (the engine's poll, a pool worker's queue wait,
//! a reactor's poll, an `rfile` read waiting for data), or in Python code the engine called (a
//! hook, a handler), when the main thread finalizes the interpreter. CPython before 3.14 ends
//! a thread that takes the GIL at that point with `pthread_exit()`, and glibc's version of it
//! unwinds the stack, running through our Rust frames: undefined behaviour, and a segfault at
//! exit in the zig-linked manylinux wheels (their Rust frames meet glibc's unwinder with
//! zig's own). Two guards, one per way back into the interpreter:
//!
//! - **Waits.** A thread coming back from a wait asks the exit gate first; once the
//!   interpreter is exiting, it parks for ever instead of taking the GIL (the process is about
//!   to end; a parked thread holds no lock and no GIL, like a daemon thread blocked in a
//!   system call). The gate closes from an `atexit` hook, which CPython runs after it has
//!   joined the non-daemon threads and before it starts finalizing: a non-daemon thread (a
//!   pool worker draining its queue, a server stopped by another thread) may still wait and
//!   come back while the interpreter waits for it, so closing earlier
//!   (`threading._register_atexit`) would hang those joins. The thread running the hook is the
//!   one finalizing the interpreter; it alone may still wait and come back (a later `atexit`
//!   callback calling `shutdown()`). A thread that passed the gate just before it closed is
//!   counted, and the hook waits, with the GIL released, until every counted thread holds the
//!   GIL again, so none is still on its way back when finalization starts. `shutdown()`
//!   called once the gate is closed asks the loop to stop and returns without waiting (see
//!   `exiting`).
//! - **Calls into Python.** CPython may end the thread anywhere in the Python code the engine
//!   called. On glibc, `call` goes through `sys::EXIT_GUARD` (`sys/exit_guard.c`), a C
//!   frame that catches that unwind (`pthread_cleanup_push`) and parks the thread there,
//!   before the unwind reaches a Rust frame. musl's and macOS's `pthread_exit()` do not unwind, so `call` is a plain call there.
//!   Calls that run no Python bytecode (`fileno()`, `gettimeout()`) stay plain; anything that
//!   does, `socket.socket(...)` and `close()` from socket.py included, goes through `call`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use pyo3::BoundObject;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::sys;

/// The interpreter's gate: closed by the `atexit` hook that `register_exit_hook` installs.
static GATE: ExitGate = ExitGate::new();

/// How long the exit hook waits for threads already on their way back into the interpreter.
/// They need only the GIL, which the hook releases while it waits; this bounds a pathological
/// case (a thread that never gets the GIL) so that exit itself never hangs.
const REATTACH_GRACE: Duration = Duration::from_secs(2);

/// Run `f` with the GIL released, as `py.detach(f)` does, then take the GIL back unless the
/// interpreter has started exiting meanwhile: then the calling thread parks for ever.
/// Every wait in this crate goes through here (clippy's `disallowed-methods` in
/// `clippy.toml` keeps `Python::detach` out of the other files).
pub fn detach<T, F>(py: Python<'_>, f: F) -> T
where
    // `Send` is what pyo3's `Ungil` means on stable Rust, and what a closure over `f` can prove.
    F: Send + FnOnce() -> T,
    T: Send,
{
    #[allow(clippy::disallowed_methods)] // the one call allowed: this wraps it
    let out = py.detach(|| {
        let out = f();
        if !GATE.enter() {
            park_forever();
        }
        out
    });
    GATE.entered();
    out
}

/// Whether the interpreter has started exiting (the `atexit` hook has run): a thread that
/// waits for another thread to stop must not wait then, as that one may be parked for ever.
pub fn exiting() -> bool {
    GATE.closed.load(Ordering::SeqCst)
}

/// Call `callable(*args)`, guarded (on glibc) against the thread being ended inside the call.
pub fn call<'py, A>(callable: &Bound<'py, PyAny>, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: IntoPyObject<'py, Target = PyTuple>,
{
    let args = args
        .into_pyobject(callable.py())
        .map_err(Into::into)?
        .into_bound();
    guarded_call(callable, &args)
}

/// Call `object.name(*args)` as `call` does.
pub fn call_method<'py, A>(
    object: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: A,
) -> PyResult<Bound<'py, PyAny>>
where
    A: IntoPyObject<'py, Target = PyTuple>,
{
    call(&object.getattr(name)?, args)
}

/// `callable(*args)`, through the platform's exit guard where it has one.
fn guarded_call<'py>(
    callable: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let Some(guarded) = sys::EXIT_GUARD else {
        return callable.call1(args);
    };
    // SAFETY: we hold the GIL and live references to `callable` and `args` (a tuple); the
    // guard calls `PyObject_Call`, which returns a new reference, or NULL with an exception set.
    unsafe {
        let result = guarded(
            callable.as_ptr().cast(),
            args.as_ptr().cast(),
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(callable.py(), result.cast())
    }
}

/// Register the `atexit` hook that closes the gate; called once, when the module is imported.
pub fn register_exit_hook(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(interpreter_exiting, module)?;
    module
        .py()
        .import("atexit")?
        .call_method1("register", (hook,))?;
    Ok(())
}

/// The `atexit` hook: close the gate, then let the threads that passed it just before get
/// the GIL back while the interpreter is still whole.
#[pyfunction]
fn interpreter_exiting(py: Python<'_>) {
    GATE.close();
    #[allow(clippy::disallowed_methods)] // waits only for the GIL's other holders; no gate
    py.detach(|| GATE.wait_until_entered(REATTACH_GRACE));
}

fn park_forever() -> ! {
    loop {
        thread::park();
    }
}

/// Whether threads may come back from a wait, and how many are on their way back.
#[derive(Debug)]
struct ExitGate {
    closed: AtomicBool,
    /// The thread that closed the gate (the one finalizing the interpreter).
    closer: OnceLock<ThreadId>,
    /// Threads that passed the gate and do not hold the GIL yet.
    entering: AtomicUsize,
}

impl ExitGate {
    const fn new() -> Self {
        Self {
            closed: AtomicBool::new(false),
            closer: OnceLock::new(),
            entering: AtomicUsize::new(0),
        }
    }

    /// Ask to take the GIL back. True: go on, and call `entered()` once attached. False: the
    /// interpreter is exiting and this thread must never attach again.
    fn enter(&self) -> bool {
        // Count first, then look (both SeqCst): either `close` sees the count, or this sees
        // the gate closed; no thread slips through unseen.
        self.entering.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) && self.closer.get() != Some(&thread::current().id())
        {
            self.entering.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The thread that passed `enter()` holds the GIL again.
    fn entered(&self) {
        self.entering.fetch_sub(1, Ordering::SeqCst);
    }

    /// Close the gate for every thread but the caller.
    fn close(&self) {
        let _ = self.closer.set(thread::current().id());
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Wait until every thread that passed the gate has called `entered()`, or `limit`
    /// has passed; true if they all have.
    fn wait_until_entered(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.entering.load(Ordering::SeqCst) != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;

    #[test]
    fn an_open_gate_lets_every_thread_back() {
        let gate = ExitGate::new();
        assert!(gate.enter());
        gate.entered();
        assert!(gate.wait_until_entered(Duration::ZERO));
    }

    #[test]
    fn a_closed_gate_stops_other_threads_but_not_the_closer() {
        let gate = Arc::new(ExitGate::new());
        gate.close();
        let other = Arc::clone(&gate);
        assert!(!thread::spawn(move || other.enter()).join().unwrap());
        // The refused thread is not counted as entering.
        assert!(gate.wait_until_entered(Duration::ZERO));
        // The closing thread (the one finalizing) may still wait and come back.
        assert!(gate.enter());
        gate.entered();
    }

    #[test]
    fn closing_waits_for_threads_that_passed_just_before() {
        let gate = Arc::new(ExitGate::new());
        let (passed, go_on) = (mpsc::channel(), mpsc::channel::<()>());
        let thread_gate = Arc::clone(&gate);
        let thread = thread::spawn(move || {
            assert!(thread_gate.enter());
            passed.0.send(()).unwrap();
            go_on.1.recv().unwrap();
            thread_gate.entered();
        });
        passed.1.recv().unwrap();
        gate.close();
        assert!(!gate.wait_until_entered(Duration::from_millis(20)));
        go_on.0.send(()).unwrap();
        assert!(gate.wait_until_entered(Duration::from_secs(10)));
        thread.join().unwrap();
    }
}
