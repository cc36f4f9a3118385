//! `SocketReader`: the raw read under request handlers' `rfile`, without needless GIL hand-offs.
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
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyTimeoutError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;

use crate::deadline::{Deadline, duration_from_secs};
use crate::errors::os_error;
use crate::finalize::detach;
use crate::net;

/// The reading state of one `rfile`: whether the next read tries first with the GIL held.
#[pyclass(frozen, module = "socketserver_rs._core")]
#[derive(Debug, Default)]
pub struct SocketReader {
    eager: AtomicBool,
}

#[pymethods]
impl SocketReader {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Read at most `len(buffer)` bytes from `sock` into `buffer` (a writable, C-contiguous
    /// bytes-like object); returns the count (0 at end of stream), or `None` when `sock` is
    /// non-blocking and has nothing to read (what `SocketIO.readinto()` returns then).
    fn readinto(
        &self,
        sock: &Bound<'_, PyAny>,
        buffer: &Bound<'_, PyAny>,
    ) -> PyResult<Option<usize>> {
        let exported = PyUntypedBuffer::get(buffer)?;
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
        let got = read(sock, &buf, self.eager.load(Ordering::Relaxed));
        if let Ok(Some(n)) = got {
            self.eager.store(n > 0 && n == len, Ordering::Relaxed);
        }
        drop(exported);
        got
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
