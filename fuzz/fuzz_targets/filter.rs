//! The parsers of the inbound judgement (header fields, forged Authentication-Results,
//! link domains, list entries, DMARC pct, stored verdicts) on arbitrary bytes and on
//! generated hostile messages: none may panic, loop or blow up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    yubin_filter::exercise(data);
    if let Some((&a, _)) = data.split_first() {
        yubin_filter::exercise(&yubin_filter::generate(u64::from(a) << 8 | data.len() as u64));
    }
});
