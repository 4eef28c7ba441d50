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

/// Model patterns; empty allows every model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelList {
    patterns: Vec<String>,
    /// Allows no model at all: a stored list that could not be read ([`Self::nothing`]).
    closed: bool,
}

impl ModelList {
    pub fn new(patterns: Vec<String>) -> Self {
        Self {
            patterns,
            closed: false,
        }
    }

    /// A list that allows no model: what a stored list that cannot be read becomes,
    /// since reading it as `[]` would lift the restriction (fail closed).
    pub fn nothing() -> Self {
        Self {
            patterns: Vec::new(),
            closed: true,
        }
    }

    pub fn allows(&self, model: &str) -> bool {
        !self.closed
            && (self.patterns.is_empty() || self.patterns.iter().any(|p| glob_match(p, model)))
    }

    /// No restriction at all (a closed list is the strictest restriction).
    pub fn is_empty(&self) -> bool {
        !self.closed && self.patterns.is_empty()
    }
}

/// CIDR ranges; as an allowlist, empty allows every address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList {
    nets: Vec<IpNet>,
    /// Allows no address at all: a stored list that could not be read ([`Self::nothing`]).
    closed: bool,
}

impl CidrList {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self {
            nets,
            closed: false,
        }
    }

    /// An allowlist that allows no address: what a stored list that cannot be read
    /// becomes, since reading it as `[]` would lift the restriction (fail closed).
    pub fn nothing() -> Self {
        Self {
            nets: Vec::new(),
            closed: true,
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        !self.closed && (self.nets.is_empty() || self.contains(ip))
    }

    /// No restriction at all (a closed list is the strictest restriction).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        !self.closed && self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is treated as the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One CORS origin, `scheme://host[:port]` and nothing more: checked once, when
/// the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin(String);

impl Origin {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Origin {
    type Error = String;

    fn try_from(origin: String) -> Result<Self, String> {
        let url = url::Url::parse(&origin).map_err(|e| format!("{origin:?}: {e}"))?;
        let exact = url.origin().ascii_serialization() == origin;
        if !matches!(url.scheme(), "http" | "https") || !exact {
            return Err(format!(
                "{origin:?} is not an origin like https://app.example.com (scheme, host and optional port; no path or trailing slash)"
            ));
        }
        Ok(Self(origin))
    }
}

impl From<Origin> for String {
    fn from(o: Origin) -> Self {
        o.0
    }
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

    #[test]
    fn closed_lists_allow_nothing_and_count_as_restrictions() {
        let models = ModelList::nothing();
        assert!(!models.allows("gpt-4o"));
        assert!(!models.allows(""));
        assert!(!models.is_empty());
        let cidrs = CidrList::nothing();
        assert!(!cidrs.allows("127.0.0.1".parse().unwrap()));
        assert!(!cidrs.allows("::1".parse().unwrap()));
        assert!(!cidrs.is_empty());
        assert!(ModelList::default().is_empty() && CidrList::default().is_empty());
    }
}
