//! Turning Rust `io::Error`s into the Python exceptions the stdlib would raise, and
//! reporting exceptions to Python hooks as if from inside an `except` block.
//!
//! PyO3's stock conversion loses `errno`; Python code around a socket server branches on
//! `OSError.errno` and on subclasses such as `ConnectionResetError`, so we build the exception
//! through `OSError(errno, strerror)`, whose constructor picks the subclass itself.

use std::io;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::{PyErr, ffi};

pyo3::create_exception!(
    socketserver_rs._core,
    TLSConfigError,
    PyValueError,
    "A TLS configuration that cannot be used: the message names the attribute, the file and \
     the problem."
);

/// The C library's message for `errno`, as `os.strerror` gives it.
pub fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    // std appends " (os error N)"; Python's strerror does not.
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// An `OSError` (or its errno-specific subclass) carrying `err`'s errno and message.
pub fn os_error(err: &io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, strerror(errno))),
        None => PyOSError::new_err(err.to_string()),
    }
}

/// Run `f` with `err` as the exception being handled, as inside an `except` block, so that
/// `sys.exception()` and `traceback.print_exc()` in a `handle_error` hook see it.
pub fn while_handling<T>(
    py: Python<'_>,
    err: &PyErr,
    f: impl FnOnce() -> PyResult<T>,
) -> PyResult<T> {
    let value = err.value(py);
    // On 3.11 a fetched traceback is kept beside the exception, not on it: attach it so
    // that `traceback.print_exc()` shows where the exception came from.
    if let Some(traceback) = err.traceback(py) {
        if value.getattr("__traceback__").is_ok_and(|tb| tb.is_none()) {
            let _ = value.setattr("__traceback__", traceback);
        }
    }
    // SAFETY: we hold the GIL; GetHandledException returns a new (possibly null) reference
    // that we hand back to SetHandledException (which does not steal) and then release.
    let previous = unsafe {
        let previous = ffi::PyErr_GetHandledException();
        ffi::PyErr_SetHandledException(value.as_ptr());
        previous
    };
    let result = f();
    // SAFETY: as above; `previous` is ours to release after restoring it.
    unsafe {
        ffi::PyErr_SetHandledException(previous);
        ffi::Py_XDECREF(previous);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::strerror;

    #[test]
    fn strerror_has_no_rust_suffix() {
        let text = strerror(libc::ECONNRESET);
        assert_eq!(text, "Connection reset by peer");
    }
}
