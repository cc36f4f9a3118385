//! Command-line arguments: which scenario to run against which loopback address, within which bounds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: loadgen --addr ADDR [--mode tcp|connect|udp|unix|line|idle] [options]

Closed-loop load against a loopback echo server; prints one JSON line with the results.

modes:
  tcp      request/response over --conns persistent TCP connections (response = size bytes)
  connect  one connection per request, --conns concurrent workers (connect, write, read, close)
  udp      --conns outstanding datagrams, one connected UDP socket each
  unix     as tcp, over Unix stream sockets (ADDR is a path, or unix:PATH)
  line     newline-framed: --pipeline lines per write, one sample per echoed line (TCP or Unix)
  idle     open --conns connections, do one line round trip on each, print 'HOLDING <n>' (n:
           connections that made it within --timeout), hold them without traffic for
           --duration, then close them (TCP or Unix)

options:
  --addr ADDR          127.0.0.1:PORT, [::1]:PORT, localhost:PORT, or a Unix socket path
  --conns N            connections / workers / outstanding datagrams (default 16, at most 10000)
  --size BYTES         message size, newline included (default 64)
  --pipeline K         lines written at once per connection in line mode (default 1)
  --duration SECS      stop after this long (default 5)
  --max-requests N     stop after issuing this many requests (default 1000000)
  --timeout SECS       per-request timeout; a timed-out stream is reconnected (default 2)
  --sources N          rotate client sockets over N source addresses 127.0.0.1.. (default 64)
  --prime              tcp/unix/line: before the clock starts, every connection completes one
                       round trip (so the server has accepted it), within --timeout (idle: always)
  --tls-ca FILE        speak TLS 1.3 (all stream modes): trust the PEM certificates in FILE,
                       verify the server as 'localhost', full handshake on every connection
  --help               show this text
";

/// What a run does with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tcp,
    Connect,
    Udp,
    Unix,
    Line,
    Idle,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Connect => "connect",
            Mode::Udp => "udp",
            Mode::Unix => "unix",
            Mode::Line => "line",
            Mode::Idle => "idle",
        }
    }
}

/// Where the server listens: always on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Inet(addr) => write!(f, "{addr}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One run's settings; every run is bounded by `duration` and by `max_requests`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub mode: Mode,
    pub target: Target,
    pub conns: usize,
    pub size: usize,
    pub pipeline: usize,
    pub duration: Duration,
    pub max_requests: u64,
    pub timeout: Duration,
    pub sources: u32,
    /// Persistent streams: one round trip per connection before the clock starts.
    pub prime: bool,
    /// TLS: the CA file the server's certificate must chain to; `None` for plain streams.
    pub tls_ca: Option<PathBuf>,
}

/// The outcome of parsing: a run, or a request for the usage text.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Run(Config),
    Help,
}

/// Largest payload of one UDP datagram over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// Parses the arguments that follow the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut mode = Mode::Tcp;
    let mut addr: Option<String> = None;
    let mut conns = 16usize;
    let mut size = 64usize;
    let mut pipeline = 1usize;
    let mut duration = Duration::from_secs(5);
    let mut max_requests = 1_000_000u64;
    let mut timeout = Duration::from_secs(2);
    let mut sources = 64u32;
    let mut prime = false;
    let mut tls_ca: Option<PathBuf> = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Parsed::Help);
        }
        if arg == "--prime" {
            prime = true;
            continue;
        }
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if !key.starts_with("--") {
            return Err(format!("unexpected argument {arg:?}"));
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{key} needs a value"))?,
        };
        match key.as_str() {
            "--mode" => mode = parse_mode(&value)?,
            "--addr" => addr = Some(value),
            "--conns" => conns = parse_int(&key, &value, 1, 10_000)?,
            "--size" => size = parse_int(&key, &value, 1, 1 << 20)?,
            "--pipeline" => pipeline = parse_int(&key, &value, 1, 1024)?,
            "--duration" => duration = parse_secs(&key, &value, 3600.0)?,
            "--max-requests" => max_requests = parse_int(&key, &value, 1, 50_000_000)?,
            "--timeout" => timeout = parse_secs(&key, &value, 600.0)?,
            "--sources" => sources = parse_int(&key, &value, 1, 65_000)?,
            "--tls-ca" => tls_ca = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {key}")),
        }
    }

    let addr = addr.ok_or("--addr is required")?;
    let target = parse_target(&addr)?;
    match (mode, &target) {
        (Mode::Tcp | Mode::Connect | Mode::Udp, Target::Unix(_)) => {
            return Err(format!("--mode {} needs a host:port address", mode.name()));
        }
        (Mode::Unix, Target::Inet(_)) => {
            return Err("--mode unix needs a socket path".to_owned());
        }
        _ => {}
    }
    if mode == Mode::Udp && size > MAX_DATAGRAM {
        return Err(format!(
            "--size {size} exceeds one UDP datagram ({MAX_DATAGRAM})"
        ));
    }
    if mode == Mode::Idle {
        prime = true;
    }
    if tls_ca.is_some() && mode == Mode::Udp {
        return Err("--tls-ca applies to stream modes, not udp".to_owned());
    }
    if mode != Mode::Line && pipeline != 1 {
        return Err("--pipeline applies to --mode line only".to_owned());
    }
    if prime && matches!(mode, Mode::Connect | Mode::Udp) {
        return Err("--prime applies to persistent streams (tcp, unix, line)".to_owned());
    }
    Ok(Parsed::Run(Config {
        mode,
        target,
        conns,
        size,
        pipeline,
        duration,
        max_requests,
        timeout,
        sources,
        prime,
        tls_ca,
    }))
}

