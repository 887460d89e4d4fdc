//! Stored messages of any MIME shape through everything FETCH can ask (BODYSTRUCTURE,
//! BODY, ENVELOPE, sections, BINARY): never a panic or a stack overflow. The first byte
//! chooses raw bytes or the structure-aware generator (deep nesting, long repeats).
#![no_main]

use libfuzzer_sys::fuzz_target;
use yubin_imap::fuzzing::{fetch_everything, generate_message};

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b, rest)) if b & 1 == 1 => fetch_everything(&generate_message(rest)),
        _ => fetch_everything(data),
    };
});
