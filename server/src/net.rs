//! Who is the client? The TCP peer, unless the peer is a configured trusted proxy:
//! then the right-most `X-Forwarded-For` entry that is not itself trusted. A spoofed
//! header from an untrusted peer is ignored.

use std::net::{IpAddr, Ipv4Addr};

use actix_web::{HttpMessage, HttpRequest};

use crate::policy::{CidrList, canonical};

/// The client's address. The edge middleware works it out once per request and
/// keeps it in the request's extensions ([`ClientIp`]); the per-IP limit, the
/// token's CIDR check and the audit trail read it from there. A request that did
/// not pass the edge (unit tests) has it worked out here.
pub fn client_ip(req: &HttpRequest, trusted: &CidrList) -> IpAddr {
    // A shared borrow only: callers may hold one too (never a mutable one).
    if let Some(ClientIp(ip)) = req.extensions().get::<ClientIp>() {
        return *ip;
    }
    from_headers(req, trusted)
}

/// The client IP of a request, once worked out.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// Works the client IP out and keeps it on the request; call where nothing else
/// borrows the request's extensions (the edge middleware).
pub fn remember_client_ip(req: &HttpRequest, trusted: &CidrList) -> IpAddr {
    let ip = from_headers(req, trusted);
    req.extensions_mut().insert(ClientIp(ip));
    ip
}

fn from_headers(req: &HttpRequest, trusted: &CidrList) -> IpAddr {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| canonical(a.ip()));
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    for value in req.headers().get_all("x-forwarded-for").rev() {
        let Ok(s) = value.to_str() else { return client };
        for hop in s.rsplit(',') {
            match hop.trim().parse::<IpAddr>().map(canonical) {
                Ok(ip) if trusted.contains(ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn req(peer: &str, xff: Option<&str>) -> HttpRequest {
        let mut r = TestRequest::default().peer_addr(format!("{peer}:1000").parse().unwrap());
        if let Some(x) = xff {
            r = r.insert_header(("x-forwarded-for", x));
        }
        r.to_http_request()
    }

    #[test]
    fn untrusted_peer_ignores_forwarded_for() {
        let trusted = CidrList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            client_ip(&req("1.2.3.4", Some("9.9.9.9")), &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted_hop() {
        let trusted = CidrList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let r = req("10.0.0.1", Some("6.6.6.6, 5.5.5.5, 10.0.0.2"));
        assert_eq!(
            client_ip(&r, &trusted),
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn worked_out_once_per_request() {
        let trusted = CidrList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let r = req("10.0.0.1", Some("5.5.5.5"));
        assert_eq!(
            remember_client_ip(&r, &trusted),
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
        // Kept: a later ask gets the first answer, not a new reading.
        let nobody = CidrList::default();
        assert_eq!(client_ip(&r, &nobody), "5.5.5.5".parse::<IpAddr>().unwrap());
    }
}
