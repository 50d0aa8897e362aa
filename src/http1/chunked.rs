//! Incremental, strict decoder for `Transfer-Encoding: chunked` bodies (RFC 9112
//! §7.1). Fed arbitrary splits of the stream it produces the same data and the
//! same verdict as when fed whole. After an error it stays failed: the caller
//! closes the connection, it never resynchronises.

/// Why a chunked body was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    BadSize,
    SizeTooLarge,
    BadLineEnd,
    BadExtension,
    ExtensionTooLong,
    BadTrailer,
    TrailerTooLarge,
}

impl ChunkError {
    pub fn reason(self) -> &'static str {
        match self {
            ChunkError::BadSize => "invalid chunk size",
            ChunkError::SizeTooLarge => "chunk size overflow",
            ChunkError::BadLineEnd => "invalid line ending in chunked body",
            ChunkError::BadExtension => "invalid chunk extension",
            ChunkError::ExtensionTooLong => "chunk extension too long",
            ChunkError::BadTrailer => "invalid trailer field",
            ChunkError::TrailerTooLarge => "trailer section too large",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size (`digits` counts them).
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    /// Inside chunk extensions, until CR (`Ext` says where).
    Ext(Ext),
    /// Saw CR after the size line; LF must follow.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
    Failed,
}

/// Where the decoder is within the extensions of a size line. RFC 9112 §7.1.1:
/// `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`, so
/// whitespace is allowed around `;` and `=` but not before the line's CRLF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    /// After `;`: optional whitespace, then a name.
    BeforeName,
    /// Inside a name (a token).
    Name,
    /// Whitespace after a name: `=` or `;` must follow.
    AfterName,
    /// After `=`: optional whitespace, then a value.
    BeforeValue,
    /// Inside a token value.
    Token,
    /// Inside a quoted-string value.
    Quoted,
    /// After a backslash inside a quoted string.
    QuotedPair,
    /// Right after the closing quote.
    QuotedEnd,
    /// Whitespace after a value: `;` must follow.
    AfterValue,
}

/// Limits of the decoder.
pub(crate) const MAX_SIZE_DIGITS: u32 = 16;
pub(crate) const MAX_EXTENSION_BYTES: usize = 1024;
pub(crate) const MAX_TRAILER_BYTES: usize = 8 * 1024;
/// Chunk sizes above this are refused outright (the body limit is far below).
const MAX_CHUNK: u64 = 1 << 48;

/// One step of progress.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Body data found within the consumed input (`start..end` of the input).
    pub data: std::ops::Range<usize>,
    /// The final CRLF was consumed: the body is complete.
    pub done: bool,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u32,
    ext_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            ext_len: 0,
            trailer_len: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `input` until one run of data is found, the body ends, or the
    /// input is exhausted. Call again with the unconsumed rest.
    pub fn decode(&mut self, input: &[u8]) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size | State::SizeWs | State::Ext(_) | State::SizeLf => {
                    if let Err(e) = self.size_line(b) {
                        return self.fail(e);
                    }
                }
                State::Data => {
                    let take =
                        (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Progress {
                        consumed: i + take,
                        data: i..i + take,
                        done: false,
                    });
                }
                State::DataCr => {
                    if b != b'\r' {
                        return self.fail(ChunkError::BadLineEnd);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return self.fail(ChunkError::BadLineEnd);
                    }
                    self.state = State::Size;
                }
                State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf => {
                    if let Err(e) = self.trailer_line(b) {
                        return self.fail(e);
                    }
                }
                State::EndLf => {
                    if b != b'\n' {
                        return self.fail(ChunkError::BadLineEnd);
                    }
                    self.state = State::Done;
                    return Ok(Progress {
                        consumed: i + 1,
                        data: 0..0,
                        done: true,
                    });
                }
                State::Done => {
                    return Ok(Progress {
                        consumed: i,
                        data: 0..0,
                        done: true,
                    })
                }
                State::Failed => return Err(ChunkError::BadSize),
            }
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            data: 0..0,
            done: self.state == State::Done,
        })
    }

    /// One byte of a chunk-size line: size, whitespace, extensions, CRLF.
    #[inline]
    fn size_line(&mut self, b: u8) -> Result<(), ChunkError> {
        match self.state {
            State::Size => match hex(b) {
                Some(d) => {
                    self.digits += 1;
                    if self.digits > MAX_SIZE_DIGITS {
                        return Err(ChunkError::SizeTooLarge);
                    }
                    self.size = (self.size << 4) | u64::from(d);
                    if self.size > MAX_CHUNK {
                        return Err(ChunkError::SizeTooLarge);
                    }
                }
                None if self.digits == 0 => return Err(ChunkError::BadSize),
                None => match b {
                    b'\r' => self.state = State::SizeLf,
                    b';' => self.state = State::Ext(Ext::BeforeName),
                    b' ' | b'\t' => self.state = State::SizeWs,
                    _ => return Err(ChunkError::BadSize),
                },
            },
            State::SizeWs => match b {
                b' ' | b'\t' => {}
                b';' => self.state = State::Ext(Ext::BeforeName),
                _ => return Err(ChunkError::BadSize),
            },
            State::Ext(at) => {
                self.ext_len += 1;
                if self.ext_len > MAX_EXTENSION_BYTES {
                    return Err(ChunkError::ExtensionTooLong);
                }
                match ext_next(at, b) {
                    Some(next) => self.state = next,
                    None => return Err(ChunkError::BadExtension),
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnd);
                }
                self.state = if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                };
                self.digits = 0;
                self.ext_len = 0;
            }
            _ => {}
        }
        Ok(())
    }

    /// One byte of the trailer section.
    #[inline]
    fn trailer_line(&mut self, b: u8) -> Result<(), ChunkError> {
        match self.state {
            State::TrailerStart => match b {
                b'\r' => self.state = State::EndLf,
                b if super::is_tchar(b) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkError::BadTrailer),
            },
            State::TrailerName => match b {
                b':' => self.trailer_byte(State::TrailerValue)?,
                b if super::is_tchar(b) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkError::BadTrailer),
            },
            State::TrailerValue => match b {
                b'\r' => self.trailer_byte(State::TrailerLf)?,
                b'\t' | 0x20..=0x7e | 0x80..=0xff => self.trailer_byte(State::TrailerValue)?,
                _ => return Err(ChunkError::BadTrailer),
            },
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnd);
                }
                self.state = State::TrailerStart;
            }
            _ => {}
        }
        Ok(())
    }

    fn trailer_byte(&mut self, next: State) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILER_BYTES {
            self.state = State::Failed;
            return Err(ChunkError::TrailerTooLarge);
        }
        self.state = next;
        Ok(())
    }

    fn fail(&mut self, e: ChunkError) -> Result<Progress, ChunkError> {
        self.state = State::Failed;
        Err(e)
    }
}

