//! Turning Rust `io::Error`s into the Python exceptions the stdlib would raise.
//!
//! PyO3's stock conversion loses `errno`; Python code around a socket server branches on
//! `OSError.errno` and on subclasses such as `ConnectionResetError`, so we build the exception
//! through `OSError(errno, strerror)`, whose constructor picks the subclass itself.

use std::io;

use pyo3::PyErr;
use pyo3::exceptions::PyOSError;

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

#[cfg(test)]
mod tests {
    use super::strerror;

    #[test]
    fn strerror_has_no_rust_suffix() {
        let text = strerror(libc::ECONNRESET);
        assert_eq!(text, "Connection reset by peer");
    }
}
