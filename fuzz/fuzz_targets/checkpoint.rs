//! Fuzz target: the checkpoint file reader (`checkpoint::parse`): a truncated, corrupted or
//! foreign file must be rejected with a `CheckpointError`, never a panic; what parses must
//! encode and parse back to itself.
//!
//! The file ends with an FNV-1a checksum, which random mutation almost never gets right, so
//! half the inputs (first byte even) get a correct `checksum=` line appended: that lets the
//! fuzzer reach the key=value parser behind the checksum gate.
#![no_main]

use healert_agent::source::checkpoint;
use libfuzzer_sys::fuzz_target;

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = if mode % 2 == 0 {
        let mut v = rest.to_vec();
        let sum = fnv1a64(&v);
        v.extend_from_slice(format!("checksum={sum:016x}\n").as_bytes());
        v
    } else {
        rest.to_vec()
    };
    match checkpoint::parse(&input) {
        Ok(cp) => {
            let again = checkpoint::parse(&checkpoint::encode(&cp));
            assert!(
                matches!(&again, Ok(c) if *c == cp),
                "round trip changed {cp:?} into {again:?}"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
