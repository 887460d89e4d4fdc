//! The MTA-STS policy host (RFC 8461 §3.3): HTTPS that answers one path,
//! `/.well-known/mta-sts.txt`, for `mta-sts.<domain>` of each local domain. hyper does
//! HTTP/1.1; one deadline covers the whole connection, as for every other protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

use crate::Server;

/// A policy host's whole connection: handshake, request, answer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Our policy, as senders fetch it (RFC 8461 §3.2).
pub fn policy_text(cfg: &crate::config::Config) -> String {
    let mut mx = cfg.mta_sts.mx.clone();
    if mx.is_empty() {
        mx.push(cfg.hostname.clone());
    }
    let mut out = format!("version: STSv1\r\nmode: {}\r\n", cfg.mta_sts.mode);
    for m in mx {
        out.push_str(&format!("mx: {m}\r\n"));
    }
    out.push_str(&format!("max_age: {}\r\n", cfg.mta_sts.max_age));
    out
}

/// The `id` of our `_mta-sts` record: changes whenever the policy does (RFC 8461 §3.1).
pub fn policy_id(cfg: &crate::config::Config) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, policy_text(cfg).as_bytes());
    d.as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn handle(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let serve = async {
        let tls = crate::stream::upgrade(&server, crate::stream::Stream::Plain(tcp))
            .await
            .ok()?;
        let svc = hyper::service::service_fn(|req| {
            let server = server.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(&server, &req)) }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
            .await
            .ok()
    };
    if tokio::time::timeout(CONNECTION_DEADLINE, serve)
        .await
        .is_err()
    {
        debug!(%peer, "policy request timed out");
    }
}

fn answer<B>(
    server: &Server,
    req: &hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let reply = |status: u16, body: String| {
        hyper::Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "text/plain")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap_or_default()
    };
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    // Host without a port, and only mta-sts.<a domain of ours>.
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let ours = host
        .strip_prefix("mta-sts.")
        .map(|d| d.trim_end_matches('.'))
        .is_some_and(|d| server.store.is_local_domain(d).unwrap_or(false));
    if req.method() != hyper::Method::GET || req.uri().path() != "/.well-known/mta-sts.txt" || !ours
    {
        return reply(404, "not found\n".into());
    }
    reply(200, policy_text(&server.cfg))
}
