//! Allowlists shared by tokens, projects and providers: model names with `*` globs,
//! and CIDR ranges. An empty list means "no restriction".

pub mod hosts;

use std::net::IpAddr;

use ipnet::IpNet;

/// Matches `name` against a pattern where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return false;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let tail: Vec<&str> = parts.collect();
    let Some((last, middle)) = tail.split_last() else {
        // No `*` at all: exact match.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelList(Vec<String>);

impl ModelList {
    pub fn new(models: Vec<String>) -> Self {
        Self(models)
    }

    pub fn allows(&self, model: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| glob_match(p, model))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(Vec<IpNet>);

impl CidrList {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.is_empty() || self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is treated as the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Checks one configured origin: `scheme://host[:port]`, nothing more.
pub fn validate_origin(origin: &str) -> Result<(), String> {
    let url = url::Url::parse(origin).map_err(|e| format!("{origin:?}: {e}"))?;
    let exact = url.origin().ascii_serialization() == origin;
    if !matches!(url.scheme(), "http" | "https") || !exact {
        return Err(format!(
            "{origin:?} is not an origin like https://app.example.com (scheme, host and optional port; no path or trailing slash)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "gpt-4o"));
        assert!(glob_match("gpt-4*", "gpt-4o-mini"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
        assert!(glob_match("gpt-*-mini", "gpt-4o-mini"));
        assert!(glob_match("gpt-4o", "gpt-4o"));
        assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
        assert!(!glob_match("claude*", "gpt-4o"));
        assert!(!glob_match("a*b*c", "acb"));
    }

    #[test]
    fn cidrs() {
        let l = CidrList::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        assert!(l.allows("10.1.2.3".parse().unwrap()));
        assert!(l.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(l.allows("::1".parse().unwrap()));
        assert!(!l.allows("127.0.0.1".parse().unwrap()));
        assert!(CidrList::default().allows("1.2.3.4".parse().unwrap()));
    }
}
