//! The parsers of the inbound judgement (header fields, forged Authentication-Results,
//! link domains, list entries, DMARC pct, stored verdicts, content rules and the zip
//! reader, clamd replies) on arbitrary bytes and on generated hostile messages (cut to
//! 64 KiB here for speed; the seeded unit test runs them whole): none may panic, loop or
//! blow up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    yubin_filter::exercise(data);
    if let Some((&a, _)) = data.split_first() {
        let g = yubin_filter::generate(u64::from(a) << 8 | data.len() as u64);
        yubin_filter::exercise(g.get(..64 * 1024).unwrap_or(&g));
    }
});
