//! Message framing for reactor servers: splitting a byte stream into messages and framing
//! replies. `raw` delivers whatever one read returned; `line` splits after each `b"\n"`
//! (kept); `length32` reads a 4-byte big-endian length, then that many bytes (delivered
//! without the prefix, and replies get one). This file needs no Python and is tested with
//! `cargo test` and fuzzed (see `fuzz/`).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Raw,
    Line,
    Length32,
}

impl Framing {
    pub fn from_name(name: &str) -> Option<Framing> {
        match name {
            "raw" => Some(Framing::Raw),
            "line" => Some(Framing::Line),
            "length32" => Some(Framing::Length32),
            _ => None,
        }
    }
}

const PREFIX: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A message is (or is announced to be) longer than the limit.
    TooLarge { size: usize, limit: usize },
    /// The peer closed the connection in the middle of a message.
    Truncated { buffered: usize },
    /// A reply too long for a 32-bit length prefix.
    ReplyTooLarge { size: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { size, limit } => write!(
                f,
                "message of at least {size} bytes exceeds max_message_size ({limit})"
            ),
            FrameError::Truncated { buffered } => write!(
                f,
                "connection closed in the middle of a message ({buffered} bytes buffered)"
            ),
            FrameError::ReplyTooLarge { size } => {
                write!(
                    f,
                    "reply of {size} bytes does not fit a 32-bit length prefix"
                )
            }
        }
    }
}

/// Splits one connection's input into messages, keeping what is incomplete.
#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    limit: usize,
    pending: Vec<u8>,
}

impl Decoder {
    pub fn new(framing: Framing, max_message_size: usize) -> Decoder {
        Decoder {
            framing,
            limit: max_message_size.max(1),
            pending: Vec::new(),
        }
    }

    /// The most bytes one read should ask for: for `raw` a read is a message.
    pub fn read_limit(&self, scratch: usize) -> usize {
        match self.framing {
            Framing::Raw => scratch.min(self.limit),
            _ => scratch,
        }
    }

    /// Bytes held back waiting for the rest of a message.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Feed freshly read bytes; `emit` receives each complete message in order.
    pub fn feed(&mut self, input: &[u8], emit: &mut impl FnMut(&[u8])) -> Result<(), FrameError> {
        match self.framing {
            Framing::Raw => {
                if !input.is_empty() {
                    emit(input);
                }
                Ok(())
            }
            Framing::Line => self.feed_lines(input, emit),
            Framing::Length32 => self.feed_length32(input, emit),
        }
    }

    fn feed_lines(
        &mut self,
        mut input: &[u8],
        emit: &mut impl FnMut(&[u8]),
    ) -> Result<(), FrameError> {
        if !self.pending.is_empty() {
            match memchr::memchr(b'\n', input) {
                Some(end) => {
                    let size = self.pending.len() + end + 1;
                    if size > self.limit {
                        return Err(FrameError::TooLarge {
                            size,
                            limit: self.limit,
                        });
                    }
                    self.pending.extend_from_slice(&input[..=end]);
                    emit(&self.pending);
                    self.pending.clear();
                    input = &input[end + 1..];
                }
                None => return self.hold(input),
            }
        }
        while let Some(end) = memchr::memchr(b'\n', input) {
            if end + 1 > self.limit {
                return Err(FrameError::TooLarge {
                    size: end + 1,
                    limit: self.limit,
                });
            }
            emit(&input[..=end]);
            input = &input[end + 1..];
        }
        self.hold(input)
    }

