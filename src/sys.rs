//! The one module allowed `unsafe`: small syscalls monoio does not expose,
//! the SSE2 byte classes of the screen's searches (`Bytes16`) and the
//! JSON string scans (`json_string_stop`), ASCII as `str` (`ascii_str`).
//! Every block says why it is sound.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Set the process up before the first connection: no transparent huge
/// pages. mimalloc asks for them on its arenas (`MADV_HUGEPAGE`), and then
/// the first byte touched in 2 MiB makes all of it resident: an idle
/// connection cost ~45 % more memory than it holds (2.9 KiB instead of 2.0
/// measured with 5,000). Call first thing in `main`.
pub fn allocator_setup() {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and changes no memory
    // the program sees; it fails only on kernels without it (then nothing
    // changes, which is harmless).
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Give memory this thread freed back to the system (mimalloc's
/// `mi_collect`): freed pages are otherwise returned only as the thread
/// goes on allocating, so a worker gone quiet after a burst would keep them.
/// `all`: every free page, at once (a worker quiet for three ticks, once
/// per quiet spell: it costs a walk of the heap, never paid while busy).
pub(crate) fn return_free_memory(all: bool) {
    // SAFETY: `mi_collect` takes no pointers and only touches the calling
    // thread's own heap and mimalloc's thread-safe arenas; it is sound from
    // any thread at any time (with or without mimalloc as the global
    // allocator: then its heap is simply empty).
    unsafe { libmimalloc_sys::mi_collect(all) }
}

/// What a non-blocking one-byte `MSG_PEEK` sees on a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peek {
    /// Open, nothing to read.
    Quiet,
    /// Bytes are waiting.
    Data,
    /// The peer closed or reset the connection.
    Closed,
}

pub(crate) fn peek(stream: &impl AsRawFd) -> Peek {
    // SAFETY: the fd belongs to `stream`, which is borrowed for the whole
    // call, so it stays open while `fd` is in use; nothing takes ownership.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let sock = socket2::SockRef::from(&fd);
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match sock.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(0) => Peek::Closed,
        Ok(_) => Peek::Data,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Peek::Quiet,
        Err(_) => Peek::Closed,
    }
}

/// Whether an idle connection is no longer usable: closed, reset, or with
/// bytes nobody asked for.
pub(crate) fn idle_connection_is_dead(stream: &impl AsRawFd) -> bool {
    peek(stream) != Peek::Quiet
}

/// Raise the soft limit of open files to the hard limit (as nginx's
/// `worker_rlimit_nofile` does): each client connection and each upstream
/// connection is a descriptor, and the usual soft limit of 1024 would cap the
/// proxy far below `limits.max_connections`. Returns (before, after).
pub(crate) fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

/// A buffer handed to the kernel that is wiped when dropped, if `wipe`:
/// an upstream request head that carries a user's token. When a write is
/// cancelled (a timeout), io_uring keeps the buffer until the kernel is done
/// with it and drops it then; this is how that late drop wipes it too.
pub(crate) struct WipeOnDrop {
    pub buf: Vec<u8>,
    pub wipe: bool,
}

impl WipeOnDrop {
    /// The buffer back, unwiped (the caller wipes or reuses it).
    pub(crate) fn into_inner(mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

impl Drop for WipeOnDrop {
    fn drop(&mut self) {
        if self.wipe {
            zeroize::Zeroize::zeroize(&mut self.buf);
        }
    }
}

// SAFETY: exactly as monoio's own impl for `Vec<u8>`, which it delegates
// to: the pointer is the vector's heap buffer, which does not move when the
// struct is moved (monoio pins the struct; the heap allocation never moves
// while nothing resizes it, and nothing can while the kernel holds it), and
// `bytes_init` is the vector's length, all initialised.
unsafe impl monoio::buf::IoBuf for WipeOnDrop {
    fn read_ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.buf.len()
    }
}

/// Sixteen bytes classified at once, for the screen's byte searches: SSE2
/// (part of every x86-64 target) there, one byte at a time elsewhere. Each
/// class is a mask: bit i for byte i.
#[derive(Clone, Copy)]
pub(crate) struct Bytes16(
    #[cfg(target_arch = "x86_64")] std::arch::x86_64::__m128i,
    #[cfg(not(target_arch = "x86_64"))] [u8; 16],
);

#[cfg(target_arch = "x86_64")]
impl Bytes16 {
    #[inline(always)]
    pub(crate) fn load(b: &[u8; 16]) -> Bytes16 {
        // SAFETY: `_mm_loadu_si128` reads 16 bytes with no alignment
        // requirement, and `b` is 16 readable bytes; SSE2 is enabled on
        // every x86-64 target.
        Bytes16(unsafe { std::arch::x86_64::_mm_loadu_si128(b.as_ptr().cast()) })
    }

