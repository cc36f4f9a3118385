//! `loadgen`: a closed-loop load generator for echo servers on this machine.
//!
//! One single-threaded mio event loop drives every connection, so the client costs one core at
//! most (TLS included: `--tls-ca`). Each run is bounded by `--duration` and by `--max-requests`, keeps every latency sample
//! for exact percentiles, and prints one JSON line on stdout. See `loadgen --help`.

mod args;
mod connect;
mod net;
mod stats;
mod stream;
mod tls;
mod udp;

use std::process::ExitCode;

use args::{Mode, Parsed};

fn main() -> ExitCode {
    let config = match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(config)) => config,
        Ok(Parsed::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("loadgen: {message}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let tls = match config.tls_ca.as_deref().map(tls::client_config).transpose() {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("loadgen: {message}");
            return ExitCode::from(2);
        }
    };
    let outcome = match config.mode {
        Mode::Tcp | Mode::Unix | Mode::Line | Mode::Idle => stream::run(&config, tls),
        Mode::Connect => connect::run(&config, tls),
        Mode::Udp => udp::run(&config),
    };
    match outcome {
        Ok((recorder, elapsed)) => {
            let summary = recorder.summarize(elapsed);
            println!("{}", summary.to_json(&config, net::cpu_seconds()));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}
