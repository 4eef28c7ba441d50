//! The admission script against the machine's Redis (127.0.0.1:6379, started by
//! `.ci/run`), each test under a key prefix of its own.

use std::sync::Arc;

use super::super::fixtures::project;
use super::*;
use crate::config::HumanDuration;

const REDIS: &str = "redis://127.0.0.1:6379/0";
const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

fn config(url: &str, timeout_ms: u64) -> RedisConfig {
    RedisConfig {
        url: Some(crate::secret::Secret::new(url)),
        key_prefix: format!("palisade-test:{}:", uuid::Uuid::now_v7()),
        command_timeout: HumanDuration::millis(timeout_ms),
        ..RedisConfig::default()
    }
}

fn limits() -> SharedLimits {
    SharedLimits::new(&config(REDIS, 2000), &RateLimitsConfig::default()).unwrap()
}

/// With the `/v1` per-IP limit on.
fn limits_per_ip(rps: u32, burst: u32) -> SharedLimits {
    let rate = RateLimitsConfig {
        per_ip_rps: rps,
        per_ip_burst: burst,
        ..RateLimitsConfig::default()
    };
    SharedLimits::new(&config(REDIS, 2000), &rate).unwrap()
}

fn token(rpm: Option<i64>, max: Option<i64>) -> TokenState {
    super::super::fixtures::token(rpm).with(|t| t.max_requests = max)
}