    /// The bytes equal to `c`.
    #[inline(always)]
    pub(crate) fn eq(self, c: u8) -> u32 {
        use std::arch::x86_64::*;
        // SAFETY: register-only SSE2 intrinsics (SSE2 is enabled on every
        // x86-64 target); no memory is read or written.
        unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(self.0, _mm_set1_epi8(c as i8))) as u32 }
    }

    /// The bytes in `lo..=hi`.
    #[inline(always)]
    pub(crate) fn in_range(self, lo: u8, hi: u8) -> u32 {
        use std::arch::x86_64::*;
        // SAFETY: register-only SSE2 intrinsics (SSE2 is enabled on every
        // x86-64 target); no memory is read or written.
        unsafe {
            let d = _mm_sub_epi8(self.0, _mm_set1_epi8(lo as i8));
            let span = _mm_set1_epi8(hi.wrapping_sub(lo) as i8);
            _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(d, span), d)) as u32
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Bytes16 {
    #[inline(always)]
    pub(crate) fn load(b: &[u8; 16]) -> Bytes16 {
        Bytes16(*b)
    }

    fn mask(self, f: impl Fn(u8) -> bool) -> u32 {
        (self.0.iter().enumerate()).fold(0, |m, (i, &c)| m | (u32::from(f(c)) << i))
    }

    /// The bytes equal to `c`.
    pub(crate) fn eq(self, c: u8) -> u32 {
        self.mask(|x| x == c)
    }

    /// The bytes in `lo..=hi`.
    pub(crate) fn in_range(self, lo: u8, hi: u8) -> u32 {
        self.mask(|x| (lo..=hi).contains(&x))
    }
}

/// `s` as a `str` when it is all ASCII. For the short strings of a head: a
/// word-at-a-time check, where `str::from_utf8` costs about 9 instructions
/// a byte.
#[inline]
pub(crate) fn ascii_str(s: &[u8]) -> Option<&str> {
    // SAFETY: ASCII is valid UTF-8.
    s.is_ascii()
        .then(|| unsafe { std::str::from_utf8_unchecked(s) })
}

/// `bytes` in lower-case hex, two digits a byte (hashes in audit records and
/// pinned definitions).
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    for &b in bytes {
        out.extend_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

/// `prefix` and `bytes` in lower-case hex, as text (`sha256:<hex>`, a
/// hash's label and value).
pub(crate) fn prefixed_hex(prefix: &str, bytes: &[u8]) -> String {
    let mut out = String::with_capacity(prefix.len() + 2 * bytes.len());
    out.push_str(prefix);
    for &b in bytes {
        out.extend(HEX_PAIRS[usize::from(b)].map(char::from));
    }
    out
}

/// Every byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX[b >> 4], HEX[b & 15]];
        b += 1;
    }
    pairs
};

/// The offset of the first byte of `s` that ends a JSON string's plain
/// run: a quote, a backslash or a control character (below 0x20). The first
/// 16 bytes with SSE2, inlined; then 32 bytes a step with AVX2 where the CPU
/// has it, else 64 with SSE2 (on x86-64), then 16, then one.
#[inline]
pub(crate) fn json_string_stop(s: &[u8]) -> Option<usize> {
    // Most strings of a message (keys, methods, names, ids) end within 16
    // bytes: that first step is made where this is called, with no call and
    // no check of the CPU; the rest out of line.
    if let Some(first) = s.first_chunk::<16>() {
        let v = Bytes16::load(first);
        let found = v.eq(b'"') | v.eq(b'\\') | v.in_range(0, 0x1f);
        if found != 0 {
            return Some(found.trailing_zeros() as usize);
        }
    }
    longer_string_stop(s)
}

