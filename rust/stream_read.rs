//! The native halves of request handlers' plain-socket files: `SocketReader`, the raw read
//! under `rfile`, without needless GIL hand-offs, and `SocketWriter`, the unbuffered
//! `wfile`'s `write()`. Both are called without a Python frame in between (the Python
//! halves in `_handlers.py` put their bound methods in the instance dict).
//!
//! The stdlib's `rfile` is a `BufferedReader` over `SocketIO`, whose `readinto()` calls
//! `socket.recv_into()`: that releases the GIL around every `recv()`, even when the data is
//! already there. Here, when the previous read filled the whole buffer (so more is likely
//! waiting: a client streaming faster than the handler reads), the read is first tried
//! without waiting while holding the GIL. Otherwise, and when that finds nothing, it releases
//! the GIL and waits and reads as `recv_into()` does: a blocking `recv()` on a blocking socket,
//! `poll()` then `recv()` under the socket's timeout (one deadline per call). Trying first
//! after a short read would cost a `recv()` that finds nothing on every request of a
//! request/response connection, where the next request is never there yet.
//! Interrupted waits run the signal handlers and wait again.

use std::os::fd::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyOSError, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;

use crate::deadline::{Deadline, duration_from_secs};
use crate::errors::os_error;
use crate::finalize::{call, detach};
use crate::net;

/// The native half of one `rfile`'s raw reader: the socket it reads, whether the next read
/// tries first with the GIL held, and `SocketIO`'s closed and timed-out states.
///
/// The Python half (`_SocketReader` in `_handlers.py`) puts this object's bound `readinto`
/// in its instance dict, so that `BufferedReader`'s refills call straight into Rust: no
/// Python frame per refill (`SocketIO.readinto()` runs one, with four attribute lookups and
/// two method calls before it reaches `recv_into()`).
#[pyclass(frozen, module = "socketserver_rs._core")]
#[derive(Debug)]
pub struct SocketReader {
    /// The socket; `None` once closed (`SocketIO.close()` drops its reference too). A mutex
    /// because the class is frozen (shared between threads); it is never contended in
    /// practice, as one handler thread reads its `rfile`.
    sock: Mutex<Option<Py<PyAny>>>,
    eager: AtomicBool,
    timed_out: AtomicBool,
}

#[pymethods]
impl SocketReader {
    #[new]
    fn new(sock: Py<PyAny>) -> Self {
        Self {
            sock: Mutex::new(Some(sock)),
            eager: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
        }
    }

    /// Read at most `len(b)` bytes into `b` (a writable, C-contiguous bytes-like
    /// object); returns the count (0 at end of stream), or `None` when the socket is
    /// non-blocking and has nothing to read. Raises what `SocketIO.readinto()` raises: on a
    /// closed reader, after a timeout, and the socket's own errors.
    fn readinto(&self, py: Python<'_>, b: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
        let sock = match &*self.sock.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(sock) => sock.clone_ref(py).into_bound(py),
            None => return Err(PyValueError::new_err("I/O operation on closed file.")),
        };
        if self.timed_out.load(Ordering::Relaxed) {
            return Err(PyOSError::new_err("cannot read from timed out object"));
        }
        let exported = PyUntypedBuffer::get(b)?;
        if exported.readonly() {
            return Err(PyTypeError::new_err(
                "recv_into() argument 'buffer' must be read-write bytes-like object",
            ));
        }
        if !exported.is_c_contiguous() {
            return Err(PyBufferError::new_err("buffer must be C-contiguous"));
        }
        let (base, len) = (exported.buf_ptr() as usize, exported.len_bytes());
        // SAFETY: `base..base+len` is the exported, pinned, writable buffer; it stays exported
        // until `exported` is dropped after the read, and bytearrays cannot resize meanwhile.
        let buf = || unsafe { std::slice::from_raw_parts_mut(base as *mut u8, len) };
        let got = read(&sock, &buf, self.eager.load(Ordering::Relaxed));
        match &got {
            Ok(Some(n)) => self.eager.store(*n > 0 && *n == len, Ordering::Relaxed),
            Err(err) if err.is_instance_of::<PyTimeoutError>(py) => {
                self.timed_out.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        drop(exported);
        got
    }

    /// Forget the socket: later reads raise `ValueError`, as on a closed `SocketIO`.
    fn close(&self) {
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(sock);
    }
}

/// The native `write()` of a handler's unbuffered `wfile`: `sock.sendall(b)`, then the
/// length of `b`, as the stdlib's `_SocketWriter.write()` does, without its Python frame
/// (and the `memoryview` it makes to count the bytes). `sendall()` itself, with its
/// timeout, signal and GIL handling, is the socket's own.
#[pyclass(frozen, module = "socketserver_rs._core")]
#[derive(Debug)]
pub struct SocketWriter {
    sendall: Py<PyAny>,
}

#[pymethods]
impl SocketWriter {
    #[new]
    fn new(sock: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self {
            sendall: sock.getattr(intern!(sock.py(), "sendall"))?.unbind(),
        })
    }

    /// Send all of `b` (a bytes-like object); returns its length in bytes.
    fn write(&self, py: Python<'_>, b: &Bound<'_, PyAny>) -> PyResult<usize> {
        // Through the exit guard: `sendall()` releases the GIL around each `send()`, and a
        // daemon thread taking it back while the interpreter exits is ended there
        // (finalize.rs), which must not unwind through this frame.
        call(self.sendall.bind(py), (b,))?;
        Ok(PyUntypedBuffer::get(b)?.len_bytes())
    }
}

fn read<'a>(
    sock: &Bound<'_, PyAny>,
    buf: &(dyn Fn() -> &'a mut [u8] + Sync),
    eager: bool,
) -> PyResult<Option<usize>> {
    let py = sock.py();
    let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    let timeout: Option<f64> = sock.call_method0(intern!(py, "gettimeout"))?.extract()?;
    if eager || timeout == Some(0.0) {
        match net::recv_nonblocking(fd, buf()) {
            Ok(n) => return Ok(Some(n)),
            Err(err) if is_would_block(&err) || is_interrupted(&err) => {}
            Err(err) => return Err(os_error(&err)),
        }
        if timeout == Some(0.0) {
            return Ok(None); // non-blocking: SocketIO.readinto() returns None too
        }
    }
    // One deadline for the call, as `recv_into()` has; `None` blocks in `recv()` itself.
    let deadline = timeout.map(|t| Deadline::after(duration_from_secs(Some(t))));
    loop {
        let got = detach(py, || match deadline {
            None => loop {
                match net::recv_blocking(fd, buf()) {
                    // An O_NONBLOCK descriptor under a blocking socket: wait, then read.
                    Err(err) if is_would_block(&err) => {
                        net::wait_readable(fd, None)?;
                    }
                    other => break other.map(Some),
                }
            },
            Some(deadline) => match net::wait_readable(fd, deadline.remaining())? {
                false => Ok(None),
                true => net::recv_nonblocking(fd, buf()).map(Some),
            },
        });
        match got {
            Ok(Some(n)) => return Ok(Some(n)),
            Ok(None) => return Err(PyTimeoutError::new_err("timed out")),
            // Interrupted: run the signal handlers, then wait again. Would block: readable
            // but taken by another reader first.
            Err(err) if is_interrupted(&err) => py.check_signals()?,
            Err(err) if is_would_block(&err) => {}
            Err(err) => return Err(os_error(&err)),
        }
    }
}

fn is_would_block(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::WouldBlock
}

fn is_interrupted(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::Interrupted
}