/// The state after extension byte `b` read in `at`, or `None` when the
/// grammar does not allow `b` there. CR ends the extensions, and only after a
/// complete name or value: `5;`, `5;a=` and `5;a ` are all refused.
fn ext_next(at: Ext, b: u8) -> Option<State> {
    use Ext::*;
    let next = match (at, b) {
        (BeforeName, b' ' | b'\t') => BeforeName,
        (BeforeName | Name, c) if super::is_tchar(c) => Name,
        (Name | AfterName, b' ' | b'\t') => AfterName,
        (Name | AfterName, b'=') => BeforeValue,
        (BeforeValue, b' ' | b'\t') => BeforeValue,
        (BeforeValue | Token, c) if super::is_tchar(c) => Token,
        (BeforeValue, b'"') => Quoted,
        (Quoted, b'"') => QuotedEnd,
        (Quoted, b'\\') => QuotedPair,
        (Quoted, c) if is_qdtext(c) => Quoted,
        (QuotedPair, c) if is_quoted_pair_text(c) => Quoted,
        (Token | QuotedEnd | AfterValue, b' ' | b'\t') => AfterValue,
        (Name | AfterName | Token | QuotedEnd | AfterValue, b';') => BeforeName,
        (Name | Token | QuotedEnd, b'\r') => return Some(State::SizeLf),
        _ => return None,
    };
    Some(State::Ext(next))
}

/// RFC 9110 `qdtext`: what a quoted string holds unescaped (obs-text included).
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

/// What may follow a backslash in an RFC 9110 `quoted-pair`.
fn is_quoted_pair_text(b: u8) -> bool {
    matches!(b, b'\t' | 0x20..=0x7e | 0x80..=0xff)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode a complete chunked body held in memory: `Ok((data, consumed))`, or
/// `Ok(None)` when it is incomplete. Used by tests, benches and the fuzz target.
pub fn decode_all(input: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let mut dec = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let p = dec.decode(&input[pos..])?;
        out.extend_from_slice(&input[pos + p.data.start..pos + p.data.end]);
        pos += p.consumed;
        if p.done {
            return Ok(Some((out, pos)));
        }
        if p.consumed == 0 || pos == input.len() {
            return Ok(None);
        }
    }
}

