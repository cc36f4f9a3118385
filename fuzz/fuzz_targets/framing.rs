//! Fuzz the reactor's framer (`rust/framing.rs`): a byte stream cut at arbitrary points is fed
//! through `framing::Decoder` as the stream loop does (reads of at most `read_limit()`
//! bytes, then `finish()` at end of stream, nothing more after an error), for each framing.
//!
//! Invariants checked:
//! - no panic, for any input, limit and cuts;
//! - every emitted message is at most `max_message_size` bytes;
//! - `line`: each message fed out ends with its only `\n`; only `finish()` may emit one
//!   without (non-empty, no `\n`); the messages concatenated are the consumed prefix of the
//!   input, and all of it when nothing failed;
//! - `length32`: re-encoding the emitted messages reproduces the consumed prefix of the input
//!   (all of it when nothing failed); `Truncated { buffered }` accounts for exactly the rest;
//!   `TooLarge { size }` names the size announced by the prefix that follows the prefix;
//! - `raw`: the messages concatenated are the input, none empty;
//! - `line`/`length32`: how the stream is cut changes nothing: the messages and the kind of
//!   failure equal those of the same stream fed in one piece.
#![no_main]

use std::mem::discriminant;

use _core::framing::{Decoder, FrameError, Framing, encode};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// What the stream loop reads at once (`SCRATCH` in `rust/stream_loop.rs`).
const SCRATCH: usize = 64 * 1024;

#[derive(Debug, Arbitrary)]
enum Stream {
    /// Any bytes.
    Bytes(Vec<u8>),
    /// Well-framed messages (so that deep states are reached), then any bytes.
    Messages(Vec<Vec<u8>>, Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Case {
    framing: u8,
    limit: u16,
    cuts: Vec<u16>,
    stream: Stream,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    Feed(FrameError),
    Finish(FrameError),
}

#[derive(Debug)]
struct Outcome {
    messages: Vec<Vec<u8>>,
    /// How many of `messages` came from `finish()`.
    from_finish: usize,
    end: End,
}

fn decode(framing: Framing, limit: usize, pieces: &[&[u8]]) -> Outcome {
    let mut decoder = Decoder::new(framing, limit);
    let mut messages = Vec::new();
    for piece in pieces {
        // A piece is what one write put on the wire; the loop reads it `read_limit` at a time.
        for read in piece.chunks(decoder.read_limit(SCRATCH).max(1)) {
            if let Err(err) = decoder.feed(read, &mut |m: &[u8]| messages.push(m.to_vec())) {
                return Outcome {
                    messages,
                    from_finish: 0,
                    end: End::Feed(err),
                };
            }
        }
    }
    let before = messages.len();
    let end = match decoder.finish(&mut |m: &[u8]| messages.push(m.to_vec())) {
        Ok(()) => End::Clean,
        Err(err) => End::Finish(err),
    };
    Outcome {
        from_finish: messages.len() - before,
        messages,
        end,
    }
}

fn check(framing: Framing, limit: usize, input: &[u8], out: &Outcome) {
    for m in &out.messages {
        assert!(
            m.len() <= limit,
            "message of {} bytes over limit {limit}",
            m.len()
        );
    }
    match framing {
        Framing::Raw => {
            assert_eq!(out.end, End::Clean, "raw framing cannot fail");
            assert!(out.messages.iter().all(|m| !m.is_empty()));
            assert_eq!(out.messages.concat(), input);
        }
        Framing::Line => {
            assert!(out.from_finish <= 1);
            let fed = out.messages.len() - out.from_finish;
            for m in &out.messages[..fed] {
                assert_eq!(memchr_count(m), 1, "line {m:?}");
                assert_eq!(m.last(), Some(&b'\n'));
            }
            for m in &out.messages[fed..] {
                assert!(!m.is_empty() && memchr_count(m) == 0, "last line {m:?}");
            }
            let consumed = out.messages.concat();
            assert_eq!(consumed, input[..consumed.len()]);
            match &out.end {
                End::Clean => assert_eq!(consumed.len(), input.len()),
                End::Feed(FrameError::TooLarge { size, limit: l }) => {
                    assert_eq!(*l, limit);
                    assert!(*size > limit);
                }
                other => panic!("line framing ended with {other:?}"),
            }
        }
        Framing::Length32 => {
            assert_eq!(out.from_finish, 0, "finish() emits no length32 message");
            let mut encoded = Vec::new();
            for m in &out.messages {
                encode(Framing::Length32, m, &mut encoded).expect("small message");
            }
            assert_eq!(
                encoded,
                input[..encoded.len()],
                "re-encoding differs from the input"
            );
            let rest = &input[encoded.len()..];
            match &out.end {
                End::Clean => assert!(rest.is_empty()),
                End::Finish(FrameError::Truncated { buffered }) => {
                    assert!(*buffered > 0);
                    assert_eq!(*buffered, rest.len());
                }
                End::Feed(FrameError::TooLarge { size, limit: l }) => {
                    assert_eq!(*l, limit);
                    assert!(*size > limit);
                    let announced = u32::from_be_bytes(rest[..4].try_into().unwrap());
                    assert_eq!(*size, announced as usize);
                }
                other => panic!("length32 framing ended with {other:?}"),
            }
        }
    }
}

fn memchr_count(m: &[u8]) -> usize {
    m.iter().filter(|&&b| b == b'\n').count()
}

fn cut<'a>(input: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| c as usize % (input.len() + 1))
        .collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

fuzz_target!(|case: Case| {
    let framing = match case.framing % 3 {
        0 => Framing::Raw,
        1 => Framing::Line,
        _ => Framing::Length32,
    };
    // Small limits, so that the limit is hit often; 0 is clamped to 1 by the decoder, as
    // the server refuses 0 before that.
    let limit = (case.limit as usize % 4096) + 1;
    let input = match case.stream {
        Stream::Bytes(bytes) => bytes,
        Stream::Messages(messages, tail) => {
            let mut out = Vec::new();
            for m in &messages {
                if framing == Framing::Line {
                    out.extend_from_slice(m);
                    out.push(b'\n');
                } else {
                    encode(framing, m, &mut out).expect("small message");
                }
            }
            out.extend_from_slice(&tail);
            out
        }
    };
    let pieces = cut(&input, &case.cuts);
    let outcome = decode(framing, limit, &pieces);
    check(framing, limit, &input, &outcome);
    if framing != Framing::Raw {
        // Cut-independence: the same as one piece.
        let whole = decode(framing, limit, &[&input]);
        check(framing, limit, &input, &whole);
        assert_eq!(
            outcome.messages, whole.messages,
            "messages depend on the cuts"
        );
        let kind = |end: &End| match end {
            End::Clean => None,
            End::Feed(e) => Some((0, discriminant(e))),
            End::Finish(e) => Some((1, discriminant(e))),
        };
        assert_eq!(
            kind(&outcome.end),
            kind(&whole.end),
            "failure depends on the cuts"
        );
    }
});
