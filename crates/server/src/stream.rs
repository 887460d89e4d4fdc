//! A connection that may be upgraded to TLS in place (STARTTLS).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the TLS handshake owns the socket; never polled.
    Upgrading,
}

impl Stream {
    /// The TLS session's description, when encrypted.
    pub fn tls_description(&self) -> Option<String> {
        match self {
            Stream::Tls(s) => Some(crate::tls::describe(s.get_ref().1)),
            _ => None,
        }
    }

    /// Acknowledge what arrives next at once instead of after the delayed-ACK timer.
    pub fn quickack(&self) {
        #[cfg(target_os = "linux")]
        let _ = match self {
            Stream::Plain(s) => s.set_quickack(true),
            Stream::Tls(s) => s.get_ref().0.set_quickack(true),
            Stream::Upgrading => Ok(()),
        };
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream is being upgraded")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// One deadline for a whole write (and for a TLS handshake): a peer that reads slowly, or
/// not at all, cannot hold a session by it.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Write all of `out` and flush, within [`WRITE_TIMEOUT`] (SMTP, IMAP and POP3 alike).
pub async fn write_within<W: AsyncWrite + Unpin>(w: &mut W, out: &[u8]) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let go = async {
        w.write_all(out).await?;
        w.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, go)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timeout"))?
}

/// The TLS handshake of implicit TLS or STARTTLS/STLS, within [`WRITE_TIMEOUT`].
pub async fn upgrade(server: &crate::Server, stream: Stream) -> io::Result<Stream> {
    let Some(acceptor) = server.tls() else {
        return Err(io::Error::other("no TLS configuration"));
    };
    let Stream::Plain(tcp) = stream else {
        return Err(io::Error::other("already TLS"));
    };
    let tls = tokio::time::timeout(WRITE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"))??;
    Ok(Stream::Tls(Box::new(tls)))
}
