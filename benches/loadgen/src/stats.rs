//! Samples and outcome counts of one run, exact percentiles over every sample, and the JSON line.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::args::Config;

/// Everything a driver records: one latency sample per completed request, and the failures.
#[derive(Debug, Default)]
pub struct Recorder {
    samples: Vec<u64>,
    errors: u64,
    timeouts: u64,
    first_error: Option<String>,
    connections: Option<ConnectionStats>,
}

/// What the persistent-stream drivers know about their connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionStats {
    /// Connections established when the clock started.
    pub ready: u64,
    /// Connection slots (of `--conns`) that completed at least one round trip while the clock
    /// ran: with `--conns` of them, every connection was served.
    pub served: u64,
    /// Connections opened in all, reconnects included.
    pub opened: u64,
    /// Seconds from the first connect until the clock started (all connected, or the
    /// connect phase's bound).
    pub connect_s: f64,
}

impl Recorder {
    pub fn with_capacity(capacity: usize) -> Self {
        Recorder {
            samples: Vec::with_capacity(capacity),
            ..Recorder::default()
        }
    }

    /// Records a request that completed after `started`.
    pub fn complete(&mut self, started: Instant, now: Instant) {
        let nanos = now.saturating_duration_since(started).as_nanos();
        self.samples.push(u64::try_from(nanos).unwrap_or(u64::MAX));
    }

    /// Records a request that failed; the first failure's text is kept for the report.
    pub fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    /// Records `n` requests that got no answer within the per-request timeout.
    pub fn timeouts(&mut self, n: u64) {
        self.timeouts += n;
    }

    /// Attaches the connection figures of a persistent-stream run.
    pub fn connections(&mut self, stats: ConnectionStats) {
        self.connections = Some(stats);
    }

    /// Sorts the samples and computes the summary of a run that lasted `elapsed`.
    pub fn summarize(mut self, elapsed: Duration) -> Summary {
        self.samples.sort_unstable();
        let s = &self.samples;
        let us = |nanos: Option<u64>| nanos.map(|n| n as f64 / 1_000.0);
        let mean = if s.is_empty() {
            None
        } else {
            Some(s.iter().map(|&n| n as f64).sum::<f64>() / s.len() as f64 / 1_000.0)
        };
        let secs = elapsed.as_secs_f64();
        Summary {
            requests: self.samples.len() as u64,
            errors: self.errors,
            timeouts: self.timeouts,
            elapsed_s: secs,
            rps: if secs > 0.0 {
                s.len() as f64 / secs
            } else {
                0.0
            },
            min_us: us(s.first().copied()),
            p50_us: us(percentile(s, 50_000)),
            p99_us: us(percentile(s, 99_000)),
            p999_us: us(percentile(s, 99_900)),
            max_us: us(s.last().copied()),
            mean_us: mean,
            first_error: self.first_error,
            connections: self.connections,
        }
    }
}

/// The nearest-rank percentile of `sorted` (ascending): the smallest sample such that at least
/// `per_100k / 100000` of all samples are less than or equal to it. `per_100k` counts in
/// thousandths of a percent (p99.9 is 99_900), so the rank is computed without rounding error.
pub fn percentile(sorted: &[u64], per_100k: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (per_100k.min(100_000) * n).div_ceil(100_000).clamp(1, n);
    Some(sorted[(rank - 1) as usize])
}

/// The figures reported for one run; latencies in microseconds, `None` when nothing completed.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub elapsed_s: f64,
    pub rps: f64,
    pub min_us: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    pub mean_us: Option<f64>,
    pub first_error: Option<String>,
    pub connections: Option<ConnectionStats>,
}

impl Summary {
    /// One JSON object, on one line.
    pub fn to_json(&self, config: &Config, client_cpu_s: f64) -> String {
        let num = |v: Option<f64>| v.map_or_else(|| "null".to_owned(), |v| format!("{v:.1}"));
        let int = |v: Option<u64>| v.map_or_else(|| "null".to_owned(), |v| v.to_string());
        let mut out = String::with_capacity(512);
        let _ = write!(
            out,
            "{{\"mode\":\"{}\",\"addr\":{},\"conns\":{},\"size\":{},\"pipeline\":{},\"prime\":{},\
             \"requests\":{},\"errors\":{},\"timeouts\":{},\"elapsed_s\":{:.4},\"rps\":{:.1},\
             \"latency_us\":{{\"min\":{},\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{},\"mean\":{}}},\
             \"client_cpu_s\":{:.3},\"first_error\":{},\"conns_ready\":{},\"conns_served\":{},\
             \"connects\":{},\"connect_s\":{}}}",
            config.mode.name(),
            json_string(&config.target.to_string()),
            config.conns,
            config.size,
            config.pipeline,
            config.prime,
            self.requests,
            self.errors,
            self.timeouts,
            self.elapsed_s,
            self.rps,
            num(self.min_us),
            num(self.p50_us),
            num(self.p99_us),
            num(self.p999_us),
            num(self.max_us),
            num(self.mean_us),
            client_cpu_s,
            self.first_error
                .as_deref()
                .map_or_else(|| "null".to_owned(), json_string),
            int(self.connections.map(|c| c.ready)),
            int(self.connections.map(|c| c.served)),
            int(self.connections.map(|c| c.opened)),
            self.connections
                .map_or_else(|| "null".to_owned(), |c| format!("{:.3}", c.connect_s)),
        );
        out
    }
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_of_nothing_is_none() {
        assert_eq!(percentile(&[], 50_000), None);
    }