async fn get(l: &SharedLimits, key: &str) -> Option<i64> {
    let mut conn = l.conn().unwrap();
    redis::cmd("GET")
        .arg(format!("{}{key}", l.prefix))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// A key's raw value (a bucket's arrival time), to show it was left alone.
async fn raw(l: &SharedLimits, key: &str) -> Option<String> {
    let mut conn = l.conn().unwrap();
    redis::cmd("GET")
        .arg(format!("{}{key}", l.prefix))
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn pttl(l: &SharedLimits, key: &str) -> i64 {
    let mut conn = l.conn().unwrap();
    redis::cmd("PTTL")
        .arg(format!("{}{key}", l.prefix))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[actix_rt::test]
async fn burst_then_limited_with_the_local_stores_numbers() {
    let l = limits();
    let t = token(Some(60), None);
    let p = project(t.project_id, None);
    for i in 0..60 {
        match l.admit(IP, &t, &p, 0).await.unwrap() {
            Outcome::Admitted {
                rate: Some(s),
                used: None,
            } => {
                assert_eq!((s.limit, s.remaining), (60, 59 - i));
                assert_eq!(s.reset, Duration::from_secs(u64::from(i) + 1));
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    match l.admit(IP, &t, &p, 0).await.unwrap() {
        Outcome::Limited(limited) => {
            assert_eq!(limited.key, RateKey::Token(t.id));
            assert_eq!(limited.state.remaining, 0);
            // One emission interval, less the time the 60 took.
            assert!(limited.retry_after <= Duration::from_secs(1));
            assert!(limited.retry_after > Duration::from_millis(500));
            assert!(limited.state.reset > Duration::from_secs(59));
        }
        other => panic!("{other:?}"),
    }
    // The bucket's key lives until it is full again (a minute at most, plus
    // a second); a bucket at another rate is another, full one.
    let ttl = pttl(&l, &format!("rpm:token:{}:60", t.id)).await;
    assert!((59_000..=61_000).contains(&ttl), "{ttl}");
    let faster = t.with(|t| t.rate_limit_rpm = Some(120));
    assert!(matches!(
        l.admit(IP, &faster, &p, 0).await.unwrap(),
        Outcome::Admitted { rate: Some(s), .. } if s.remaining == 119
    ));
}

#[actix_rt::test]
async fn token_project_and_quota_are_taken_together_or_not_at_all() {
    let l = limits();
    let t = token(Some(5), Some(10));
    let p = project(t.project_id, Some(2));
    for used in [1, 2] {
        assert!(matches!(
            l.admit(IP, &t, &p, 0).await.unwrap(),
            Outcome::Admitted { rate: Some(s), used: Some(u) } if u == used && s.limit == 2
        ));
    }
    match l.admit(IP, &t, &p, 0).await.unwrap() {
        Outcome::Limited(limited) => assert_eq!(limited.key, RateKey::Project(p.id)),
        other => panic!("{other:?}"),
    }
    // The refusal took neither the quota nor the token's allowance: with the
    // project unlimited, the token still has 3 of 5.
    assert_eq!(get(&l, &format!("quota:{}", t.id)).await, Some(2));
    let free = project(t.project_id, None);
    assert!(matches!(
        l.admit(IP, &t, &free, 0).await.unwrap(),
        Outcome::Admitted { rate: Some(s), used: Some(3) } if s.remaining == 2
    ));
    assert_eq!(
        pttl(&l, &format!("quota:{}", t.id)).await,
        -1,
        "quota keys never expire"
    );
}

#[actix_rt::test]
async fn the_per_ip_bucket_refuses_beyond_its_burst_and_ips_are_independent() {
    let l = limits_per_ip(1, 3);
    let t = token(None, None);
    let p = project(t.project_id, None);
    for i in 0..3 {
        assert!(
            matches!(
                l.admit(IP, &t, &p, 0).await.unwrap(),
                Outcome::Admitted { rate: None, .. }
            ),
            "request {i}"
        );
    }
    match l.admit(IP, &t, &p, 0).await.unwrap() {
        // One emission interval (a second), less the time the three took.
        Outcome::IpLimited { retry_after } => {
            assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
            assert!(retry_after > Duration::from_millis(500), "{retry_after:?}");
        }
        other => panic!("{other:?}"),
    }
    // The key lives until the bucket is full again (3 s, plus a second).
    let ttl = pttl(&l, &format!("ip:{IP}:1:3")).await;
    assert!((3_000..=4_000).contains(&ttl), "{ttl}");
    // Another client, even of the same token, has a bucket of its own.
    let other: IpAddr = "2001:db8::7".parse().unwrap();
    for _ in 0..3 {
        assert!(matches!(
            l.admit(other, &t, &p, 0).await.unwrap(),
            Outcome::Admitted { .. }
        ));
    }
    assert!(matches!(
        l.admit(other, &t, &p, 0).await.unwrap(),
        Outcome::IpLimited { .. }
    ));
    // Burst 0 is one second's worth, as at the edge.
    let l = limits_per_ip(2, 0);
    for _ in 0..2 {
        assert!(matches!(
            l.admit(IP, &t, &p, 0).await.unwrap(),
            Outcome::Admitted { .. }
        ));
    }
    assert!(matches!(
        l.admit(IP, &t, &p, 0).await.unwrap(),
        Outcome::IpLimited { retry_after } if retry_after <= Duration::from_millis(500)
    ));
    assert!(pttl(&l, &format!("ip:{IP}:2:2")).await > 0);
}

#[actix_rt::test]
async fn a_per_ip_refusal_takes_nothing_from_the_token_project_or_quota() {
    let l = limits_per_ip(1, 2);
    let t = token(Some(10), Some(10));
    let p = project(t.project_id, Some(20));
    let (token_key, project_key, quota_key) = (
        format!("rpm:token:{}:10", t.id),
        format!("rpm:project:{}:20", p.id),
        format!("quota:{}", t.id),
    );
    for used in [1, 2] {
        assert!(matches!(
            l.admit(IP, &t, &p, 0).await.unwrap(),
            Outcome::Admitted { used: Some(u), .. } if u == used
        ));
    }
    let before = (raw(&l, &token_key).await, raw(&l, &project_key).await);
    assert!(before.0.is_some() && before.1.is_some());
    assert!(matches!(
        l.admit(IP, &t, &p, 0).await.unwrap(),
        Outcome::IpLimited { .. }
    ));
    assert_eq!(
        (raw(&l, &token_key).await, raw(&l, &project_key).await),
        before
    );
    assert_eq!(get(&l, &quota_key).await, Some(2));
    // The token's allowance is intact: from another address it has 7 of 10 left
    // after its third request.
    let other: IpAddr = "192.0.2.2".parse().unwrap();
    assert!(matches!(
        l.admit(other, &t, &p, 0).await.unwrap(),
        Outcome::Admitted { rate: Some(s), used: Some(3) } if s.limit == 10 && s.remaining == 7
    ));

    // And the other way round: a token refusal takes nothing from the IP's bucket.
    let l = limits_per_ip(1, 5);
    let t = token(Some(1), None);
    let p = project(t.project_id, None);
    let ip_key = format!("ip:{IP}:1:5");
    assert!(matches!(
        l.admit(IP, &t, &p, 0).await.unwrap(),
        Outcome::Admitted { .. }
    ));
    let before = raw(&l, &ip_key).await;
    assert!(before.is_some());
    assert!(matches!(
        l.admit(IP, &t, &p, 0).await.unwrap(),
        Outcome::Limited(limited) if limited.key == RateKey::Token(t.id)
    ));
    assert_eq!(raw(&l, &ip_key).await, before);
}

#[actix_rt::test]
async fn the_quota_is_seeded_once_from_the_known_count() {
    let l = limits();
    let t = token(None, Some(5));
    let p = project(t.project_id, None);
    assert!(matches!(
        l.admit(IP, &t, &p, 3).await.unwrap(),
        Outcome::Admitted {
            rate: None,
            used: Some(4)
        }
    ));
    // Another instance that knows less does not lower it.
    assert!(matches!(
        l.admit(IP, &t, &p, 0).await.unwrap(),
        Outcome::Admitted { used: Some(5), .. }
    ));
    assert_eq!(
        l.admit(IP, &t, &p, 0).await.unwrap(),
        Outcome::QuotaExceeded { max: 5, used: 5 }
    );
    // A token already past its quota when first seen is refused at once.
    let spent = token(None, Some(5));
    assert_eq!(
        l.admit(IP, &spent, &p, 7).await.unwrap(),
        Outcome::QuotaExceeded { max: 5, used: 7 }
    );
}

#[actix_rt::test]
async fn concurrent_requests_never_exceed_the_quota() {
    let l = Arc::new(limits());
    let t = Arc::new(token(None, Some(50)));
    let p = Arc::new(project(t.project_id, None));
    let calls = (0..200).map(|_| {
        let (l, t, p) = (Arc::clone(&l), Arc::clone(&t), Arc::clone(&p));
        async move { l.admit(IP, &t, &p, 0).await.unwrap() }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let admitted = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Admitted { .. }))
        .count();
    assert_eq!(admitted, 50);
    assert_eq!(get(&l, &format!("quota:{}", t.id)).await, Some(50));
}

#[actix_rt::test]
async fn the_script_is_loaded_again_after_redis_forgets_it() {
    let l = limits();
    let t = token(Some(10), None);
    let p = project(t.project_id, None);
    l.admit(IP, &t, &p, 0).await.unwrap();
    let mut conn = l.conn().unwrap();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        l.admit(IP, &t, &p, 0).await.unwrap(),
        Outcome::Admitted { rate: Some(s), .. } if s.remaining == 8
    ));
}

/// A Redis that accepts connections and never answers: every call ends at
/// `command_timeout`, marks Redis down, and later requests skip it at once.
#[tokio::test(start_paused = true)]
async fn a_silent_redis_times_out_and_is_then_skipped() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A plain tokio test (paused clock): no actix system to spawn on.
    #[allow(clippy::disallowed_methods)]
    let accepted = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let l = SharedLimits::new(
        &config(&format!("redis://{addr}/0"), 200),
        &RateLimitsConfig::default(),
    )
    .unwrap();
    let t = token(Some(10), Some(5));
    let p = project(t.project_id, None);
    let started = tokio::time::Instant::now();
    assert!(matches!(
        l.admit(IP, &t, &p, 0).await,
        Err(Unreachable::Timeout(d)) if d == Duration::from_millis(200)
    ));
    assert!(started.elapsed() <= Duration::from_millis(250));
    assert!(!l.is_up());
    let again = tokio::time::Instant::now();
    assert!(matches!(
        l.admit(IP, &t, &p, 0).await,
        Err(Unreachable::Down)
    ));
    assert_eq!(again.elapsed(), Duration::ZERO, "no wait while down");
    assert!(matches!(l.ping().await, Err(Unreachable::Timeout(_))));
    accepted.abort();
}

#[actix_rt::test]
async fn a_refused_connection_is_down_and_a_working_one_up() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let l = SharedLimits::new(
        &config(&format!("redis://:s3cret@127.0.0.1:{port}/0"), 500),
        &RateLimitsConfig::default(),
    )
    .unwrap();
    match l.ping().await {
        Err(e) => assert!(!e.to_string().contains("s3cret"), "{e}"),
        Ok(()) => panic!("nothing listens there"),
    }
    assert!(!l.is_up());
    let up = limits();
    up.ping().await.unwrap();
    assert!(up.is_up());
}

#[test]
fn scrub_hides_the_password() {
    assert_eq!(
        scrub("auth failed for pw123 at host", &["pw123".to_owned()]),
        "auth failed for [redacted] at host"
    );
}