    /// Keep an incomplete line (at most the limit: at end of stream it is a message).
    fn hold(&mut self, tail: &[u8]) -> Result<(), FrameError> {
        let size = self.pending.len() + tail.len();
        if size > self.limit {
            return Err(FrameError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        self.pending.extend_from_slice(tail);
        Ok(())
    }

    fn feed_length32(
        &mut self,
        mut input: &[u8],
        emit: &mut impl FnMut(&[u8]),
    ) -> Result<(), FrameError> {
        loop {
            // Complete a message begun earlier, copying only what it still needs.
            if !self.pending.is_empty() {
                if self.pending.len() < PREFIX {
                    let take = (PREFIX - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.pending.len() < PREFIX {
                        return Ok(());
                    }
                }
                let size = self.announced(&self.pending)?;
                let have = self.pending.len() - PREFIX;
                let take = (size - have).min(input.len());
                self.pending.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.pending.len() - PREFIX < size {
                    return Ok(());
                }
                emit(&self.pending[PREFIX..]);
                self.pending.clear();
            }
            // Whole messages straight from the input.
            while input.len() >= PREFIX {
                let size = self.announced(input)?;
                if input.len() < PREFIX + size {
                    break;
                }
                emit(&input[PREFIX..PREFIX + size]);
                input = &input[PREFIX + size..];
            }
            if input.is_empty() {
                return Ok(());
            }
            self.pending.extend_from_slice(input);
            input = &[];
            if self.pending.len() < PREFIX {
                return Ok(());
            }
            // Validate the prefix at once (a too-large announcement fails before its body).
            self.announced(&self.pending)?;
        }
    }

    fn announced(&self, bytes: &[u8]) -> Result<usize, FrameError> {
        let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if size > self.limit {
            return Err(FrameError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        Ok(size)
    }

    /// The peer closed its side. A last unterminated line is delivered (as iterating a file
    /// yields it); an incomplete length-prefixed message is an error.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) -> Result<(), FrameError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        match self.framing {
            Framing::Line => {
                emit(&pending);
                Ok(())
            }
            _ => Err(FrameError::Truncated {
                buffered: pending.len(),
            }),
        }
    }
}

/// Append `payload` to `out` framed for the wire.
pub fn encode(framing: Framing, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if framing == Framing::Length32 {
        let size = u32::try_from(payload.len()).map_err(|_| FrameError::ReplyTooLarge {
            size: payload.len(),
        })?;
        out.extend_from_slice(&size.to_be_bytes());
    }
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(
        framing: Framing,
        limit: usize,
        input: &[u8],
        chunk: usize,
    ) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut decoder = Decoder::new(framing, limit);
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            decoder.feed(piece, &mut |m| out.push(m.to_vec()))?;
        }
        decoder.finish(&mut |m| out.push(m.to_vec()))?;
        Ok(out)
    }

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            encode(Framing::Length32, m, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn lines_split_across_reads_and_many_per_read() {
        let input = b"alpha\nbe\n\ngamma\n";
        for chunk in 1..=input.len() {
            let got = decode_in_chunks(Framing::Line, 64, input, chunk).unwrap();
            assert_eq!(
                got,
                vec![
                    b"alpha\n".to_vec(),
                    b"be\n".to_vec(),
                    b"\n".to_vec(),
                    b"gamma\n".to_vec()
                ]
            );
        }
    }

    #[test]
    fn line_of_exactly_the_limit_passes_one_more_byte_fails() {
        let exact = b"abcd\n"; // 5 bytes, newline included
        assert_eq!(
            decode_in_chunks(Framing::Line, 5, exact, 2).unwrap(),
            vec![exact.to_vec()]
        );
        assert_eq!(
            decode_in_chunks(Framing::Line, 5, exact, 5).unwrap(),
            vec![exact.to_vec()]
        );
        let over = b"abcde\n";
        for chunk in 1..=over.len() {
            assert!(matches!(
                decode_in_chunks(Framing::Line, 5, over, chunk),
                Err(FrameError::TooLarge { limit: 5, .. })
            ));
        }
    }

    #[test]
    fn an_endless_line_is_refused_before_it_is_all_buffered() {
        let mut decoder = Decoder::new(Framing::Line, 8);
        let mut sink = |_: &[u8]| panic!("no complete message");
        assert!(decoder.feed(b"12345678", &mut sink).is_ok());
        assert!(decoder.feed(b"9", &mut sink).is_err());
    }

    #[test]
    fn an_unterminated_last_line_of_exactly_the_limit_is_delivered_at_eof() {
        let got = decode_in_chunks(Framing::Line, 4, b"abcd", 1).unwrap();
        assert_eq!(got, vec![b"abcd".to_vec()]);
        assert!(decode_in_chunks(Framing::Line, 4, b"abcd\n", 1).is_err());
    }

    #[test]
    fn eof_delivers_a_last_unterminated_line() {
        let got = decode_in_chunks(Framing::Line, 64, b"one\ntwo", 3).unwrap();
        assert_eq!(got, vec![b"one\n".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn length32_round_trips_split_anywhere() {
        let messages: [&[u8]; 4] = [b"", b"x", b"hello world", &[0u8; 300]];
        let input = framed(&messages);
        for chunk in 1..=input.len() {
            let got = decode_in_chunks(Framing::Length32, 300, &input, chunk).unwrap();
            assert_eq!(got, messages.iter().map(|m| m.to_vec()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn length32_limit_is_checked_from_the_prefix() {
        let mut decoder = Decoder::new(Framing::Length32, 10);
        let mut sink = |_: &[u8]| {};
        assert!(decoder.feed(&10u32.to_be_bytes(), &mut sink).is_ok());
        let mut decoder = Decoder::new(Framing::Length32, 10);
        assert_eq!(
            decoder.feed(&11u32.to_be_bytes()[..], &mut sink),
            Err(FrameError::TooLarge {
                size: 11,
                limit: 10
            })
        );
        // Split prefix: still refused as soon as the fourth byte arrives.
        let mut decoder = Decoder::new(Framing::Length32, 10);
        assert!(decoder.feed(&[0, 0], &mut sink).is_ok());
        assert!(decoder.feed(&[1, 0], &mut sink).is_err());
    }

    #[test]
    fn length32_eof_mid_message_is_an_error() {
        let input = framed(&[b"complete", b"cut short"]);
        let cut = &input[..input.len() - 3];
        assert!(matches!(
            decode_in_chunks(Framing::Length32, 64, cut, 4),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn raw_delivers_each_read_and_bounds_the_read_size() {
        let got = decode_in_chunks(Framing::Raw, 64, b"abcdef", 4).unwrap();
        assert_eq!(got, vec![b"abcd".to_vec(), b"ef".to_vec()]);
        assert_eq!(Decoder::new(Framing::Raw, 100).read_limit(65536), 100);
        assert_eq!(Decoder::new(Framing::Line, 100).read_limit(65536), 65536);
    }

    #[test]
    fn framing_names() {
        assert_eq!(Framing::from_name("line"), Some(Framing::Line));
        assert_eq!(Framing::from_name("length32"), Some(Framing::Length32));
        assert_eq!(Framing::from_name("raw"), Some(Framing::Raw));
        assert_eq!(Framing::from_name("json"), None);
    }
}
