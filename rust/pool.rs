//! `WorkerPool`: the Python face of `WorkQueue`, carrying `(request, client_address)` pairs
//! from the serving loop to pooled `threading.Thread` workers. Items are either ready Python
//! objects or, when the engine serves a pool without calling Python per request, connections
//! and datagrams straight from the socket, which the worker turns into Python objects.
//! `work` is a worker thread's whole loop: while the hooks a worker runs are stock, it
//! serves each request as `engine::serve_stock` does, without a Python frame of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use crate::acquire::{Converter, Raw, packet_size};
use crate::deadline::duration_from_secs;
use crate::engine::{Engine, instance_dict_len, serve_stock};
use crate::finalize::{self, detach};
use crate::work_queue::{Submitted, WorkQueue};
use crate::worker_receive::{Claim, ReceiveSlot};

/// `socketserver_rs._fastpath.stock_worker_path`: whether a worker may serve requests itself.
static STOCK_WORKER_PATH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

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
    /// `(len(server.__dict__), stock_worker_path(server))` when workers last asked: they
    /// ask again when the length changes (a hook assigned on the instance), as the engine
    /// does for its own plan.
    worker_plan: Mutex<Option<(usize, i32)>>,
    /// Filled while the engine serves a datagram socket with no Python on its thread: a
    /// worker that has just served a datagram receives the next one itself (see `work`).
    receive: ReceiveSlot,
    /// The server's `max_packet_size` as last read (by a worker making a request of a raw
    /// datagram, or by the engine entering its GIL-free loop): it sizes the buffers that
    /// receive datagrams without the GIL (see `receive_len`).
    packet_size: AtomicUsize,
}

/// The longest datagram IPv4 or IPv6 can carry (without jumbograms), rounded up: a receive
/// buffer this long takes any UDP datagram whole.
const LARGEST_DATAGRAM: usize = 65536;

impl WorkerPool {
    pub fn queue(&self) -> &WorkQueue<WorkItem> {
        &self.queue
    }

    /// How workers are to turn raw items from this server's socket into Python objects.
    pub fn set_converter(&self, converter: Arc<Converter>) {
        // The one replaced may hold the last reference to an earlier server socket: it is
        // dropped after the lock is released, as freeing that socket can run Python (a
        // weakref callback, a `ResourceWarning`), which may hand the GIL to a worker that
        // would then block on this lock in `arguments()`.
        let replaced = self
            .converter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(converter);
        drop(replaced);
    }

    /// Record `max_packet_size` as just read from the server.
    pub fn note_packet_size(&self, size: usize) {
        self.packet_size.store(size, Ordering::Relaxed);
    }

    /// How long a buffer that receives datagrams without the GIL is to be. Those receives
    /// cannot read `max_packet_size` (Python) for each datagram as `get_request()` does, so
    /// they take up to a whole UDP datagram (or the last size read, if larger: Unix datagrams
    /// can be longer) and the worker truncates it to the size it reads when it makes the
    /// request, which is after the datagram arrived: any change made before then applies,
    /// as in the stdlib. That lookup is the one `get_request()` makes too; the serving loop
    /// itself makes none. Only a size raised above 64 KiB for a longer Unix datagram applies
    /// one datagram late (to the buffer after a worker has read it).
    pub fn receive_len(&self) -> usize {
        self.packet_size
            .load(Ordering::Relaxed)
            .max(LARGEST_DATAGRAM)
    }

    /// Where workers find the receiver for datagrams (filled by the engine).
    pub fn receive_slot(&self) -> &ReceiveSlot {
        &self.receive
    }

