//! The IMAP parsers written by hand (commands imap-codec has no types for, the forms cut
//! out before it decodes, IMAP URLs, NOTIFY's grammar) on arbitrary bytes, and on the
//! same bytes wrapped into each command they parse: none may panic, loop or blow up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    yubin_imap::fuzzing::parse_everything(data);
});
