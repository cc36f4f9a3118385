//! `WorkerPool`: the Python face of `WorkQueue`, carrying `(request, client_address)` pairs
//! from the serving loop to pooled `threading.Thread` workers. Items are either ready Python
//! objects or, when the engine serves a pool without calling Python per request, connections
//! and datagrams straight from the socket, which the worker turns into Python objects.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::acquire::{Converter, Raw};
use crate::deadline::duration_from_secs;
use crate::finalize::detach;
use crate::work_queue::{Submitted, WorkQueue};

/// One unit of work for a worker.
#[derive(Debug)]
pub enum WorkItem {
    /// Arguments for the worker's Python callable, made by Python.
    Ready(Py<PyAny>),
    /// A connection or datagram the engine took off the socket, not yet seen by Python.
    Raw(Raw),
}

/// A queue of requests for pooled worker threads, with the pool's sizing rules.
// `weakref`: open pools are tracked in a WeakSet so interpreter exit can close them.
#[pyclass(frozen, weakref, module = "socketserver_rs._core")]
#[derive(Debug)]
pub struct WorkerPool {
    queue: WorkQueue<WorkItem>,
    /// Turns `WorkItem::Raw` into `(request, client_address)`; set by the engine.
    converter: Mutex<Option<Arc<Converter>>>,
}

impl WorkerPool {
    pub fn queue(&self) -> &WorkQueue<WorkItem> {
        &self.queue
    }

    /// How workers are to turn raw items from this server's socket into Python objects.
    pub fn set_converter(&self, converter: Arc<Converter>) {
        *self
            .converter
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(converter);
    }
}

#[pymethods]
impl WorkerPool {
    #[new]
    fn new(max_workers: usize) -> Self {
        WorkerPool {
            queue: WorkQueue::new(max_workers),
            converter: Mutex::new(None),
        }
    }

    /// Queue an item for a worker. Returns True when the caller must start one more worker
    /// thread (then it is already counted; call `worker_gone()` if starting it fails).
    fn submit(&self, item: Py<PyAny>) -> PyResult<bool> {
        match self.queue.submit(WorkItem::Ready(item)) {
            Ok(submitted) => Ok(submitted == Submitted::StartWorker),
            Err(_) => Err(PyRuntimeError::new_err("the worker pool is closed")),
        }
    }

    /// The next item for the calling worker, waiting without the GIL; None means exit (the
    /// pool is closed and drained, or the worker was idle for `idle_timeout` seconds).
    #[pyo3(signature = (idle_timeout=None))]
    fn take(&self, py: Python<'_>, idle_timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let idle_timeout = duration_from_secs(idle_timeout).unwrap_or(Duration::MAX);
        match detach(py, || self.queue.take(idle_timeout)) {
            None => Ok(None),
            Some(WorkItem::Ready(item)) => Ok(Some(item)),
            Some(WorkItem::Raw(raw)) => {
                let converter = self
                    .converter
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .ok_or_else(|| PyRuntimeError::new_err("raw work without a converter"))?;
                Ok(Some(converter.to_python(py, raw)?.into_any().unbind()))
            }
        }
    }

    /// A counted worker will take no more items (it failed to start, or an exception ended
    /// it): stop counting it, so the pool can start another.
    fn worker_gone(&self) {
        self.queue.worker_gone();
    }

    /// Refuse new items; workers exit once the queued ones are done.
    fn close(&self) {
        self.queue.close();
    }

    /// Worker threads started and not yet retired.
    #[getter]
    fn workers(&self) -> usize {
        self.queue.counts().0
    }

    /// Workers waiting for an item.
    #[getter]
    fn idle(&self) -> usize {
        self.queue.counts().1
    }

    /// Items waiting for a worker.
    #[getter]
    fn queued(&self) -> usize {
        self.queue.counts().2
    }

    /// `(workers, idle, queued)` read without the queue's lock, for statistics.
    fn gauges(&self) -> (usize, usize, usize) {
        self.queue.gauges()
    }
}
