//! yubin's IMAP server protocol (IMAP4rev1, RFC 3501), sans-IO.
//!
//! Commands are framed by imap-codec's `Fragmentizer` and decoded by its `CommandCodec`;
//! responses are built as imap-types values and encoded by `ResponseCodec`, so quoting,
//! literals and syntax are the codec's job. This crate decides what each command does
//! through the [`Backend`] trait; it knows nothing of sockets or of how mail is stored.

// Peer data is sliced by bytes and checked, never by `str` index (a byte in the middle of
// a character panics).
#![deny(clippy::string_slice)]

mod backend;
mod ext;
mod extcmd;
#[doc(hidden)]
pub mod fuzzing;
pub mod imapurl;
pub mod message;
mod mutf7;
mod notify;
mod search;
mod seqset;
mod session;
mod sort;
pub mod urlauth;

pub use backend::{BResult, Backend, BackendError};
pub use session::{Config, Event, Session};
pub use urlauth::URLAUTH_KEY_ENTRY;
