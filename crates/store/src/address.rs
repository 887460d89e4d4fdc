//! Mail addresses as the directory keys them.

use crate::{Error, Result};

/// A normalized `local@domain`: both parts lower-cased (we treat local parts as
/// case-insensitive, as Postfix and Dovecot do by default), domain without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

pub fn normalize_domain(domain: &str) -> Result<String> {
    let d = domain.trim().trim_end_matches('.').to_lowercase();
    let bad = |why| Err(Error::InvalidDomain(domain.to_owned(), why));
    if d.is_empty() {
        return bad("empty");
    }
    if d.len() > 253 {
        return bad("longer than 253 octets");
    }
    for label in d.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each label must be 1 to 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not start or end with '-'");
        }
        if !label
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        {
            return bad("only letters, digits, '-' and '_' are allowed");
        }
    }
    Ok(d)
}

/// Split and normalize `local@domain`. `*` is accepted as a local part (catch-all) only
/// where the caller allows it.
pub fn normalize_address(addr: &str) -> Result<Address> {
    let addr = addr.trim();
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(Error::InvalidAddress(
            addr.to_owned(),
            "expected local@domain",
        ));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(Error::InvalidAddress(
            addr.to_owned(),
            "local part must be 1 to 64 octets",
        ));
    }
    if local
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '@' || c == '<' || c == '>')
    {
        return Err(Error::InvalidAddress(
            addr.to_owned(),
            "local part contains a forbidden character",
        ));
    }
    Ok(Address {
        local: local.to_lowercase(),
        domain: normalize_domain(domain)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        let a = normalize_address(" Bob@Example.COM. ").unwrap();
        assert_eq!(a.to_string(), "bob@example.com");
        assert_eq!(normalize_address("用户@例子.测试").unwrap().local, "用户");
        assert!(normalize_address("nodomain").is_err());
        assert!(normalize_address("@example.com").is_err());
        assert!(normalize_address("a b@example.com").is_err());
        assert!(normalize_address("a@-bad.com").is_err());
        assert!(normalize_address("a@bad..com").is_err());
        assert!(normalize_domain("").is_err());
    }
}
