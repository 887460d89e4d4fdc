//! LIST patterns: the automaton agrees with the obvious recursive matcher on short input,
//! and answers long patterns (repeats of `*a`, `%`) without backtracking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yubin_imap::fuzzing::{list_matches, list_matches_reference};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let (pattern, name) = rest.split_at((cut as usize).min(rest.len()));
    if pattern.len() <= 12 && name.len() <= 12 {
        assert_eq!(list_matches(pattern, name), list_matches_reference(pattern, name));
    } else {
        // Long: a repeat of the pattern, to reach sizes where backtracking would show.
        let long: Vec<u8> = pattern.iter().copied().cycle().take(20_000).collect();
        list_matches(&long, name);
    }
});
