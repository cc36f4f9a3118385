//! `loadgen`: a closed-loop load generator for echo servers on this machine.
//!
//! One single-threaded mio event loop drives every connection, so the client costs one core at
//! most. Each run is bounded by `--duration` and by `--max-requests`, keeps every latency sample
//! for exact percentiles, and prints one JSON line on stdout. See `loadgen --help`.

mod args;
mod connect;
mod net;
mod stats;
mod stream;
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
    let outcome = match config.mode {
        Mode::Tcp | Mode::Unix | Mode::Line => stream::run(&config),
        Mode::Connect => connect::run(&config),
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
