//! Feeds arbitrary bytes to an IMAP session backed by a real store (logged in and with
//! INBOX selected when the first byte is odd). The session must never panic or stall
//! (see `yubin_server::imap::testing::exercise`).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use yubin_server::imap::testing::{exercise, sample_store};

fn store() -> Arc<yubin_server::StoreHandle> {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static STORE: OnceLock<Arc<yubin_server::StoreHandle>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
            sample_store(dir.path())
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut i = 0usize;
    exercise(store(), first & 1 == 1, rest, || {
        i += 1;
        (first as usize >> 1).max(1) * i % 97 + 1
    });
});
