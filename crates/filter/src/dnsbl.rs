//! DNS blocklists (RFC 5782) without I/O: the names to look up and what answers mean.

use std::net::{IpAddr, Ipv4Addr};

/// Distinct link domains looked up per message: a message with ten thousand links must
/// not buy ten thousand queries.
pub const MAX_LINK_DOMAINS: usize = 20;
/// Bytes of the message searched for links.
pub const MAX_SCAN: usize = 512 * 1024;

/// The query name for an address in `zone` (RFC 5782 §2.1: IPv4 octets reversed, §2.4:
/// IPv6 nibbles reversed).
pub fn ip_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}.")
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return ip_name(IpAddr::V4(v4), zone);
            }
            let mut out = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0xf, byte >> 4] {
                    out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    out.push('.');
                }
            }
            format!("{out}{zone}.")
        }
    }
}

/// The query name for a domain in a domain list (RFC 5782 §2.2); `None` for what is not a
/// plausible host name.
pub fn domain_name(domain: &str, zone: &str) -> Option<String> {
    let d = domain.trim_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    ok.then(|| format!("{d}.{}.", zone.trim_matches('.')))
}

/// What the A records of a blocklist answer mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Listed(Ipv4Addr),
    /// 127.255.255.x: the list refuses this resolver (Spamhaus: public resolver, over
    /// quota), or an answer outside 127/8 (a resolver that redirects NXDOMAIN).
    Error(Ipv4Addr),
}

/// RFC 5782 §2.3: a listing is an A record in 127.0.0.0/8 (never 127.0.0.1).
pub fn interpret(records: &[Ipv4Addr]) -> Option<Answer> {
    let first = *records.first()?;
    Some(
        if records.iter().any(|a| {
            a.octets()[..3] == [127, 255, 255] || a.octets()[0] != 127 || *a == Ipv4Addr::LOCALHOST
        }) {
            Answer::Error(first)
        } else {
            Answer::Listed(first)
        },
    )
}

/// Host names of `http://` and `https://` links in the message, lowercased, each once,
/// at most [`MAX_LINK_DOMAINS`], from the first [`MAX_SCAN`] bytes. Linear: one pass.
pub fn link_domains(data: &[u8]) -> Vec<String> {
    let data = data.get(..MAX_SCAN.min(data.len())).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    let finder = memchr::memmem::Finder::new(b"://");
    for at in finder.find_iter(data) {
        let scheme_start = at.saturating_sub(5);
        let scheme = data
            .get(scheme_start..at)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !(scheme.ends_with(b"https") || scheme.ends_with(b"http")) {
            continue;
        }
        let rest = data.get(at + 3..).unwrap_or_default();
        // Skip user-info ("http://user@host"): the host follows the last '@' before
        // the path.
        let end = rest
            .iter()
            .position(|c| {
                matches!(
                    c,
                    b'/' | b'?'
                        | b'#'
                        | b'"'
                        | b'\''
                        | b'<'
                        | b'>'
                        | b' '
                        | b'\r'
                        | b'\n'
                        | b'\t'
                        | b':'
                )
            })
            .unwrap_or(rest.len())
            .min(300);
        let authority = rest.get(..end).unwrap_or_default();
        let host = match memchr::memrchr(b'@', authority) {
            Some(i) => authority.get(i + 1..).unwrap_or_default(),
            None => authority,
        };
        let Ok(host) = std::str::from_utf8(host) else {
            continue;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || out.contains(&host) {
            continue;
        }
        out.push(host);
        if out.len() == MAX_LINK_DOMAINS {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            ip_name("192.0.2.99".parse().unwrap(), "bl.example."),
            "99.2.0.192.bl.example."
        );
        // RFC 5782 §2.4's example.
        assert_eq!(
            ip_name(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com"
            ),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
        );
        assert_eq!(
            ip_name("::ffff:10.0.0.1".parse().unwrap(), "z"),
            "1.0.0.10.z."
        );
        assert_eq!(
            domain_name("Spam.Example.", "dbl.test").as_deref(),
            Some("spam.example.dbl.test.")
        );
        assert_eq!(domain_name("localhost", "dbl.test"), None);
        assert_eq!(domain_name("a..b", "dbl.test"), None);
        assert_eq!(domain_name("a\r\nb.c", "dbl.test"), None);
    }

    #[test]
    fn answers() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(interpret(&[]), None);
        assert_eq!(
            interpret(&[a("127.0.0.2")]),
            Some(Answer::Listed(a("127.0.0.2")))
        );
        assert_eq!(
            interpret(&[a("127.255.255.254")]),
            Some(Answer::Error(a("127.255.255.254")))
        );
        assert_eq!(
            interpret(&[a("192.0.2.1")]),
            Some(Answer::Error(a("192.0.2.1")))
        );
        assert_eq!(
            interpret(&[a("127.0.0.1")]),
            Some(Answer::Error(a("127.0.0.1")))
        );
    }

    #[test]
    fn links() {
        let body = b"see http://Spam.Example/x and HTTPS://user@evil.test:8080/p, \
            ftp://no.test/ https://spam.example/again <a href=\"http://third.test\">";
        assert_eq!(
            link_domains(body),
            vec!["spam.example", "evil.test", "third.test"]
        );
        let many: Vec<u8> = (0..10_000)
            .flat_map(|i| format!("http://h{i}.test/ ").into_bytes())
            .collect();
        assert_eq!(link_domains(&many).len(), MAX_LINK_DOMAINS);
        assert!(link_domains(&vec![b':'; 100_000]).is_empty());
    }
}
