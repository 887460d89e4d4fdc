//! yubin's SMTP server protocol, sans-IO.
//!
//! [`Session`] is fed the client's bytes and returns [`Event`]s: replies to send, and the
//! questions only the host can answer (is this recipient local? is the message stored?).
//! It knows nothing of sockets, TLS libraries, or storage, so every rule of RFC 5321 that it
//! keeps is tested here without a network (see `tests/dialogues.rs`). The client side
//! starts with [`client::ReplyReader`], the bounded reading of a remote server's replies.

// Peer data is sliced by bytes and checked, never by `str` index (a byte in the middle of
// a character panics).
#![deny(clippy::string_slice)]

pub mod client;
mod data;
pub mod dsn;
mod reply;
mod session;
#[doc(hidden)]
pub mod testing;
pub mod trace;

pub use reply::{Esc, Reply};
pub use session::{
    AuthOutcome, Config, DeliveryOutcome, Event, Message, RcptDsn, RcptVerdict, Receiving, Session,
    UrlOutcome,
};
