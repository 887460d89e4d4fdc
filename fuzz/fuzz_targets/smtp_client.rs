//! The outbound SMTP client state machine against generated remote servers
//! (`yubin_smtp::testing::exercise_client`): never a panic, one result per recipient, an
//! end to every session.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    yubin_smtp::testing::exercise_client(data);
});
