//! Digit runs: where card numbers and IBANs may be in a text, found 64
//! bytes at a time.

/// Digits a card number (13) or an IBAN (10, `iban_at`) holds at least;
/// either spans at most 65 bytes, so two 64-byte blocks. Matches never
/// depend on the text around them.
pub(super) const MIN_DIGITS: u32 = 10;

/// Where each run of two or more ASCII digits in `t` starts, in order, in
/// the 64-byte blocks that, with the next block, hold at least `min`
/// digits (a run elsewhere is never part of a match of `min` digits); with
/// each, which of the 64 bytes from it on are digits (bit i: `t[p + i]`).
pub(crate) fn digit_runs(t: &[u8], min: u32, mut found: impl FnMut(usize, u64)) {
    const BLOCK: usize = 64;
    // A u8 sum vectorises (a u32 one measured five times slower).
    let count = |block: &[u8]| -> u32 {
        let digit = |b: &u8| u8::from(b.wrapping_sub(b'0') < 10);
        match <&[u8; BLOCK]>::try_from(block) {
            Ok(full) => u32::from(full.iter().map(digit).fold(0u8, u8::wrapping_add)),
            Err(_) => block.iter().map(|b| u32::from(digit(b))).sum(),
        }
    };
    let mut next = count(&t[..t.len().min(BLOCK)]);
    // The digit bits of the block at `carried.0`, when already read.
    let mut carried = None;
    let mut lo = 0;
    while lo < t.len() {
        let hi = (lo + BLOCK).min(t.len());
        let here = next;
        next = count(&t[hi..(hi + BLOCK).min(t.len())]);
        if here > 0 && here + next >= min {
            let m = match carried {
                Some((at, m)) if at == lo => m,
                _ => digit_bits_at(t, lo),
            };
            let then = digit_bits_at(t, hi);
            carried = Some((hi, then));
            let before = lo > 0 && t[lo - 1].is_ascii_digit();
            let prev = (m << 1) | u64::from(before);
            let after = (m >> 1) | (then << 63);
            let mut starts = m & after & !prev;
            while starts != 0 {
                let o = starts.trailing_zeros();
                let window = (m >> o) | then.checked_shl(64 - o).unwrap_or(0);
                found(lo + o as usize, window);
                starts &= starts - 1;
            }
        }
        lo = hi;
    }
}

/// Bit i set when `t[at + i]` is an ASCII digit (none past the end).
#[inline]
fn digit_bits_at(t: &[u8], at: usize) -> u64 {
    let rest = t.get(at..).unwrap_or_default();
    match rest.get(..64).and_then(|b| <&[u8; 64]>::try_from(b).ok()) {
        Some(block) => digit_bits(block),
        None => {
            (rest.iter().enumerate()).fold(0, |m, (i, c)| m | (u64::from(c.is_ascii_digit()) << i))
        }
    }
}

/// The bytes a card number's first 13 digits span at most (four, then
/// nine each after a separator), as a `digit_runs` window.
pub(super) const CARD_SPAN: u32 = (1 << 22) - 1;

/// Bit 8i + 7 set when byte i of `x` (little-endian) is an ASCII digit.
fn digit_highs(x: u64) -> u64 {
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low = x & !HIGHS;
    let ge0 = low.wrapping_add(ONES * (0x80 - u64::from(b'0')));
    let gt9 = low.wrapping_add(ONES * (0x80 - u64::from(b'9') - 1));
    ge0 & !gt9 & !x & HIGHS
}

/// Bit i set when `block[i]` is an ASCII digit; eight bytes at a time.
fn digit_bits(block: &[u8; 64]) -> u64 {
    // Moves bit 8i (i = 0..8) to bit 56 + i: the products never collide.
    const GATHER: u64 = 0x0102_0408_1020_4080;
    let mut m = 0;
    for (k, word) in block.chunks_exact(8).enumerate() {
        let x = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let d = digit_highs(x) >> 7;
        m |= (d.wrapping_mul(GATHER) >> 56) << (8 * k);
    }
    m
}
