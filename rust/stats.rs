//! Server statistics: counters the serving paths bump with relaxed atomic adds, and that
//! `stats()` reads without taking any lock. Each counter only grows; a reader may see one
//! counter a few events ahead of another (they are not read as one snapshot).
//! This file needs no Python and is tested with `cargo test`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::tls::Failure;

/// The errno classes accept (or receive) failures are counted under, in report order; the
/// last one, `other`, takes every errno not listed. `EAGAIN`/`EINTR` are not failures (the
/// client went elsewhere, or a signal came) and are not counted.
const ACCEPT_ERROR_CLASSES: [(&str, i32); 7] = [
    ("EMFILE", libc::EMFILE),
    ("ENFILE", libc::ENFILE),
    ("ENOBUFS", libc::ENOBUFS),
    ("ENOMEM", libc::ENOMEM),
    ("ECONNABORTED", libc::ECONNABORTED),
    ("EPERM", libc::EPERM),
    ("EPROTO", libc::EPROTO),
];

/// Counters shared by everything that serves one server.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted (stream) or datagrams received.
    pub acquired: AtomicU64,
    /// Accepted connections closed since (stream).
    pub closed: AtomicU64,
    /// Requests (or reactor messages) whose handler returned.
    pub requests: AtomicU64,
    /// Requests (or messages) whose handler raised.
    pub handler_errors: AtomicU64,
    /// Parked connections closed for sending nothing in time (`dispatch_when_readable`).
    pub first_byte_timeouts: AtomicU64,
    /// Reactor: bytes read from and written to connections.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Reactor: times a connection's reading was paused because its output passed the
    /// write buffer limit.
    pub backpressure_pauses: AtomicU64,
    /// Reactor: connections closed by the idle timeout.
    pub idle_timeouts: AtomicU64,
    accept_errors: [AtomicU64; ACCEPT_ERROR_CLASSES.len() + 1],
    /// Reactor with TLS: handshakes completed, and failed ones by `Failure` class.
    pub tls_handshakes: AtomicU64,
    tls_failures: [AtomicU64; Failure::ALL.len()],
}

impl Counters {
    /// Add one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Count a failed accept (or receive) with this errno.
    pub fn accept_error(&self, errno: i32) {
        if errno == libc::EAGAIN || errno == libc::EWOULDBLOCK || errno == libc::EINTR {
            return;
        }
        let class = ACCEPT_ERROR_CLASSES
            .iter()
            .position(|&(_, known)| known == errno)
            .unwrap_or(ACCEPT_ERROR_CLASSES.len());
        Counters::bump(&self.accept_errors[class]);
    }

    /// Count a failed TLS handshake.
    pub fn tls_failure(&self, class: Failure) {
        Counters::bump(&self.tls_failures[class as usize]);
    }

    /// `(class, count)` for every TLS handshake failure class.
    pub fn tls_failures(&self) -> Vec<(&'static str, u64)> {
        Failure::ALL
            .iter()
            .zip(&self.tls_failures)
            .map(|(class, count)| (class.name(), Counters::get(count)))
            .collect()
    }

    /// `(class, count)` for every errno class, `other` last.
    pub fn accept_errors(&self) -> Vec<(&'static str, u64)> {
        ACCEPT_ERROR_CLASSES
            .iter()
            .map(|&(name, _)| name)
            .chain(["other"])
            .zip(&self.accept_errors)
            .map(|(name, count)| (name, Counters::get(count)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_counted_by_class() {
        let counters = Counters::default();
        counters.accept_error(libc::EMFILE);
        counters.accept_error(libc::EMFILE);
        counters.accept_error(libc::ENFILE);
        counters.accept_error(libc::EBADF);
        counters.accept_error(libc::EAGAIN);
        counters.accept_error(libc::EINTR);
        let errors = counters.accept_errors();
        assert_eq!(errors[0], ("EMFILE", 2));
        assert_eq!(errors[1], ("ENFILE", 1));
        assert_eq!(errors.last(), Some(&("other", 1)));
        assert_eq!(errors.iter().map(|(_, n)| n).sum::<u64>(), 4);
    }

    #[test]
    fn tls_failures_are_counted_by_class() {
        let counters = Counters::default();
        counters.tls_failure(Failure::Timeout);
        counters.tls_failure(Failure::Certificate);
        counters.tls_failure(Failure::Certificate);
        assert_eq!(
            counters.tls_failures(),
            vec![
                ("timeout", 1),
                ("closed", 0),
                ("protocol", 0),
                ("certificate", 2)
            ]
        );
    }

    #[test]
    fn counters_add_up_across_threads() {
        let counters = std::sync::Arc::new(Counters::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counters = std::sync::Arc::clone(&counters);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        Counters::bump(&counters.requests);
                        Counters::add(&counters.bytes_in, 3);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(Counters::get(&counters.requests), 4000);
        assert_eq!(Counters::get(&counters.bytes_in), 12000);
    }
}
