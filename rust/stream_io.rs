//! `send_all`: `socket.sendall()` for request handlers' `wfile`, without the GIL hand-off.
//!
//! `socket.sendall()` releases the GIL around every `send()`, even when the kernel takes the
//! whole buffer at once, as it nearly always does for a reply. With other handler threads
//! waiting for the GIL, each release costs a thread switch and the writer then queues to get
//! the GIL back. Here the first attempts are non-blocking sends made while holding the GIL;
//! only when the socket buffer is full does it release the GIL and wait for room, honouring
//! the socket's timeout exactly as `sendall()` does (one deadline for the whole call).

use std::os::fd::RawFd;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBlockingIOError, PyBufferError, PyTimeoutError};
use pyo3::intern;
use pyo3::prelude::*;

use crate::deadline::{Deadline, duration_from_secs};
use crate::errors::os_error;
use crate::finalize::detach;
use crate::net;

/// Send all of `data` (any C-contiguous bytes-like object) on `sock`; returns its length.
#[pyfunction]
pub fn send_all(sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = sock.py();
    let buffer = PyUntypedBuffer::get(data)?;
    if !buffer.is_c_contiguous() {
        return Err(PyBufferError::new_err("data must be a C-contiguous buffer"));
    }
    let len = buffer.len_bytes();
    // The buffer stays exported (so pinned) until `buffer` is dropped at the end.
    let base = buffer.buf_ptr() as usize;
    let mut sent = 0;
    let mut deadline: Option<Deadline> = None;
    while sent < len {
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        // SAFETY: `base..base+len` is the exported, pinned buffer and `sent < len`.
        let chunk = unsafe { std::slice::from_raw_parts((base + sent) as *const u8, len - sent) };
        match net::send_nonblocking(fd, chunk) {
            Ok(n) => sent += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => py.check_signals()?,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                let deadline = match deadline {
                    Some(deadline) => deadline,
                    None => {
                        let timeout: Option<f64> =
                            sock.call_method0(intern!(py, "gettimeout"))?.extract()?;
                        if timeout == Some(0.0) {
                            // A non-blocking socket: report it as `sendall()` would.
                            return Err(PyBlockingIOError::new_err((
                                libc::EAGAIN,
                                crate::errors::strerror(libc::EAGAIN),
                            )));
                        }
                        *deadline.insert(Deadline::after(duration_from_secs(timeout)))
                    }
                };
                let waited = detach(py, || net::wait_writable(fd, deadline.remaining()));
                match waited {
                    Ok(true) => {}
                    Ok(false) => return Err(PyTimeoutError::new_err("timed out")),
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {
                        py.check_signals()?
                    }
                    Err(err) => return Err(os_error(&err)),
                }
            }
            Err(err) => return Err(os_error(&err)),
        }
    }
    drop(buffer);
    Ok(len)
}
