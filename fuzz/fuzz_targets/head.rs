//! Request head parsing + framing decisions, then the chunked decoder on the
//! rest of the input: never panics, stays within bounds, and the decoder gives
//! the same result fed in two arbitrary pieces as fed whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::internal::http1::{decode_all, ChunkedDecoder};
use portcullis::internal::http1::{parse_request, HeadLimits};
use portcullis::internal::http1::Framing;

fuzz_target!(|data: &[u8]| {
    let (split_byte, input) = match data.split_first() {
        Some((b, rest)) => (*b as usize, rest),
        None => return,
    };
    let mut headers = [portcullis::internal::http1::NO_HEADER; 64];
    let limits = HeadLimits { max_header_bytes: 4096, max_headers: 64, max_target_bytes: 1024 };
    let Ok(Some(head)) = parse_request(input, &mut headers, &limits) else {
        // Whatever is not a complete, valid head is rejected or incomplete;
        // both are fine, a panic is not.
        return;
    };
    assert!(head.head_len <= input.len());
    assert!(!head.host.is_empty());
    assert!(head.path.starts_with('/'));
    assert!(!head.path.split(['?', '#']).next().unwrap().split('/').any(|s| s == ".." || s == "."));
    let body = &input[head.head_len..];
    if head.framing != Framing::Chunked {
        return;
    }
    let whole = decode_all(body);
    let split = if body.is_empty() { 0 } else { split_byte % (body.len() + 1) };
    let mut dec = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut consumed = 0usize;
    let mut result = Ok(false);
    'outer: for part in [&body[..split], &body[split..]] {
        let mut pos = 0;
        while pos < part.len() {
            match dec.decode(&part[pos..]) {
                Ok(p) => {
                    out.extend_from_slice(&part[pos + p.data.start..pos + p.data.end]);
                    pos += p.consumed;
                    consumed += p.consumed;
                    if p.done {
                        result = Ok(true);
                        break 'outer;
                    }
                    if p.consumed == 0 {
                        break;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break 'outer;
                }
            }
        }
    }
    match (whole, result) {
        (Ok(Some((data, used))), Ok(true)) => {
            assert_eq!(data, out);
            assert_eq!(used, consumed);
        }
        (Ok(None), Ok(false)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        (w, r) => panic!("whole {w:?} vs split {r:?}"),
    }
});
