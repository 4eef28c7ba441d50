//! `server.max_connections_per_ip`: open connections per TCP peer address.
//!
//! Counted at accept time, before a TLS handshake or a byte of HTTP, so a refusal
//! costs next to nothing. Peers in `server.trusted_proxies` are not counted: every
//! client behind the proxy shares its address, and the proxy is the one holding
//! connections on their behalf. Those clients are still limited per client IP
//! (worked out from `X-Forwarded-For`) by the request-level limits
//! (`rate_limits.per_ip_rps`), and every connection, theirs included, by the head
//! and body timeouts and `server.max_connections`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::policy::{CidrList, canonical};

#[derive(Debug, Clone)]
pub struct PerIpLimit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: u32,
    exempt: CidrList,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    ip: IpAddr,
}

/// The peer already holds `max_connections_per_ip` connections.
#[derive(Debug, PartialEq, Eq)]
pub struct OverLimit;

impl PerIpLimit {
    pub fn new(max: u32, exempt: CidrList) -> Self {
        Self {
            inner: Arc::new(Inner {
                max,
                exempt,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A permit for one more connection from `ip`; `None` for a trusted proxy
    /// (not counted).
    pub fn acquire(&self, ip: IpAddr) -> Result<Option<Permit>, OverLimit> {
        let ip = canonical(ip);
        if self.inner.exempt.contains(ip) {
            return Ok(None);
        }
        let mut open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.inner.max {
            return Err(OverLimit);
        }
        *n += 1;
        Ok(Some(Permit {
            inner: Arc::clone(&self.inner),
            ip,
        }))
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        let open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_frees_on_drop() {
        let limit = PerIpLimit::new(2, CidrList::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = limit.acquire(a).unwrap();
        let _p2 = limit.acquire(a).unwrap();
        assert_eq!(limit.acquire(a).unwrap_err(), OverLimit);
        assert!(limit.acquire(b).unwrap().is_some());
        drop(p1);
        assert!(limit.acquire(a).unwrap().is_some());
        assert_eq!(limit.open(b), 0, "dropped permits leave no entry");
    }

    #[test]
    fn trusted_proxies_are_not_counted() {
        let limit = PerIpLimit::new(1, CidrList::new(vec!["10.0.0.0/8".parse().unwrap()]));
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| limit.acquire(proxy).unwrap()).collect();
        assert!(held.iter().all(Option::is_none));
        // An IPv4-mapped IPv6 peer is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        let _p = limit.acquire(mapped).unwrap();
        assert!(limit.acquire("192.0.2.9".parse().unwrap()).is_err());
    }
}
