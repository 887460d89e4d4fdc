//! Password hashing with argon2id (the crate's defaults: RFC 9106 second recommendation).
//!
//! Implementation notes: one argon2 check needs 19 MiB of working memory. Allocated per
//! check (what `PasswordVerifier` does), glibc raised its mmap threshold after the first
//! free and then kept ~2 MiB per login in its arenas: a server with thousands of logged-in
//! IMAP clients held gigabytes (bench/README.md). Checks here borrow their memory from a
//! small pool instead, which also bounds a login storm to `POOL_MAX` checks at a time
//! (argon2 is CPU-bound: more at once would only queue on the cores).

use std::sync::{Condvar, Mutex};

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::{Error, Result};

pub fn hash(password: &str) -> Result<String> {
    if password.is_empty() {
        return Err(Error::Password("must not be empty".into()));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::Password(format!("random salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Password(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Password(e.to_string()))
}

/// What SCRAM-SHA-256 keeps of the password (RFC 5802 §3), in Dovecot's stored form.
pub fn scram(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::Password(format!("random salt: {e}")))?;
    Ok(
        yubin_sasl::ScramCredentials::derive(password, &salt, yubin_sasl::SCRAM_ITERATIONS)
            .to_stored(),
    )
}

/// Does `password` match the PHC string `stored`? (Constant-time comparison.)
pub fn verify(password: &str, stored: &str) -> bool {
    let Ok(h) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (Params::try_from(&h), Algorithm::try_from(h.algorithm))
    else {
        return false;
    };
    let version = match h.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let done = with_memory(blocks, |memory| {
        argon
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, memory)
            .is_ok()
    });
    // `Output` compares in constant time.
    done && Output::new(&out).is_ok_and(|o| o == expected)
}

/// Most argon2 checks running at once (and 19 MiB buffers kept for them).
fn pool_max() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8))
}

struct Pool {
    /// Buffers not in use, and how many exist.
    state: Mutex<(Vec<Vec<Block>>, usize)>,
    returned: Condvar,
}

static POOL: Pool = Pool {
    state: Mutex::new((Vec::new(), 0)),
    returned: Condvar::new(),
};

fn with_memory<R>(blocks: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
    let mut buf = {
        let mut g = POOL.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(b) = g.0.pop() {
                break b;
            }
            if g.1 < pool_max() {
                g.1 += 1;
                break Vec::new();
            }
            g = POOL.returned.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    };
    if buf.len() < blocks {
        buf.resize(blocks, Block::default());
    }
    let r = f(&mut buf[..blocks]);
    POOL.state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .0
        .push(buf);
    POOL.returned.notify_one();
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let h = super::hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse", &h));
        assert!(!super::verify("wrong", &h));
        assert!(!super::verify("x", "not a hash"));
        assert!(super::hash("").is_err());
    }

    #[test]
    fn other_parameters_and_many_threads() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        // A hash made with other parameters (as an older or tuned install would have).
        let params = argon2::Params::new(8, 1, 1, Some(24)).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x10, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let h = a.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(super::verify("pw", &h));
        assert!(!super::verify("pW", &h));
        let good = super::hash("secret").unwrap();
        let threads: Vec<_> = (0..6)
            .map(|i| {
                let good = good.clone();
                std::thread::spawn(move || {
                    super::verify(if i % 2 == 0 { "secret" } else { "no" }, &good)
                })
            })
            .collect();
        let got: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(got, [true, false, true, false, true, false]);
    }
}