/// Append `data` to `out` as one chunk.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut tmp = [0u8; 16];
    let mut n = data.len();
    let mut i = tmp.len();
    while n > 0 || i == tmp.len() {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
    }
    out.extend_from_slice(&tmp[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5 ;ext\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"005\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", b"hello"),
            (b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", b"hello"),
        ];
        for (input, data) in ok {
            let (out, used) = decode_all(input).unwrap().unwrap();
            assert_eq!(&out[..], *data, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(used, input.len());
        }
        let bad: &[&[u8]] = &[
            b"\r\n",                         // empty size
            b"-5\r\nhello\r\n0\r\n\r\n",     // signed
            b"+5\r\nhello\r\n0\r\n\r\n",     // signed
            b"0x5\r\nhello\r\n0\r\n\r\n",    // prefixed
            b"5x\r\nhello\r\n0\r\n\r\n",     // junk after digits
            b"5\nhello\r\n0\r\n\r\n",        // bare LF
            b"5\rXhello\r\n0\r\n\r\n",       // \rX
            b"5;a\rb\r\nhello\r\n0\r\n\r\n", // CR inside extension
            b"5;a\nb\r\nhello\r\n0\r\n\r\n", // LF inside extension
            b"5\r\nhelloXX0\r\n\r\n",        // data not followed by CRLF
            b"5\r\nhello\n0\r\n\r\n",        // bare LF after data
            b"fffffffffffffffff\r\n",        // 17 digits
            b"ffffffffffffff\r\n",           // above the cap
            b"0\r\nbad trailer\r\n\r\n",     // trailer without colon
            b"0\r\n\r\r\n",                  // bad final line
            b"0\r\n : x\r\n\r\n",            // trailer obs-fold
        ];
        for input in bad {
            assert!(
                decode_all(input).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long_ext = [
            b"5;".as_slice(),
            &[b'a'; MAX_EXTENSION_BYTES + 1],
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(decode_all(&long_ext), Err(ChunkError::ExtensionTooLong));
        assert_eq!(decode_all(b"5\r\nhel").unwrap(), None);
    }

    /// A body of one 40-byte chunk whose size line is `line`, then the last chunk.
    fn with_ext(line: &[u8]) -> Vec<u8> {
        [line, b"\r\n", &[b'x'; 40], b"\r\n0\r\n\r\n"].concat()
    }

    #[test]
    fn extension_grammar() {
        let good: &[&[u8]] = &[
            b"28;a=b",
            b"28;a",
            b"28;a;b=c",
            b"28;a=\"b c\"",
            b"28;a=\"\"",
            b"28;a=\"b\\\"c\\\\\"",
            b"28;a=\"\xff\"",
            b"28 ; a = b",
            b"28\t;\ta\t=\t\"b\"\t;\tc",
            b"28;a=b ;c",
            b"28;!#$%&'*+-.^_`|~09azAZ=!#$%&'*+-.^_`|~09azAZ",
        ];
        for line in good {
            let (out, used) = decode_all(&with_ext(line))
                .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(line)))
                .unwrap();
            assert_eq!(out, [b'x'; 40], "{:?}", String::from_utf8_lossy(line));
            assert_eq!(used, with_ext(line).len());
        }
        let bad: &[&[u8]] = &[
            b"28;",              // no name
            b"28;=b",            // no name before `=`
            b"28;a=",            // no value after `=`
            b"28;a=\"b",         // unterminated quoted string
            b"28;a=b c",         // space inside a token value
            b"28;a=\xff",        // obs-text outside quotes
            b"28;a b",           // space inside a name
            b"28;a\"=b",         // quote inside a name
            b"28;a=b\"",         // quote after a token value
            b"28;a=\"b\"c",      // text after a quoted string
            b"28;a=\"b\x01\"",   // control inside quotes
            b"28;a=\"b\\\x7f\"", // DEL after a backslash
            b"28;a=b;",          // no name after the last `;`
            b"28;;a",            // empty extension
            b"28;a ",            // whitespace before CRLF
            b"28;a=b\t",         // whitespace before CRLF
            b"28;a=@",           // separator as a token value
            b"28;a=b=c",         // second `=`
            b"28;\x00",          // NUL
        ];
        for line in bad {
            assert_eq!(
                decode_all(&with_ext(line)),
                Err(ChunkError::BadExtension),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let input = b"3;x=y\r\nabc\r\n10 ; q = \"a\\\"; b\" ;z\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\nNEXT";
        let (whole, used) = decode_all(input).unwrap().unwrap();
        assert_eq!(used, input.len() - 4);
        for split in 1..input.len() {
            let mut dec = ChunkedDecoder::new();
            let mut out = Vec::new();
            let mut consumed = 0;
            for part in [&input[..split], &input[split..]] {
                let mut pos = 0;
                while pos < part.len() && !dec.is_done() {
                    let p = dec.decode(&part[pos..]).unwrap();
                    out.extend_from_slice(&part[pos + p.data.start..pos + p.data.end]);
                    pos += p.consumed;
                    consumed += p.consumed;
                }
            }
            assert_eq!(out, whole, "split at {split}");
            assert_eq!(consumed, used, "split at {split}");
        }
    }

    #[test]
    fn encodes_chunks() {
        let mut out = Vec::new();
        encode_chunk(&mut out, b"hello world, this is 26 by");
        assert_eq!(out, b"1a\r\nhello world, this is 26 by\r\n");
        let mut back = out.clone();
        back.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            decode_all(&back).unwrap().unwrap().0,
            b"hello world, this is 26 by"
        );
    }
}
