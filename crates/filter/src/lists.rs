//! The admin's allow and block lists: entries and what they match.

use std::net::IpAddr;

/// One entry, in the canonical form it is stored as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An address or a network (`192.0.2.0/24`, `2001:db8::/32`; a bare IP is a /32 or /128).
    Net(IpAddr, u8),
    /// A domain and its subdomains (of MAIL FROM or From:).
    Domain(String),
    /// One sender address (MAIL FROM or From:), compared without case.
    Address(String),
}

impl Entry {
    /// Parses what an admin typed; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Entry, String> {
        let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let bad = || {
            format!(
                "{text:?} is not an IP address, a network (192.0.2.0/24), a domain or an address"
            )
        };
        if let Some((ip, bits)) = t.split_once('/') {
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits.parse().ok().filter(|b| *b <= max).ok_or_else(bad)?;
            return Ok(Entry::Net(mask(ip, bits), bits));
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(Entry::Net(ip, if ip.is_ipv4() { 32 } else { 128 }));
        }
        let domain_ok = |d: &str| {
            d.contains('.')
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                })
        };
        match t.rsplit_once('@') {
            Some((local, d))
                if !local.is_empty() && domain_ok(d) && !local.contains(char::is_whitespace) =>
            {
                Ok(Entry::Address(t))
            }
            None if domain_ok(&t) => Ok(Entry::Domain(t)),
            _ => Err(bad()),
        }
    }

    /// The stored text.
    pub fn text(&self) -> String {
        match self {
            Entry::Net(ip, bits) if (ip.is_ipv4() && *bits == 32) || *bits == 128 => ip.to_string(),
            Entry::Net(ip, bits) => format!("{ip}/{bits}"),
            Entry::Domain(d) | Entry::Address(d) => d.clone(),
        }
    }

    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        matches!(self, Entry::Net(net, bits) if net.is_ipv4() == ip.is_ipv4() && mask(ip, *bits) == *net)
    }

    /// Whether a sender address (`local@domain`) is covered.
    pub fn matches_sender(&self, addr: &str) -> bool {
        let addr = addr.trim_end_matches('.').to_ascii_lowercase();
        match self {
            Entry::Address(a) => *a == addr,
            Entry::Domain(d) => addr.rsplit_once('@').is_some_and(|(_, dom)| {
                dom == d
                    || dom
                        .strip_suffix(d.as_str())
                        .is_some_and(|p| p.ends_with('.'))
            }),
            Entry::Net(..) => false,
        }
    }
}

fn mask(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let e = Entry::parse("192.0.2.77/24").unwrap();
        assert_eq!(e.text(), "192.0.2.0/24");
        assert!(e.matches_ip("192.0.2.1".parse().unwrap()));
        assert!(e.matches_ip("::ffff:192.0.2.9".parse().unwrap()));
        assert!(!e.matches_ip("192.0.3.1".parse().unwrap()));
        let e = Entry::parse("2001:db8::/32").unwrap();
        assert!(e.matches_ip("2001:db8:ffff::1".parse().unwrap()));
        assert!(!e.matches_ip("2001:db9::1".parse().unwrap()));
        assert_eq!(Entry::parse("0.0.0.0/0").unwrap().text(), "0.0.0.0/0");
        assert!(
            Entry::parse("0.0.0.0/0")
                .unwrap()
                .matches_ip("8.8.8.8".parse().unwrap())
        );
        assert_eq!(Entry::parse("10.0.0.1").unwrap().text(), "10.0.0.1");
        let d = Entry::parse("Example.COM.").unwrap();
        assert_eq!(d, Entry::Domain("example.com".into()));
        assert!(d.matches_sender("a@example.com"));
        assert!(d.matches_sender("a@mail.example.com"));
        assert!(!d.matches_sender("a@badexample.com"));
        let a = Entry::parse("Boss@Example.com").unwrap();
        assert!(a.matches_sender("boss@example.COM"));
        assert!(!a.matches_sender("other@example.com"));
        for bad in [
            "",
            "localhost",
            "1.2.3.4/33",
            "a b@c.d",
            "@x.y",
            "x@",
            "::/129",
        ] {
            assert!(Entry::parse(bad).is_err(), "{bad}");
        }
    }
}
