//! Deadlines for `handle_request()` and the accept back-off, in monotonic time.
//! This file needs no Python and is tested with `cargo test`.

use std::time::{Duration, Instant};

/// Seconds from Python (`None`: no limit) as a `Duration`; negative or NaN counts as zero,
/// as `select()` treats it.
pub fn duration_from_secs(seconds: Option<f64>) -> Option<Duration> {
    seconds.map(|s| {
        if s.is_finite() && s > 0.0 {
            Duration::from_secs_f64(s)
        } else if s.is_infinite() && s > 0.0 {
            Duration::MAX
        } else {
            Duration::ZERO
        }
    })
}

/// The stdlib's `handle_request()` rule: the socket's timeout, capped by the server's.
pub fn effective_timeout(socket_timeout: Option<f64>, server_timeout: Option<f64>) -> Option<f64> {
    match (socket_timeout, server_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A point in time after which waiting stops; `None` waits for ever.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    pub fn after(timeout: Option<Duration>) -> Deadline {
        Deadline(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// Time left (zero once passed); `None` for no deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.0
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    pub fn has_passed(&self) -> bool {
        self.0.is_some_and(|at| Instant::now() >= at)
    }
}

/// Exponential back-off for a listener whose `accept()` failed for lack of descriptors
/// (EMFILE/ENFILE): the listener stays readable, so retrying at once would spin the CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptBackoff {
    until: Option<Instant>,
    delay: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(100);

    /// An accept failed for lack of descriptors: pause, twice as long as last time.
    pub fn failed(&mut self) {
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        self.until = Instant::now().checked_add(self.delay);
    }

    /// An accept went through: back to normal.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
        self.until = None;
    }

    /// Whether accepting is paused now.
    pub fn is_paused(&self) -> bool {
        self.until.is_some_and(|at| Instant::now() < at)
    }

    /// `timeout`, shortened so that a wait ends when the pause does.
    pub fn cap(&self, timeout: Option<Duration>) -> Option<Duration> {
        match self.remaining() {
            Some(pause) => Some(timeout.map_or(pause, |t| t.min(pause))),
            None => timeout,
        }
    }

    /// How long the pause still lasts, as a cap on the next wait.
    pub fn remaining(&self) -> Option<Duration> {
        self.until
            .filter(|_| self.is_paused())
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_seconds_convert_like_select() {
        assert_eq!(duration_from_secs(None), None);
        assert_eq!(duration_from_secs(Some(-1.0)), Some(Duration::ZERO));
        assert_eq!(duration_from_secs(Some(f64::NAN)), Some(Duration::ZERO));
        assert_eq!(
            duration_from_secs(Some(0.25)),
            Some(Duration::from_millis(250))
        );
        assert_eq!(duration_from_secs(Some(f64::INFINITY)), Some(Duration::MAX));
    }

    #[test]
    fn effective_timeout_takes_the_smaller_of_both() {
        assert_eq!(effective_timeout(None, None), None);
        assert_eq!(effective_timeout(Some(2.0), None), Some(2.0));
        assert_eq!(effective_timeout(None, Some(3.0)), Some(3.0));
        assert_eq!(effective_timeout(Some(2.0), Some(3.0)), Some(2.0));
    }

    #[test]
    fn deadline_counts_down_and_passes() {
        let deadline = Deadline::after(Some(Duration::from_millis(30)));
        assert!(deadline.remaining().unwrap() <= Duration::from_millis(30));
        assert!(!deadline.has_passed());
        std::thread::sleep(Duration::from_millis(40));
        assert!(deadline.has_passed());
        assert_eq!(deadline.remaining(), Some(Duration::ZERO));
        assert_eq!(Deadline::after(None).remaining(), None);
        assert_eq!(Deadline::after(Some(Duration::MAX)).remaining(), None);
    }

    #[test]
    fn backoff_doubles_up_to_a_cap_and_resets() {
        let mut backoff = AcceptBackoff::default();
        assert!(!backoff.is_paused());
        backoff.failed();
        assert!(backoff.is_paused());
        assert!(backoff.remaining().unwrap() <= AcceptBackoff::FIRST);
        for _ in 0..10 {
            backoff.failed();
        }
        assert!(backoff.remaining().unwrap() <= AcceptBackoff::MAX);
        assert!(backoff.remaining().unwrap() > AcceptBackoff::MAX / 2);
        assert!(backoff.cap(None).unwrap() <= AcceptBackoff::MAX);
        assert_eq!(backoff.cap(Some(Duration::ZERO)), Some(Duration::ZERO));
        backoff.succeeded();
        assert!(!backoff.is_paused());
        assert_eq!(backoff.remaining(), None);
        assert_eq!(backoff.cap(None), None);
    }
}
