//! `platform_paths()`: which implementation of the platform layer (`sys/`) this process
//! uses, and choosing it from `SOCKETSERVER_RS_PORTABLE` when the module is imported.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::sys;

/// Choose the platform paths from the environment, once per process (at import). A value
/// other than `1`, `0` or empty fails the import with a `ValueError` that says so.
pub fn select_from_env() -> PyResult<()> {
    sys::select_from_env()
        .map(drop)
        .map_err(PyValueError::new_err)
}

/// The platform paths in use: `"linux"` (`accept4`, `recvmmsg`, level-triggered listener on
/// the epoll descriptor) or `"portable"` (`accept` + `fcntl`, a `recvmsg` loop, the listener
/// re-armed through mio; always so on macOS and the BSDs, on Linux with
/// `SOCKETSERVER_RS_PORTABLE=1`).
#[pyfunction]
pub fn platform_paths() -> &'static str {
    sys::active().name()
}
