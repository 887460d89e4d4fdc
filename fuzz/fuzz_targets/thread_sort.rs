//! THREAD (REFERENCES, ORDEREDSUBJECT) and SORT over generated headers (chains, loops,
//! self references, 5,000-long References): every message in exactly one thread, bounded
//! depth, no super-linear blow-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yubin_imap::fuzzing::{generate_threads, thread_everything};

fuzz_target!(|data: &[u8]| {
    thread_everything(&generate_threads(data));
});
