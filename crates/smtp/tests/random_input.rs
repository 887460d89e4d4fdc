//! The fuzz target's property on seeded random input, so it runs with every test: random
//! mixes of real SMTP fragments and noise, split at random points, never make the session
//! panic, stall, or hand over a message above the size limit.

use yubin_smtp::Config;
use yubin_smtp::testing::{Rng, exercise};

const FRAGMENTS: &[&[u8]] = &[
    b"EHLO x\r\n",
    b"HELO y\r\n",
    b"MAIL FROM:<a@b.c>\r\n",
    b"MAIL FROM:<> SIZE=10\r\n",
    b"RCPT TO:<d@e.f>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 99999999999999999999\r\n",
    b"\r\n.\r\n",
    b".\r\n",
    b"..\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"STARTTLS\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"\xff\xfe",
    b"MAIL FROM:<\xc3\x28@x>\r\n",
    b"RCPT TO:<<>>\r\n",
    b"AUTH PLAIN\r\n",
    b"Subject: x\r\n",
    b"body line\r\n",
    b"SMTPUTF8",
    b" ",
    b"<",
    b">",
    b":",
];

#[test]
fn random_input_never_breaks_the_session() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _case in 0..3000 {
        let mut input = Vec::new();
        for _ in 0..rng.below(40) {
            if rng.below(4) == 0 {
                let n = rng.below(700);
                input.extend((0..n).map(|_| rng.next_u64() as u8));
            } else {
                input.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]);
            }
        }
        let cfg = Config {
            max_message_size: 1024,
            max_line_length: 512,
            starttls: true,
            ..Config::default()
        };
        exercise(cfg, &input, || rng.below(80) + 1);
    }
}

/// SASL (RFC 4954 AUTH PLAIN / LOGIN) with random and hostile responses: huge base64,
/// NULs, cancels, endless continuation lines. The fuzz target `sasl` runs the same.
#[test]
fn random_sasl_exchanges_never_break_the_session() {
    const SASL: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
        b"AUTH LOGIN Ym9i\r\n",
        b"AUTH CRAM-MD5\r\n",
        b"AGJvYgBzZWNyZXQ=\r\n",
        b"Ym9i\r\n",
        b"c2VjcmV0\r\n",
        b"AAAA\r\n",
        b"====\r\n",
        b"*\r\n",
        b"\r\n",
        b"MAIL FROM:<bob@example.com>\r\n",
    ];
    let mut rng = Rng(0xC2B2_AE3D_27D4_EB4F);
    for case in 0..2000 {
        let mut input = b"EHLO c\r\n".to_vec();
        for _ in 0..rng.below(20) {
            match rng.below(6) {
                0 => {
                    let n = rng.below(300);
                    input.extend((0..n).map(|_| rng.next_u64() as u8));
                }
                // A base64 line far over the line limit.
                1 if case % 9 == 0 => input.extend(std::iter::repeat_n(b'Q', 20_000)),
                _ => input.extend_from_slice(SASL[rng.below(SASL.len())]),
            }
        }
        let cfg = Config {
            auth: true,
            auth_requires_tls: case % 2 == 0,
            submission: case % 3 == 0,
            ..Config::default()
        };
        exercise(cfg, &input, || rng.below(80) + 1);
    }
}
