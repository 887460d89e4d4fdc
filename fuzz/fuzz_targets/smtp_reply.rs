//! Replies a remote SMTP server may send, read by the outbound client's reply reader in
//! chunks the first byte chooses: never a panic, always progress, nothing kept beyond the
//! line bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yubin_smtp::client::{MAX_REPLY_LINE, ReplyReader};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, mut rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut r = ReplyReader::new();
    while !rest.is_empty() {
        let take = rest.len().min(chunk);
        let (n, got) = r.push(&rest[..take]);
        assert!(n > 0 && n <= take);
        if let Some(Ok(reply)) = got {
            assert!((200..600).contains(&reply.code));
            assert!(reply.lines.iter().all(|l| l.len() <= MAX_REPLY_LINE * 3));
        }
        rest = &rest[n..];
    }
});
