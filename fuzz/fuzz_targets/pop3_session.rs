//! Arbitrary bytes, split at arbitrary points, to a POP3 session on an in-memory maildrop:
//! never a panic or a stall (see `yubin_pop3::testing::exercise`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use yubin_pop3::testing::exercise;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut i = 0usize;
    exercise(rest, first & 1 == 1, || {
        i += 1;
        (first as usize >> 1).max(1) * i % 61 + 1
    });
});
