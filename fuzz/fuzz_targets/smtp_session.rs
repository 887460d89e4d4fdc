//! Feeds arbitrary bytes, split at arbitrary points, to an SMTP session. The session must
//! never panic, must keep its buffers bounded, and must always make progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yubin_smtp::{Config, DeliveryOutcome, Event, RcptVerdict, Session};

fuzz_target!(|data: &[u8]| {
    let (splits, input) = data.split_at(data.len().min(4));
    let cfg = Config {
        max_message_size: 4096,
        starttls: true,
        ..Config::default()
    };
    let mut s = Session::new(cfg);
    let mut rest = input;
    let mut i = 0;
    loop {
        let n = match splits.get(i % splits.len().max(1)) {
            Some(&b) => (b as usize % 64) + 1,
            None => rest.len(),
        };
        i += 1;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        s.push(chunk);
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "session does not make progress");
            match s.poll() {
                Event::Reply(r) => assert!((200..600).contains(&r.code)),
                Event::CheckRecipient(a) => s.rcpt_verdict(if a.len() % 2 == 0 {
                    RcptVerdict::Accept
                } else {
                    RcptVerdict::UnknownUser
                }),
                Event::Deliver(m) => {
                    assert!(m.data.len() <= 4096);
                    s.delivery_result(DeliveryOutcome::Stored { id: "F".into() })
                }
                Event::StartTls => s.tls_started(),
                Event::Close => return,
                Event::NeedInput => break,
            }
        }
        if rest.is_empty() {
            return;
        }
    }
});
