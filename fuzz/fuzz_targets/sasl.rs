//! SASL exchanges (RFC 4954 AUTH PLAIN / LOGIN) with arbitrary responses, after a valid
//! EHLO on an encrypted-as-far-as-the-session-knows connection: never a panic or a stall.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yubin_smtp::Config;
use yubin_smtp::testing::exercise;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mech: &[u8] = match first % 4 {
        0 => b"AUTH PLAIN\r\n",
        1 => b"AUTH LOGIN\r\n",
        2 => b"AUTH PLAIN ",
        _ => b"AUTH LOGIN ",
    };
    let mut input = b"EHLO fuzz\r\n".to_vec();
    input.extend_from_slice(mech);
    input.extend_from_slice(rest);
    let cfg = Config {
        auth: true,
        auth_requires_tls: false,
        submission: first & 4 != 0,
        ..Config::default()
    };
    let mut i = 0usize;
    exercise(cfg, &input, || {
        i += 1;
        (first as usize >> 3).max(1) * i % 47 + 1
    });
});
