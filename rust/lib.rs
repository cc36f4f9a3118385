//! `socketserver_rs._core`: the Rust engine behind `socketserver_rs`.
//!
//! This file is only the module list and the inventory of what Python sees; each other file
//! owns one concept and says so in its first line.

mod acquire;
mod address;
mod connections;
mod datagram_loop;
mod deadline;
mod engine;
mod errors;
mod finalize;
// Public (but not part of any API) so that fuzz/ can drive the framer directly.
#[doc(hidden)]
pub mod framing;
mod handshakes;
mod heartbeat;
mod net;
mod orphans;
mod parking;
mod platform_info;
mod poller;
mod pool;
mod reactor;
mod shutdown;
mod signals;
mod stats;
mod stream_loop;
mod stream_read;
mod supervisor;
mod sys;
mod tls;
mod tls_stream;
mod work_queue;
mod worker_receive;

use pyo3::prelude::pymodule;

#[pymodule]
mod _core {
    #[pymodule_export]
    use crate::engine::Engine;
    #[pymodule_export]
    use crate::errors::TLSConfigError;
    #[pymodule_export]
    use crate::platform_info::platform_paths;
    #[pymodule_export]
    use crate::pool::WorkerPool;
    #[pymodule_export]
    use crate::reactor::{Connection, Reactor};
    #[pymodule_export]
    use crate::stream_read::{SocketReader, SocketWriter};
    #[pymodule_export]
    use crate::supervisor::Supervisor;

    use pyo3::prelude::*;

    /// Read `SOCKETSERVER_RS_PORTABLE` once, as the module is imported, and make threads
    /// coming back from Rust waits stay out of an exiting interpreter (finalize.rs).
    #[pymodule_init]
    fn init(module: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::platform_info::select_from_env()?;
        crate::finalize::register_exit_hook(module)
    }
}