fn parse_mode(value: &str) -> Result<Mode, String> {
    Ok(match value {
        "tcp" => Mode::Tcp,
        "connect" => Mode::Connect,
        "udp" => Mode::Udp,
        "unix" => Mode::Unix,
        "line" => Mode::Line,
        "idle" => Mode::Idle,
        _ => {
            return Err(format!(
                "unknown mode {value:?} (tcp, connect, udp, unix, line, idle)"
            ));
        }
    })
}

fn parse_int<T>(key: &str, value: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let n: T = value
        .parse()
        .map_err(|_| format!("{key} wants an integer, got {value:?}"))?;
    if n < min || n > max {
        return Err(format!("{key} must be within {min}..={max}, got {n}"));
    }
    Ok(n)
}

fn parse_secs(key: &str, value: &str, max: f64) -> Result<Duration, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("{key} wants seconds, got {value:?}"))?;
    if !(secs > 0.0 && secs <= max) {
        return Err(format!(
            "{key} must be within (0, {max}] seconds, got {value}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A loopback `host:port`, or a Unix socket path; anything off this machine is refused.
pub fn parse_target(value: &str) -> Result<Target, String> {
    if let Some(path) = value.strip_prefix("unix:") {
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    if value.starts_with('/') || value.starts_with('.') {
        return Ok(Target::Unix(PathBuf::from(value)));
    }
    let addr = if let Some(port) = value.strip_prefix("localhost:") {
        let port = port.parse().map_err(|_| format!("bad port in {value:?}"))?;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else {
        value
            .parse::<SocketAddr>()
            .map_err(|_| format!("bad address {value:?} (want 127.0.0.1:PORT or a path)"))?
    };
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; loadgen targets this machine only"
        ));
    }
    if addr.port() == 0 {
        return Err("port 0 is not a server's address".to_owned());
    }
    Ok(Target::Inet(addr))
}

/// The `index`-th client source address: 127.0.0.1, 127.0.0.2, … wrapping after `sources`.
pub fn source_addr(index: u64, sources: u32) -> Ipv4Addr {
    let offset = (index % u64::from(sources.max(1))) as u32;
    Ipv4Addr::from(0x7f00_0001 + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Parsed::Run(config) => Ok(config),
            Parsed::Help => Err("help".to_owned()),
        }
    }

    #[test]
    fn defaults_apply_when_only_the_address_is_given() {
        let config = run(&["--addr", "127.0.0.1:9000"]).unwrap();
        assert_eq!(config.mode, Mode::Tcp);
        assert_eq!(
            config.target,
            Target::Inet("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(config.conns, 16);
        assert_eq!(config.size, 64);
        assert_eq!(config.pipeline, 1);
        assert_eq!(config.duration, Duration::from_secs(5));
        assert_eq!(config.max_requests, 1_000_000);
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.sources, 64);
        assert!(!config.prime);
        assert_eq!(config.tls_ca, None);
    }

    #[test]
    fn options_accept_separate_and_inline_values() {
        let config = run(&[
            "--mode=connect",
            "--addr",
            "127.0.0.1:80",
            "--conns=256",
            "--size",
            "128",
            "--duration",
            "0.5",
            "--max-requests=256",
            "--timeout",
            "10",
            "--sources=200",
        ])
        .unwrap();
        assert_eq!(config.mode, Mode::Connect);
        assert_eq!(config.conns, 256);
        assert_eq!(config.size, 128);
        assert_eq!(config.duration, Duration::from_millis(500));
        assert_eq!(config.max_requests, 256);
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.sources, 200);
    }

    #[test]
    fn unix_paths_and_localhost_are_understood() {
        assert_eq!(
            run(&["--mode", "unix", "--addr", "/tmp/x.sock"])
                .unwrap()
                .target,
            Target::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            run(&[
                "--mode",
                "line",
                "--addr",
                "unix:rel.sock",
                "--pipeline",
                "8"
            ])
            .unwrap()
            .target,
            Target::Unix("rel.sock".into())
        );
        assert_eq!(
            run(&["--addr", "localhost:7"]).unwrap().target,
            Target::Inet("127.0.0.1:7".parse().unwrap())
        );
        assert_eq!(
            run(&["--addr", "[::1]:7"]).unwrap().target,
            Target::Inet("[::1]:7".parse().unwrap())
        );
    }

    #[test]
    fn addresses_off_this_machine_are_refused() {
        for addr in [
            "10.0.0.1:80",
            "192.168.1.1:80",
            "8.8.8.8:53",
            "0.0.0.0:80",
            "[::]:80",
        ] {
            let error = run(&["--addr", addr]).unwrap_err();
            assert!(error.contains("loopback"), "{addr}: {error}");
        }
        assert!(run(&["--addr", "127.0.0.1:0"]).is_err());
        assert!(run(&["--addr", "example.com:80"]).is_err());
    }

    #[test]
    fn bad_arguments_are_reported() {
        assert!(run(&[]).unwrap_err().contains("--addr"));
        assert!(run(&["--addr"]).unwrap_err().contains("needs a value"));
        assert!(run(&["--addr", "127.0.0.1:1", "--conns", "0"]).is_err());
        assert!(run(&["--addr", "127.0.0.1:1", "--conns", "many"]).is_err());
        assert!(run(&["--addr", "127.0.0.1:1", "--duration", "-1"]).is_err());
        assert!(run(&["--addr", "127.0.0.1:1", "--duration", "nan"]).is_err());
        assert!(run(&["--addr", "127.0.0.1:1", "--bogus", "1"]).is_err());
        assert!(run(&["--addr", "127.0.0.1:1", "stray"]).is_err());
        assert!(run(&["--addr", "127.0.0.1:1", "--mode", "http"]).is_err());
        assert!(run(&["--addr", "127.0.0.1:1", "--pipeline", "4"]).is_err());
        assert!(run(&["--mode", "udp", "--addr", "127.0.0.1:1", "--size", "70000"]).is_err());
        assert!(run(&["--mode", "unix", "--addr", "127.0.0.1:1"]).is_err());
        assert!(run(&["--mode", "tcp", "--addr", "/tmp/s"]).is_err());
    }

    #[test]
    fn prime_is_a_flag_for_persistent_streams() {
        let config = run(&["--mode", "line", "--prime", "--addr", "127.0.0.1:1"]).unwrap();
        assert!(config.prime);
        assert!(run(&["--mode", "connect", "--addr", "127.0.0.1:1", "--prime"]).is_err());
        assert!(run(&["--mode", "udp", "--addr", "127.0.0.1:1", "--prime"]).is_err());
    }

    #[test]
    fn tls_takes_a_ca_file_in_stream_modes_only() {
        for mode in ["tcp", "line", "connect", "idle"] {
            let config = run(&[
                "--mode",
                mode,
                "--addr",
                "127.0.0.1:1",
                "--tls-ca",
                "ca.pem",
            ]);
            assert_eq!(
                config.unwrap().tls_ca,
                Some(PathBuf::from("ca.pem")),
                "{mode}"
            );
        }
        let error = run(&[
            "--mode",
            "udp",
            "--addr",
            "127.0.0.1:1",
            "--tls-ca",
            "ca.pem",
        ]);
        assert!(error.unwrap_err().contains("udp"));
        assert!(run(&["--addr", "127.0.0.1:1", "--tls-ca"]).is_err());
    }

    #[test]
    fn idle_mode_always_primes() {
        let config = run(&["--mode", "idle", "--addr", "127.0.0.1:1"]).unwrap();
        assert_eq!(config.mode, Mode::Idle);
        assert!(config.prime);
        assert!(run(&["--mode", "idle", "--addr", "127.0.0.1:1", "--pipeline", "2"]).is_err());
    }

    #[test]
    fn help_is_recognised_anywhere() {
        let parsed = parse(["--addr", "127.0.0.1:1", "--help"].map(String::from)).unwrap();
        assert_eq!(parsed, Parsed::Help);
    }

    #[test]
    fn source_addresses_rotate_over_the_loopback_range() {
        assert_eq!(source_addr(0, 64), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(1, 64), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(64, 64), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(300, 1000), Ipv4Addr::new(127, 0, 1, 45));
        assert_eq!(source_addr(5, 1), Ipv4Addr::new(127, 0, 0, 1));
    }
}
