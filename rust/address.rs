//! Peer addresses as Python objects, in exactly the shapes CPython's `socket` module gives.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::net::PeerAddress;

pub fn peer_to_python<'py>(py: Python<'py>, peer: &PeerAddress) -> PyResult<Bound<'py, PyAny>> {
    Ok(match peer {
        PeerAddress::Inet { host, port } => (host.as_str(), *port).into_pyobject(py)?.into_any(),
        PeerAddress::Inet6 {
            host,
            port,
            flowinfo,
            scope_id,
        } => (host.as_str(), *port, *flowinfo, *scope_id)
            .into_pyobject(py)?
            .into_any(),
        PeerAddress::UnixPath(path) if path.is_empty() => PyString::new(py, "").into_any(),
        // Decoded with the filesystem encoding and surrogateescape, as CPython does.
        PeerAddress::UnixPath(path) => OsStr::from_bytes(path).into_pyobject(py)?.into_any(),
        PeerAddress::UnixAbstract(name) => PyBytes::new(py, name).into_any(),
        PeerAddress::Absent | PeerAddress::Unsupported(_) => py.None().into_bound(py),
    })
}
