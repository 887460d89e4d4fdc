//! Seeded, structure-aware random inputs for what a peer controls beyond the command line
//! (the fuzz targets `mime_structure`, `thread_sort` and `list_pattern` run the same
//! properties on coverage-guided input): stored messages of any MIME shape, any References
//! graph, any LIST pattern. Nothing may panic, overflow the stack or take super-linear time.

use yubin_imap::fuzzing::{
    fetch_everything, generate_message, generate_threads, list_matches, list_matches_reference,
};

use yubin_model::testing::Rng;

/// On a thread with a small stack, as the server's blocking threads have (2 MiB).
fn small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn any_mime_structure_can_be_fetched() {
    small_stack(|| {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..150 {
            let len = rng.below(40) + 1;
            let mut seed = rng.bytes(len);
            if round % 10 == 0 {
                // Long runs: a repeated opener (multipart or message/rfc822) thousands deep.
                seed.push(0xFE);
            }
            let raw = generate_message(&seed);
            fetch_everything(&raw);
            // Random damage to a valid structure.
            let mut broken = raw.clone();
            for _ in 0..rng.below(5) {
                let at = rng.below(broken.len());
                broken.truncate(at.max(1));
                let len = rng.below(50);
                broken.extend(rng.bytes(len));
            }
            fetch_everything(&broken);
        }
        // The shapes of the issue, directly.
        fetch_everything(&generate_message(&[2, 0xFF, 0xF1])); // ~50,000 message/rfc822
        fetch_everything(&generate_message(&[0, 0xFB, 0xF9])); // ~3,000 multiparts
    });
}

#[test]
fn any_references_graph_threads() {
    small_stack(|| {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for _ in 0..60 {
            let n = rng.below(900) + 1;
            let seed = rng.bytes(n);
            yubin_imap::fuzzing::thread_everything(&generate_threads(&seed));
        }
    });
}

#[test]
fn list_patterns_agree_with_the_reference_and_stay_fast() {
    let mut rng = Rng(0xA076_1D64_78BD_642F);
    let alphabet = b"ab/*%";
    for _ in 0..20_000 {
        let p: Vec<u8> = (0..rng.below(9))
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let n: Vec<u8> = (0..rng.below(9)).map(|_| alphabet[rng.below(3)]).collect();
        assert_eq!(
            list_matches(&p, &n),
            list_matches_reference(&p, &n),
            "pattern {:?} name {:?}",
            String::from_utf8_lossy(&p),
            String::from_utf8_lossy(&n)
        );
    }
    // Long repeats, which made the old matcher exponential.
    let name = [b"a".repeat(999), b"c".to_vec()].concat();
    for p in [
        b"*a".repeat(500),
        b"%a".repeat(500),
        b"*".repeat(100_000),
        [b"*a".repeat(400), b"*b".to_vec()].concat(),
    ] {
        list_matches(&p, &name);
    }
}