/// [`json_string_stop`] past its first step (which it reads again).
#[inline(never)]
fn longer_string_stop(s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    string_stop(s, avx2)
}

/// [`json_string_stop`], with AVX2 when `avx2` (which the CPU must have).
#[inline(always)]
fn string_stop(s: &[u8], avx2: bool) -> Option<usize> {
    let mut at = 0;
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the CPU has AVX2 (the caller checked).
        match unsafe { stops_avx2(s) } {
            Ok(k) => return Some(k),
            Err(done) => at = done,
        }
    } else {
        while let Some(block) = s.get(at..).and_then(|t| t.first_chunk::<64>()) {
            if let Some(k) = stops64(block) {
                return Some(at + k);
            }
            at += 64;
        }
    }
    while let Some(chunk) = s.get(at..).and_then(|t| t.first_chunk::<16>()) {
        let v = Bytes16::load(chunk);
        let found = v.eq(b'"') | v.eq(b'\\') | v.in_range(0, 0x1f);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize);
        }
        at += 16;
    }
    let tail = s.get(at..)?;
    let k = tail
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    Some(at + k)
}

/// [`json_string_stop`] over the whole 32-byte steps of `s` with AVX2:
/// `Ok` the stop's offset, `Err` how far it read without one.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stops_avx2(s: &[u8]) -> Result<usize, usize> {
    use std::arch::x86_64::*;
    let mut at = 0;
    while at + 32 <= s.len() {
        // SAFETY: `_mm256_loadu_si256` reads 32 bytes with no alignment
        // requirement, at `at`, with `at + 32` bytes readable; the rest are
        // register-only AVX2 intrinsics, which the caller vouches for.
        let found = unsafe {
            let x = _mm256_loadu_si256(s.as_ptr().add(at).cast());
            let quote = _mm256_cmpeq_epi8(x, _mm256_set1_epi8(b'"' as i8));
            let slash = _mm256_cmpeq_epi8(x, _mm256_set1_epi8(b'\\' as i8));
            let control = _mm256_cmpeq_epi8(_mm256_min_epu8(x, _mm256_set1_epi8(0x1f)), x);
            _mm256_movemask_epi8(_mm256_or_si256(_mm256_or_si256(quote, slash), control)) as u32
        };
        if found != 0 {
            return Ok(at + found.trailing_zeros() as usize);
        }
        at += 32;
    }
    Err(at)
}

