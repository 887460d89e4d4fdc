//! Feeds arbitrary bytes, split at arbitrary points, to an SMTP session. The session must
//! never panic, must keep its buffers bounded, and must always make progress
//! (see `yubin_smtp::testing::exercise`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use yubin_smtp::Config;
use yubin_smtp::testing::exercise;

fuzz_target!(|data: &[u8]| {
    // The first bytes choose how the rest is split into reads.
    let (splits, input) = data.split_at(data.len().min(4));
    let cfg = Config {
        max_message_size: 4096,
        starttls: true,
        ..Config::default()
    };
    let mut i = 0;
    exercise(cfg, input, || {
        i += 1;
        splits
            .get(i % splits.len().max(1))
            .map_or(usize::MAX, |&b| b as usize % 64 + 1)
    });
});