    #[test]
    fn percentile_of_one_sample_is_that_sample() {
        for p in [0, 50_000, 99_000, 99_900, 100_000] {
            assert_eq!(percentile(&[7], p), Some(7));
        }
    }

    #[test]
    fn percentile_uses_the_nearest_rank() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&s, 50_000), Some(50));
        assert_eq!(percentile(&s, 99_000), Some(99));
        assert_eq!(percentile(&s, 99_900), Some(100));
        assert_eq!(percentile(&s, 100_000), Some(100));
        assert_eq!(percentile(&s, 0), Some(1));
        assert_eq!(percentile(&s, 1_000), Some(1));
        assert_eq!(percentile(&s, 1_001), Some(2));
    }

    #[test]
    fn percentile_is_exact_at_the_boundaries_of_p999() {
        // 1000 samples: p99.9 is the 999th; 1001 samples: rank ceil(999.999) = 1000.
        let s: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&s, 99_900), Some(999));
        let s: Vec<u64> = (1..=1001).collect();
        assert_eq!(percentile(&s, 99_900), Some(1000));
        let s: Vec<u64> = (1..=10_000).collect();
        assert_eq!(percentile(&s, 99_900), Some(9_990));
        assert_eq!(percentile(&s, 99_000), Some(9_900));
        assert_eq!(percentile(&s, 50_000), Some(5_000));
    }

    #[test]
    fn percentile_of_an_even_count_takes_the_lower_middle() {
        assert_eq!(percentile(&[10, 20, 30, 40], 50_000), Some(20));
        assert_eq!(percentile(&[10, 20, 30], 50_000), Some(20));
    }

    #[test]
    fn percentile_sees_a_single_outlier_only_in_the_tail() {
        let mut s = vec![100u64; 999];
        s.push(1_000_000);
        assert_eq!(percentile(&s, 99_900), Some(100));
        assert_eq!(percentile(&s, 100_000), Some(1_000_000));
        s.push(1_000_000);
        assert_eq!(percentile(&s, 99_900), Some(1_000_000));
    }

    #[test]
    fn summary_reports_microseconds_rate_and_failures() {
        let start = Instant::now();
        let mut r = Recorder::with_capacity(4);
        for micros in [4, 1, 3, 2] {
            r.complete(start, start + Duration::from_micros(micros));
        }
        r.error(|| "first".to_owned());
        r.error(|| "second".to_owned());
        r.timeouts(3);
        let s = r.summarize(Duration::from_secs(2));
        assert_eq!(s.requests, 4);
        assert_eq!(s.errors, 2);
        assert_eq!(s.timeouts, 3);
        assert_eq!(s.rps, 2.0);
        assert_eq!(s.min_us, Some(1.0));
        assert_eq!(s.p50_us, Some(2.0));
        assert_eq!(s.p99_us, Some(4.0));
        assert_eq!(s.max_us, Some(4.0));
        assert_eq!(s.mean_us, Some(2.5));
        assert_eq!(s.first_error.as_deref(), Some("first"));
    }

    #[test]
    fn empty_summary_has_no_latencies() {
        let s = Recorder::default().summarize(Duration::from_secs(1));
        assert_eq!(s.requests, 0);
        assert_eq!(s.p50_us, None);
        assert_eq!(s.rps, 0.0);
    }

    #[test]
    fn json_carries_the_connection_figures_when_there_are_any() {
        let config = match crate::args::parse(["--addr", "127.0.0.1:9"].map(String::from)) {
            Ok(crate::args::Parsed::Run(config)) => config,
            other => panic!("{other:?}"),
        };
        let plain = Recorder::default().summarize(Duration::from_secs(1));
        let json = plain.to_json(&config, 0.0);
        assert!(json.contains("\"conns_served\":null,\"connects\":null,\"connect_s\":null}"));
        let mut r = Recorder::default();
        r.connections(ConnectionStats {
            ready: 10_000,
            served: 9_998,
            opened: 10_003,
            connect_s: 0.25,
        });
        let json = r.summarize(Duration::from_secs(1)).to_json(&config, 0.0);
        assert!(
            json.contains("\"conns_ready\":10000,\"conns_served\":9998,"),
            "{json}"
        );
        assert!(
            json.ends_with("\"connects\":10003,\"connect_s\":0.250}"),
            "{json}"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
