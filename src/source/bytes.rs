//! Byte searches on the hot paths: a std-only memchr for one byte or either of two, eight
//! bytes at a time (the line reader's newline search, the pruner's string scanning).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Index of the first `needle` byte in `hay`: a std-only memchr, 32 bytes per turn with one
/// branch, then the word that hit.
pub fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    let p = ONES * needle as u64;
    find_with(hay, |w| zero_bytes(w ^ p), |c| c == needle)
}

/// Index of the first `a` or `b` byte in `hay`, in one pass (see [`find_byte`]).
pub fn find_either(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    let (pa, pb) = (ONES * a as u64, ONES * b as u64);
    find_with(
        hay,
        |w| zero_bytes(w ^ pa) | zero_bytes(w ^ pb),
        |c| c == a || c == b,
    )
}

/// High bit set in each zero byte of `x` (exact for the lowest one, which is all we use).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

#[inline(always)]
fn find_with(hay: &[u8], hit: impl Fn(u64) -> u64, is: impl Fn(u8) -> bool) -> Option<usize> {
    let load8 = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&hay[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let mut i = 0;
    while i + 32 <= hay.len() {
        let (w0, w1, w2, w3) = (
            hit(load8(i)),
            hit(load8(i + 8)),
            hit(load8(i + 16)),
            hit(load8(i + 24)),
        );
        if w0 | w1 | w2 | w3 != 0 {
            break;
        }
        i += 32;
    }
    while i + 8 <= hay.len() {
        let m = hit(load8(i));
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay[i..].iter().position(|&c| is(c)).map(|p| i + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn find_byte_matches_position() {
        let hay: Vec<u8> = (0..200u8)
            .map(|i| if i % 37 == 36 { b'\n' } else { b'a' + i % 26 })
            .collect();
        for start in 0..hay.len() {
            let h = &hay[start..];
            assert_eq!(
                find_byte(h, b'\n'),
                h.iter().position(|&b| b == b'\n'),
                "{start}"
            );
        }
        assert_eq!(find_byte(b"", b'x'), None);
        assert_eq!(find_byte(&[0x80, 0x0a], b'\n'), Some(1));
    }

    proptest! {
        #[test]
        fn find_byte_agrees_with_naive(
            hay in proptest::collection::vec(prop_oneof![9 => 0u8..=255, 1 => Just(b'\n')], 0..300)
        ) {
            prop_assert_eq!(find_byte(&hay, b'\n'), hay.iter().position(|&b| b == b'\n'));
            prop_assert_eq!(
                find_either(&hay, b'"', b'\\'),
                hay.iter().position(|&b| b == b'"' || b == b'\\')
            );
        }
    }
}
