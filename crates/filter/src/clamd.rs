//! ClamAV's `clamd` INSTREAM protocol (clamd(8), "INSTREAM") without I/O: the request
//! framing and the meaning of the reply.
//!
//! The `z` form of the command ends every message with NUL, so a reply is read up to the
//! first NUL (or [`MAX_REPLY`] bytes from a misbehaving peer). The whole message is sent:
//! clamd decodes MIME itself, archives inside attachments included.

/// The command, NUL-terminated form (`zINSTREAM\0`).
pub const COMMAND: &[u8] = b"zINSTREAM\0";
/// The zero-length chunk that ends the stream.
pub const END: [u8; 4] = [0; 4];
/// Bytes per chunk sent.
pub const CHUNK: usize = 64 * 1024;
/// Longest reply read.
pub const MAX_REPLY: usize = 4096;

/// What a scan said about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    Clean,
    /// The signature's name.
    Infected(String),
    /// The scanner could not answer (down, slow, refused, garbled): what happened.
    Unavailable(String),
    /// Not sent to the scanner (larger than `[filter] clamd_max_bytes`).
    Skipped(String),
}

/// The 4-byte big-endian length before each chunk.
pub fn chunk_header(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// The meaning of a reply: `stream: OK`, `stream: NAME FOUND`, or an error
/// (`INSTREAM size limit exceeded. ERROR`, anything else).
pub fn parse_reply(reply: &[u8]) -> Scan {
    let end = memchr::memchr(0, reply).unwrap_or(reply.len());
    let text = String::from_utf8_lossy(reply.get(..end).unwrap_or_default());
    let text = text.trim();
    let body = text.strip_prefix("stream:").map(str::trim);
    match body {
        Some("OK") => Scan::Clean,
        Some(b) if b.ends_with(" FOUND") => {
            let name = b.trim_end_matches(" FOUND").trim();
            Scan::Infected(crate::headers::clean(name, 100))
        }
        _ => Scan::Unavailable(format!(
            "clamd answered {:?}",
            crate::headers::clean(text, 100)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"stream: OK\0"), Scan::Clean);
        assert_eq!(
            parse_reply(b"stream: Win.Test.EICAR_HDB-1 FOUND\0"),
            Scan::Infected("Win.Test.EICAR_HDB-1".into())
        );
        assert!(matches!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            Scan::Unavailable(_)
        ));
        assert!(matches!(parse_reply(b""), Scan::Unavailable(_)));
        // A hostile name cannot start a header field of its own.
        assert_eq!(
            parse_reply(b"stream: a\r\nX-Evil: 1 FOUND\0"),
            Scan::Infected("a  X-Evil: 1".into())
        );
        assert_eq!(chunk_header(5), [0, 0, 0, 5]);
    }
}