/// [`json_string_stop`] within one 64-byte block with SSE2: the four 16-byte
/// masks are OR-ed and tested once; only a block with a stop is located.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn stops64(block: &[u8; 64]) -> Option<usize> {
    use std::arch::x86_64::*;
    // SAFETY: `_mm_loadu_si128` reads 16 bytes with no alignment
    // requirement, each at offset 0, 16, 32 or 48 of the 64 readable bytes
    // of `block`; the rest are register-only SSE2 intrinsics (SSE2 is
    // enabled on every x86-64 target).
    unsafe {
        let stops = |k: usize| {
            let x = _mm_loadu_si128(block.as_ptr().add(16 * k).cast());
            let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
            let slash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
            let control = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
            _mm_or_si128(_mm_or_si128(quote, slash), control)
        };
        let m = [stops(0), stops(1), stops(2), stops(3)];
        let any = _mm_or_si128(_mm_or_si128(m[0], m[1]), _mm_or_si128(m[2], m[3]));
        if _mm_movemask_epi8(any) == 0 {
            return None;
        }
        let bits = m.iter().enumerate().fold(0u64, |b, (k, v)| {
            b | (u64::from(_mm_movemask_epi8(*v) as u16) << (16 * k))
        });
        Some(bits.trailing_zeros() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hex_is_two_lower_case_digits_a_byte() {
        let mut out = b"x:".to_vec();
        push_hex(&mut out, &[0x00, 0x0f, 0xa5, 0xff, 0x10]);
        assert_eq!(out, b"x:000fa5ff10");
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        push_hex(&mut out, &all);
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(out, expected.as_bytes());
        assert_eq!(prefixed_hex("sha256:", &all), format!("sha256:{expected}"));
        assert_eq!(prefixed_hex("", &[]), "");
    }

    #[test]
    fn open_files_limit_is_raised_to_the_hard_limit() {
        let (before, after) = raise_open_files_limit().unwrap();
        assert!(after >= before);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_open_files_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((lim.rlim_cur, lim.rlim_cur), (after, lim.rlim_max));
    }

    #[test]
    fn detects_closed_and_chatty_peers() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        assert_eq!(peek(&c), Peek::Quiet);
        assert!(!idle_connection_is_dead(&c), "quiet and open");
        s.write_all(b"x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(peek(&c), Peek::Data);
        assert!(idle_connection_is_dead(&c), "unexpected bytes");
        let c2 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        drop(l.accept().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(peek(&c2), Peek::Closed);
        assert!(idle_connection_is_dead(&c2), "peer closed");
    }

    type StopAt = fn(&[u8]) -> Option<usize>;

    /// Every way of finding a stop this CPU can run: SSE2, AVX2 when it
    /// has it, and the choice `json_string_stop` makes.
    fn ways_to_stop() -> Vec<StopAt> {
        let mut ways: Vec<StopAt> = vec![json_string_stop, |s| string_stop(s, false)];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            ways.push(|s| string_stop(s, true));
        }
        ways
    }

    #[test]
    fn ascii_is_a_str_and_nothing_else_is() {
        assert_eq!(ascii_str(b""), Some(""));
        assert_eq!(ascii_str(b"example.com:8443"), Some("example.com:8443"));
        assert_eq!(
            ascii_str(&(0..0x80).collect::<Vec<u8>>()).map(str::len),
            Some(0x80)
        );
        // UTF-8 that is not ASCII, and bytes that are not UTF-8 at all.
        for bad in [&b"ex\xc3\xa9.com"[..], b"\x80", b"a\xff", b"\xc3"] {
            assert_eq!(ascii_str(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn json_string_stops_are_found_at_every_offset() {
        let naive = |s: &[u8]| s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        for len in 0..200 {
            let plain: Vec<u8> = (0..len)
                .map(|i| (b'a' + (i % 26) as u8) | (0x80 * u8::from(i % 3 == 0)))
                .collect();
            for stop_at in ways_to_stop() {
                assert_eq!(stop_at(&plain), naive(&plain));
                for at in 0..len {
                    for stop in [b'"', b'\\', 0, 0x1f] {
                        let mut s = plain.clone();
                        s[at] = stop;
                        // A second stop after the first changes nothing.
                        if at + 7 < len {
                            s[at + 7] = b'"';
                        }
                        assert_eq!(stop_at(&s), Some(at), "len {len} at {at}");
                    }
                }
            }
        }
        for stop_at in ways_to_stop() {
            for c in [0x20u8, 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']'] {
                assert_eq!(stop_at(&[c; 100]), None);
            }
        }
    }

    #[test]
    fn byte_classes_match_a_naive_reading() {
        let all: Vec<u8> = (0..=255).collect();
        for chunk in all.chunks_exact(16) {
            let b = Bytes16::load(chunk.try_into().unwrap());
            let mask = |f: &dyn Fn(u8) -> bool| {
                (chunk.iter().enumerate()).fold(0u32, |m, (i, &c)| m | (u32::from(f(c)) << i))
            };
            for c in [0, b'"', b'\\', b'0', 0x7f, 0x80, 0xff] {
                assert_eq!(b.eq(c), mask(&|x| x == c));
            }
            for (lo, hi) in [
                (0, 0x1f),
                (b'0', b'9'),
                (b'A', b'Z'),
                (0x80, 0xff),
                (0x20, 0x20),
            ] {
                assert_eq!(b.in_range(lo, hi), mask(&|x| (lo..=hi).contains(&x)));
            }
        }
    }
}
