//! The reactor's loop for datagram sockets (UDP, Unix datagram). Each turn receives a batch
//! of datagrams (one `recvmmsg` call on Linux, see `sys/`) without the GIL, then, with the GIL, runs one
//! handler per datagram (`setup`/`finish` only when the class overrides them) and queues
//! its reply to the sender; replies are sent without the GIL at the start of the next turn.
//! With worker threads, each datagram's handler is made here and handed to `submit` with
//! its message; the worker's replies come back through `send()`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::address::peer_to_python;
use crate::errors::os_error;
use crate::finalize::{self, detach};
use crate::net::{self, Datagram, RawAddr};
use crate::reactor::{
    Command, Connection, Reactor, Session, Settings, bytes_of, framing_error, report,
};
use crate::stats::Counters;
use crate::sys::{self, DATAGRAM_BATCH};

/// How long to wait before retrying replies the socket had no room for.
const SEND_RETRY: Duration = Duration::from_millis(1);

pub struct DatagramLoop<'r> {
    reactor: &'r Reactor,
    session: Session,
    settings: Settings,
    buffer: Vec<u8>,
    received: Vec<Datagram>,
    outgoing: VecDeque<(RawAddr, Vec<u8>)>,
    commands: Vec<Command>,
    submit: Option<Py<PyAny>>,
    /// Datagrams given to worker threads and not yet done.
    in_flight: usize,
}

impl<'r> DatagramLoop<'r> {
    pub fn new(
        reactor: &'r Reactor,
        session: Session,
        settings: Settings,
        submit: Option<Py<PyAny>>,
    ) -> Self {
        DatagramLoop {
            reactor,
            session,
            settings,
            buffer: vec![0; settings.max_message_size * DATAGRAM_BATCH],
            received: Vec::with_capacity(DATAGRAM_BATCH),
            outgoing: VecDeque::new(),
            commands: Vec::new(),
            submit,
            in_flight: 0,
        }
    }

    pub fn into_session(self) -> Session {
        self.session
    }

    pub fn run(
        &mut self,
        server: &Bound<'_, PyAny>,
        handler_class: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = server.py();
        while !self.reactor.latch().is_requested() {
            detach(py, || self.io_half()).map_err(|e| os_error(&e))?;
            py.check_signals()?;
            self.python_half(server, handler_class)?;
            self.reactor.retire_if_due();
        }
        // With a drain window (`shutdown(timeout)`): receive nothing more, but wait for the
        // datagrams on worker threads and send their replies, until the window closes.
        if let Some(window) = self.reactor.take_drain_window() {
            let deadline = Instant::now() + window;
            let _ = self.session.poller.set_listening(false);
            loop {
                self.queue_commands();
                detach(py, || self.send_replies());
                let left = deadline.saturating_duration_since(Instant::now());
                if (self.in_flight == 0 && self.outgoing.is_empty()) || left.is_zero() {
                    break;
                }
                let poller = &mut self.session.poller;
                detach(py, || {
                    poller.wait(Some(left.min(Duration::from_millis(50))))
                })
                .map_err(|e| os_error(&e))?;
                py.check_signals()?;
            }
        }
        detach(py, || self.send_replies());
        Ok(())
    }

    fn io_half(&mut self) -> std::io::Result<()> {
        self.send_replies();
        // The socket is watched level-triggered: datagrams left after a full batch make the
        // next wait return at once.
        let timeout = (!self.outgoing.is_empty()).then_some(SEND_RETRY);
        let wakeup = self.session.poller.wait(timeout)?;
        if wakeup.readable {
            let slot = self.settings.max_message_size;
            // WouldBlock (another reader was first), EINTR, or an ICMP error reported for an
            // earlier reply (ECONNREFUSED …): none concerns the datagrams still to come.
            let _ = sys::recv_batch(
                self.session.listener,
                &mut self.buffer,
                slot,
                &mut self.received,
            );
        }
        Ok(())
    }

    fn send_replies(&mut self) {
        while let Some((to, data)) = self.outgoing.front() {
            match net::send_to(self.session.listener, data, to) {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                // Delivered, or undeliverable (peer gone, too large): either way it is done.
                sent => {
                    if let Ok(n) = sent {
                        Counters::add(&self.reactor.shared().stats.bytes_out, n as u64);
                    }
                    self.outgoing.pop_front();
                }
            }
        }
    }

    fn python_half(
        &mut self,
        server: &Bound<'_, PyAny>,
        handler_class: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = server.py();
        let shared = self.reactor.shared();
        let slot_size = self.settings.max_message_size;
        for (index, datagram) in std::mem::take(&mut self.received).into_iter().enumerate() {
            let address = peer_to_python(py, &datagram.from.peer())?.unbind();
            Counters::bump(&shared.stats.acquired);
            Counters::add(&shared.stats.bytes_in, datagram.len as u64);
            if datagram.truncated {
                let err = framing_error(format!(
                    "datagram longer than max_message_size ({slot_size}) dropped"
                ));
                report(server, None, &address, err)?;
                continue;
            }
            let start = index * slot_size;
            let message = PyBytes::new(py, &self.buffer[start..start + datagram.len]);
            let connection = Connection::for_datagram(shared, datagram.from);
            let handler =
                match finalize::call(handler_class, (connection, address.clone_ref(py), server)) {
                    Ok(handler) => handler,
                    Err(err) => {
                        report(server, None, &address, err)?;
                        continue;
                    }
                };
            if let Some(submit) = &self.submit {
                let messages = pyo3::types::PyList::new(py, [message])?;
                finalize::call(submit.bind(py), ((handler, messages, true),))?;
                self.in_flight += 1;
                continue;
            }
            // As in BaseRequestHandler: setup, then the message, then finish even on error.
            let handled = (|| {
                if self.settings.calls_setup {
                    finalize::call_method(&handler, intern!(py, "setup"), ())?;
                }
                let reply =
                    finalize::call_method(&handler, intern!(py, "handle_message"), (message,));
                let finished = if self.settings.calls_finish {
                    finalize::call_method(&handler, intern!(py, "finish"), ()).map(drop)
                } else {
                    Ok(())
                };
                let reply = reply?;
                finished?;
                if reply.is_none() {
                    Ok(None)
                } else {
                    bytes_of(&reply).map(Some)
                }
            })();
            self.queue_commands();
            if handled.is_ok() {
                Counters::bump(&shared.stats.requests);
            }
            match handled {
                Ok(Some(data)) => self.outgoing.push_back((datagram.from, data)),
                Ok(None) => {}
                Err(err) => report(server, Some(&handler.unbind()), &address, err)?,
            }
        }
        self.queue_commands();
        Ok(())
    }

    /// Replies handlers sent with `send()` (from this thread or any other).
    fn queue_commands(&mut self) {
        self.reactor.shared().take_commands(&mut self.commands);
        for command in self.commands.drain(..) {
            match command {
                Command::SendTo { to, data } => self.outgoing.push_back((to, data)),
                Command::DatagramDone => self.in_flight = self.in_flight.saturating_sub(1),
                _ => {}
            }
        }
    }
}
