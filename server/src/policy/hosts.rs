//! `server.trusted_hosts`: which `Host` headers Palisade answers. A request for any
//! other host (DNS rebinding, a misrouted virtual host, cache poisoning through a
//! forged `Host`) gets 400 before routing. Empty = any host (start-up warns outside
//! `--dev`).

/// One allowed host: `api.example.com`, `api.example.com:8443` (that port only),
/// or `*.example.com` (any subdomain, not the apex). Parsed once, when the
/// configuration is read; printed back as written (lower-cased).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    text: String,
    host: String,
    port: Option<String>,
    wildcard: bool,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r.to_owned()),
            None => (false, s.clone()),
        };
        let (host, port) = split_port(&rest);
        let valid = !host.is_empty()
            && !host.contains('*')
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            })
            && port.is_none_or(|p| p.parse::<u16>().is_ok());
        if !valid {
            return Err(format!("{s:?} is not a host name, host:port or *.domain"));
        }
        Ok(Self {
            host: host.to_owned(),
            port: port.map(str::to_owned),
            wildcard,
            text: s,
        })
    }

    pub fn matches(&self, host: &str, port: Option<&str>) -> bool {
        if self.port.is_some() && self.port.as_deref() != port {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

/// `example.com:80` → (`example.com`, `80`); `[::1]:80` → (`[::1]`, `80`).
fn split_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find("]:") {
            Some(i) => (&s[..=i], Some(&s[i + 2..])),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

impl TryFrom<String> for HostPattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<HostPattern> for String {
    fn from(p: HostPattern) -> Self {
        p.text
    }
}

/// Whether a `Host` header value is allowed by `patterns` (empty = all).
pub fn allowed(patterns: &[HostPattern], header: Option<&[u8]>) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(value) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    let value = value.trim().to_ascii_lowercase();
    let value = value.strip_suffix('.').unwrap_or(&value);
    let (host, port) = split_port(value);
    patterns.iter().any(|p| p.matches(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<HostPattern> {
        v.iter().map(|s| HostPattern::parse(s).unwrap()).collect()
    }

    #[test]
    fn matching() {
        let l = list(&[
            "api.example.com",
            "*.internal.test",
            "localhost:8080",
            "[::1]",
        ]);
        assert!(allowed(&l, Some(b"api.example.com")));
        assert!(allowed(&l, Some(b"API.example.com:443")));
        assert!(allowed(&l, Some(b"a.b.internal.test")));
        assert!(!allowed(&l, Some(b"internal.test")));
        assert!(!allowed(&l, Some(b"evilinternal.test")));
        assert!(allowed(&l, Some(b"localhost:8080")));
        assert!(!allowed(&l, Some(b"localhost:8081")));
        assert!(allowed(&l, Some(b"[::1]:9000")));
        assert!(!allowed(&l, Some(b"evil.com")));
        assert!(!allowed(&l, None));
        assert!(allowed(&[], None));
        assert!(HostPattern::parse("a*b.com").is_err());
        assert!(HostPattern::parse("host:99999").is_err());
        assert!(HostPattern::parse("").is_err());
    }
}