    /// After a datagram served with stock hooks: the next one, if this worker may receive
    /// it (`claim` held, or free to take) and no queued request or `shutdown()` comes first.
    /// Received whole (see `receive_len`): `arguments` truncates it to `max_packet_size`.
    fn receive_next<'a>(&'a self, engine: &Engine, claim: &mut Option<Claim<'a>>) -> Option<Raw> {
        if engine.shutdown_is_requested() || self.queue.gauges().2 > 0 {
            return None;
        }
        if claim.is_none() {
            *claim = self.receive.claim();
        }
        let held = claim.as_ref()?; // None: another worker is receiving
        let raw = held.receive(self.receive_len())?;
        engine.note_acquired();
        Some(raw)
    }

    /// `(request, client_address)` for an item, made here for a raw one: a raw datagram is
    /// first truncated to the server's `max_packet_size` of this moment, as `recvfrom()`
    /// with that size would have truncated it.
    fn arguments<'py>(
        &self,
        py: Python<'py>,
        server: Option<&Bound<'py, PyAny>>,
        item: WorkItem,
    ) -> PyResult<Bound<'py, PyTuple>> {
        match item {
            WorkItem::Ready(args) => Ok(args.into_bound(py).cast_into::<PyTuple>()?),
            WorkItem::Raw(mut raw) => {
                if let (Raw::Datagram(data, _), Some(server)) = (&mut raw, server) {
                    let size = packet_size(server)?;
                    self.note_packet_size(size);
                    data.truncate(size);
                }
                let converter = self
                    .converter
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .ok_or_else(|| PyRuntimeError::new_err("raw work without a converter"))?;
                converter.to_python(py, raw)
            }
        }
    }

    /// `stock_worker_path(server)`, asked again only when the server's instance attributes
    /// changed. 0: call `process_request_thread()`; otherwise the socket type to serve
    /// requests for as its stock hooks would.
    fn stock_kind(&self, server: &Bound<'_, PyAny>) -> PyResult<i32> {
        let py = server.py();
        let key = instance_dict_len(server);
        let cached = *self
            .worker_plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, kind)) = cached
            && seen == key
        {
            return Ok(kind);
        }
        let ask = STOCK_WORKER_PATH.get_or_try_init(py, || {
            PyResult::Ok(
                py.import("socketserver_rs._fastpath")?
                    .getattr("stock_worker_path")?
                    .unbind(),
            )
        })?;
        // Asked without the lock held: running Python can hand the GIL to another worker,
        // which would then block on the lock while holding the GIL this call needs back. Two
        // workers asking at once get the same answer; the last one stored wins.
        let kind: i32 = finalize::call(ask.bind(py), (server,))?.extract()?;
        *self
            .worker_plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((key, kind));
        Ok(kind)
    }
}

#[pymethods]
impl WorkerPool {
    #[new]
    fn new(max_workers: usize) -> Self {
        WorkerPool {
            queue: WorkQueue::new(max_workers),
            converter: Mutex::new(None),
            worker_plan: Mutex::new(None),
            receive: ReceiveSlot::default(),
            packet_size: AtomicUsize::new(0),
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

    /// A worker thread's loop: take items (waiting without the GIL) until `take` would
    /// return None, serving each. Without `server`, each is `serve(request,
    /// client_address)`. With a pool server, each goes to its `process_request_thread()`
    /// (looked up per request, as `ThreadingMixIn` does), or, while that and the hooks it
    /// calls are stock, is served here as `process_request_thread()` would: the handler
    /// made, `shutdown_request()`'s stock work done, and on a handler exception Python's
    /// `_rs_request_failed()` calls `handle_error()` and `shutdown_request()`. An exception
    /// that escapes (SystemExit, KeyboardInterrupt …) ends the loop, as it ended the
    /// Python one; the caller then calls `worker_gone()`.
    #[pyo3(signature = (serve, idle_timeout=None, server=None))]
    fn work(
        &self,
        py: Python<'_>,
        serve: &Bound<'_, PyAny>,
        idle_timeout: Option<f64>,
        server: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let idle_timeout = duration_from_secs(idle_timeout).unwrap_or(Duration::MAX);
        let engine = match server {
            Some(server) => Some(
                server
                    .getattr(intern!(py, "_rs_engine"))?
                    .cast_into::<Engine>()?,
            ),
            None => None,
        };
        // A datagram this worker received itself, to serve next; and its right to do so,
        // kept while it serves datagrams in a row and given up before it waits.
        let mut next = None;
        let mut claim = None;
        loop {
            let item = match next.take() {
                Some(item) => item,
                None => {
                    claim = None;
                    match detach(py, || self.queue.take(idle_timeout)) {
                        Some(item) => item,
                        None => break,
                    }
                }
            };
            // Dropped at the end of each turn: an idle worker holds no finished request.
            let args = self.arguments(py, server, item)?;
            match (server, &engine) {
                (Some(server), Some(engine)) => match self.stock_kind(server)? {
                    0 => {
                        finalize::call_method(server, intern!(py, "process_request_thread"), args)?;
                    }
                    libc::SOCK_STREAM => serve_stock(engine.get(), server, &args, true)?,
                    _ => {
                        serve_stock(engine.get(), server, &args, false)?;
                        next = self
                            .receive_next(engine.get(), &mut claim)
                            .map(WorkItem::Raw);
                    }
                },
                _ => {
                    finalize::call(serve, args)?;
                }
            }
        }
        Ok(())
    }

    /// A counted worker will take no more items (it failed to start, or an exception ended
    /// it): stop counting it, so the pool can start another.
    fn worker_gone(&self) {
        self.queue.worker_gone();
    }

    /// Workers receive no more datagrams themselves, from now on: the server socket is
    /// about to be closed (and its descriptor number may be reused).
    fn stop_receiving(&self) {
        self.receive.stop();
    }

    /// Refuse new items; workers exit once the queued ones are done.
    fn close(&self) {
        self.queue.close();
        self.receive.stop();
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
