//! Seeded random POP3 input (fragments of real commands, SASL exchanges, long repeats and
//! noise): the session never panics or stalls. The fuzz target `pop3_session` runs the same
//! property on coverage-guided input.

use yubin_pop3::testing::exercise;

const FRAGMENTS: &[&[u8]] = &[
    b"USER bob\r\n",
    b"PASS secret pw\r\n",
    b"PASS wrong\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AGJvYgBzZWNyZXQgcHc=\r\n",
    b"AGJvYgBzZWNyZXQgcHc=\r\n",
    b"*\r\n",
    b"=\r\n",
    b"STAT\r\n",
    b"LIST\r\n",
    b"LIST 2\r\n",
    b"RETR 2\r\n",
    b"TOP 2 0\r\n",
    b"TOP 2 99999999999999999999\r\n",
    b"DELE 1\r\n",
    b"RSET\r\n",
    b"UIDL\r\n",
    b"CAPA\r\n",
    b"STLS\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"\xff\xfe",
    b" ",
];

use yubin_model::testing::Rng;

#[test]
fn random_input_never_breaks_the_session() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for round in 0..500 {
        let mut input = Vec::new();
        for _ in 0..rng.below(30) {
            match rng.below(8) {
                0 => input.extend((0..rng.below(300)).map(|_| rng.next_u64() as u8)),
                // A long line, and a long run of one command.
                1 if round % 7 == 0 => input.extend(std::iter::repeat_n(b'A', 100_000)),
                2 if round % 5 == 0 => {
                    let f = FRAGMENTS[rng.below(FRAGMENTS.len())];
                    for _ in 0..200 {
                        input.extend_from_slice(f);
                    }
                }
                _ => input.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]),
            }
        }
        exercise(&input, round % 2 == 0, || rng.below(64) + 1);
    }
}
