//! Digit runs: where card numbers and IBANs may be in a text, found 64
//! bytes at a time.

use crate::sys::Bytes16;

/// Where each run of two or more ASCII digits in `t` starts, in order, in
/// the 64-byte blocks that, with the next block, hold at least `min`
/// digits (a run elsewhere is never part of a match of `min` digits); with
/// each, which of the 64 bytes from it on are digits (bit i: `t[p + i]`).
#[cfg(test)]
pub(crate) fn digit_runs(t: &[u8], min: u32, found: impl FnMut(usize, u64)) {
    runs(t, min, |_, _, _| u64::MAX, found);
}

/// The runs of `digit_runs` (any number of digits around them) that may
/// begin a card number (`card`: four digits at least) or follow an IBAN's
/// country code (`iban`: two ASCII capital letters before), kept a block
/// of run starts at a time: most runs (numbers, dates, ids) are neither
/// and cost no call.
pub(crate) fn card_or_iban_runs(t: &[u8], card: bool, iban: bool, found: impl FnMut(usize, u64)) {
    let keep = |lo: usize, m: u64, then: u64| {
        let mut keep = 0;
        if card {
            // Bit i: t[lo + i + k] is a digit.
            let ahead = |k: u32| (m >> k) | (then << (64 - k));
            keep |= m & ahead(1) & ahead(2) & ahead(3);
        }
        if iban {
            let up = class_bits(t, lo, b'A', b'Z');
            // Whether t[lo - i] is a capital.
            let capital = |i: usize| u64::from(i <= lo && t[lo - i].is_ascii_uppercase());
            keep |= ((up << 1) | capital(1)) & ((up << 2) | (capital(1) << 1) | capital(2));
        }
        keep
    };
    // No count of digits per block: a card start's window is checked for
    // the 13 digits a card holds, and `iban_at` counts an IBAN's ten.
    runs(t, 0, keep, found);
}

/// `digit_runs`, keeping in each block (at `lo`, digit bits `m`, the next
/// block's `then`) the run starts in `keep(lo, m, then)`.
#[inline(always)]
fn runs(
    t: &[u8],
    min: u32,
    keep: impl Fn(usize, u64, u64) -> u64,
    mut found: impl FnMut(usize, u64),
) {
    const BLOCK: usize = 64;
    let mut m = class_bits(t, 0, b'0', b'9');
    // Whether the byte before the block is a digit.
    let mut before = false;
    let mut lo = 0;
    while lo < t.len() {
        let hi = lo + BLOCK;
        let then = class_bits(t, hi, b'0', b'9');
        let prev = (m << 1) | u64::from(before);
        let after = (m >> 1) | (then << 63);
        let mut starts = m & after & !prev;
        if starts != 0 {
            starts &= keep(lo, m, then);
        }
        // Counted last: most blocks have no start to keep.
        if starts != 0 && min > 0 && m.count_ones() + then.count_ones() < min {
            starts = 0;
        }
        while starts != 0 {
            let o = starts.trailing_zeros();
            let window = (m >> o) | then.checked_shl(64 - o).unwrap_or(0);
            found(lo + o as usize, window);
            starts &= starts - 1;
        }
        before = m >> 63 != 0;
        (m, lo) = (then, hi);
    }
}

/// Bit i set when `t[at + i]` is in `lo..=hi` (`i < 64`; none past the
/// end; the class must not hold 0).
#[inline(always)]
pub(crate) fn class_bits(t: &[u8], at: usize, lo: u8, hi: u8) -> u64 {
    let rest = t.get(at..).unwrap_or_default();
    let mut pad = [0; 64];
    let block: &[u8; 64] = match rest.first_chunk::<64>() {
        Some(block) => block,
        None => {
            pad[..rest.len()].copy_from_slice(rest);
            &pad
        }
    };
    let (quarters, _) = block.as_chunks::<16>();
    (quarters.iter().enumerate()).fold(0, |m, (k, q)| {
        m | (u64::from(Bytes16::load(q).in_range(lo, hi)) << (16 * k))
    })
}

/// The bytes a card number's first 13 digits span at most (four, then
/// nine each after a separator), as a `digit_runs` window.
pub(super) const CARD_SPAN: u32 = (1 << 22) - 1;
