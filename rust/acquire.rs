//! The fast path: taking a request off the server socket in Rust.
//!
//! When no hook that acquires a request is overridden and `server.socket` is exactly a
//! `socket.socket`, the engine accepts (stream) or receives (datagram) itself, without the
//! GIL, and hands Python exactly what `get_request()` would have returned:
//! `(socket.socket, address)` for streams, `((data, server.socket), address)` for datagrams.
//! The conversion to Python objects is separate (`Converter`), so that a pooled server's
//! worker thread can do it instead of the serving thread.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyTuple};

use crate::address::peer_to_python;
use crate::net::{self, PeerAddress};
use crate::sys;

static SOCKET_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What the GIL-free part took off the socket.
#[derive(Debug)]
pub enum Raw {
    Connection(OwnedFd, PeerAddress),
    Datagram(Vec<u8>, PeerAddress),
}

/// The GIL-free half: a descriptor and a reusable buffer, nothing from Python.
#[derive(Debug)]
pub struct RawAcquirer {
    fd: RawFd,
    /// Set TCP_NODELAY on accepted connections (the server's `tcp_nodelay`, TCP only).
    nodelay: bool,
    /// `None` for a stream socket; the receive buffer (`max_packet_size` long) for datagrams.
    datagram_buffer: Option<Vec<u8>>,
}

impl RawAcquirer {
    /// A receiver of datagram socket `fd` with a `size`-byte buffer.
    pub fn datagram(fd: RawFd, size: usize) -> RawAcquirer {
        RawAcquirer {
            fd,
            nodelay: false,
            datagram_buffer: Some(vec![0; size]),
        }
    }

    /// Another receiver of the same datagram socket, with a buffer of its own (`None` for a
    /// stream socket): for pool workers that receive the next datagram themselves.
    pub fn datagram_twin(&self) -> Option<RawAcquirer> {
        let buffer = self.datagram_buffer.as_ref()?;
        Some(RawAcquirer::datagram(self.fd, buffer.len()))
    }

    /// Whether this receives datagrams (rather than accepting connections).
    pub fn is_datagram(&self) -> bool {
        self.datagram_buffer.is_some()
    }

    /// Make the datagram buffer `size` long (a changed `max_packet_size`); nothing for a
    /// stream socket, and no allocation when the size is unchanged.
    pub fn set_packet_size(&mut self, size: usize) {
        if let Some(buffer) = &mut self.datagram_buffer
            && buffer.len() != size
        {
            buffer.resize(size, 0);
        }
    }

    pub fn acquire(&mut self) -> std::io::Result<Raw> {
        match &mut self.datagram_buffer {
            None => {
                let (fd, peer) = sys::accept(self.fd)?;
                if self.nodelay {
                    // Best effort, as in the Python path: a peer that already reset the
                    // connection is the handler's to discover.
                    let _ = net::set_nodelay(&fd);
                }
                Ok(Raw::Connection(fd, peer))
            }
            Some(buffer) => {
                let (n, peer) = net::recv_from(self.fd, buffer)?;
                Ok(Raw::Datagram(buffer[..n].to_vec(), peer))
            }
        }
    }
}

/// The Python half: turns a `Raw` into `get_request()`'s return value.
#[derive(Debug)]
pub struct Converter {
    /// `(family, type, proto)` of the listening socket, for `socket.socket(...)`.
    socket_args: (i32, i32, i32),
    server_socket: Py<PyAny>,
}

impl Converter {
    /// `(request, client_address)` as `get_request()` returns them.
    pub fn to_python<'py>(&self, py: Python<'py>, raw: Raw) -> PyResult<Bound<'py, PyTuple>> {
        match raw {
            Raw::Connection(fd, peer) => {
                let class = SOCKET_CLASS.get_or_try_init(py, || {
                    PyResult::Ok(py.import("socket")?.getattr("socket")?.unbind())
                })?;
                let (family, kind, proto) = self.socket_args;
                // On failure `fd` is dropped here and closed: nothing leaks.
                // Guarded: `socket.socket.__init__` is Python code, where a daemon worker can
                // be ended by an exiting interpreter (see finalize.rs).
                let request =
                    crate::finalize::call(class.bind(py), (family, kind, proto, fd.as_raw_fd()))?;
                let _owned_by_python_now = fd.into_raw_fd();
                PyTuple::new(py, [request, peer_to_python(py, &peer)?])
            }
            Raw::Datagram(data, peer) => {
                let data = PyBytes::new(py, &data);
                let request =
                    PyTuple::new(py, [data.into_any(), self.server_socket.bind(py).clone()])?;
                PyTuple::new(py, [request.into_any(), peer_to_python(py, &peer)?])
            }
        }
    }
}

/// Both halves, for one serving call.
#[derive(Debug)]
pub struct FastPath {
    pub raw: RawAcquirer,
    pub converter: Arc<Converter>,
}

impl FastPath {
    /// Read the server socket's shape. `None` when the fast path does not apply (an address
    /// family it does not decode, or a socket type it does not serve).
    pub fn for_server(server: &Bound<'_, PyAny>) -> PyResult<Option<FastPath>> {
        let socket = server.getattr(pyo3::intern!(server.py(), "socket"))?;
        let family: i32 = socket.getattr("family")?.extract()?;
        let kind: i32 = socket.getattr("type")?.extract()?;
        let proto: i32 = socket.getattr("proto")?.extract()?;
        if !matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX)
            || !matches!(kind, libc::SOCK_STREAM | libc::SOCK_DGRAM)
        {
            return Ok(None);
        }
        let fd: RawFd = socket.call_method0("fileno")?.extract()?;
        let raw = if kind == libc::SOCK_DGRAM {
            RawAcquirer::datagram(fd, packet_size(server)?)
        } else {
            RawAcquirer {
                fd,
                nodelay: family != libc::AF_UNIX && server.getattr("tcp_nodelay")?.is_truthy()?,
                datagram_buffer: None,
            }
        };
        Ok(Some(FastPath {
            raw,
            converter: Arc::new(Converter {
                socket_args: (family, kind, proto),
                server_socket: socket.unbind(),
            }),
        }))
    }

    /// Size the datagram buffer to the server's `max_packet_size` now: called right before
    /// each receive, where the stdlib's `get_request()` reads it. One attribute lookup per
    /// datagram, as in the stdlib; nothing for a stream socket.
    pub fn follow_packet_size(&mut self, server: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.raw.datagram_buffer.is_some() {
            self.raw.set_packet_size(packet_size(server)?);
        }
        Ok(())
    }
}

/// `server.max_packet_size`, looked up as `get_request()` looks it up (instance, then class).
pub fn packet_size(server: &Bound<'_, PyAny>) -> PyResult<usize> {
    server
        .getattr(pyo3::intern!(server.py(), "max_packet_size"))?
        .extract()
}
