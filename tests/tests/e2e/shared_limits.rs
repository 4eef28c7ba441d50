//! Limits and quotas shared by several instances through Redis (issue 18, SPEC
//! §5): two real `palisade` processes on one PostgreSQL database and one Redis.
//! The project and token are made on A before B starts (B loads them at start).
//! Tests that stop Redis run a `redis-server` of their own ([`RedisServer`]);
//! the others use the machine's Redis under a key prefix of their own.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

use crate::harness::*;

fn instance(mock: &Mock, db: &PgDatabase, id: &str, redis: &str) -> Gateway {
    instance_with(mock, db, id, redis, "")
}

/// [`instance`] with more configuration (`extra`, YAML).
fn instance_with(mock: &Mock, db: &PgDatabase, id: &str, redis: &str, extra: &str) -> Gateway {
    gateway()
        .provider(mock, "[\"*\"]")
        .database_url(&db.url)
        .yaml(&format!(
            "server: {{ listen: \"127.0.0.1:0\", workers: 2, shutdown_grace: 5s, instance_id: {id} }}"
        ))
        .yaml(&format!("redis: {{ {redis} }}"))
        .yaml(extra)
        .start()
}

/// The machine's Redis, a prefix of this test's own.
fn machine(on_error: &str) -> String {
    format!(
        "url: \"{}\", key_prefix: \"{}\", on_error: {on_error}, expected_instances: 2",
        machine_redis(),
        unique_prefix()
    )
}

/// Each request's status and error code ("" for a success).
async fn send(gw: &Gateway, token: &str, n: usize) -> Vec<(u16, String)> {
    let all = send_with_retry_after(gw, token, n).await;
    all.into_iter()
        .map(|(status, code, _)| (status, code))
        .collect()
}

async fn stored_request_count(db: &PgDatabase, token_id: &str) -> i64 {
    let conn = db.connect().await;
    let row = conn
        .query_one_raw(Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            format!("SELECT request_count FROM tokens WHERE id = '{token_id}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "request_count").unwrap()
}

#[tokio::test]
async fn shared_limits_quota_is_exact_across_two_instances() {
    let mock = Mock::start("up");
    let db = PgDatabase::create().await;
    let redis = machine("fail_closed");
    let (a, b, tid, token) = two_instances(&mock, &db, &redis, json!({ "max_requests": 50 })).await;
    // 200 at once, half through each instance.
    let (on_a, on_b) = tokio::join!(send(&a, &token, 100), send(&b, &token, 100));
    let all: Vec<_> = on_a.iter().chain(&on_b).collect();
    let ok = all.iter().filter(|(s, _)| *s == 200).count();
    let quota = all
        .iter()
        .filter(|(s, c)| *s == 429 && c == "quota_exceeded")
        .count();
    assert_eq!((ok, quota), (50, 150), "{all:?}");
    // Each instance adds what it admitted: the database holds the sum.
    eventually("the shared count in the database", WAIT, async || {
        (stored_request_count(&db, &tid).await == 50).then_some(())
    })
    .await;
}

#[tokio::test]
async fn shared_limits_rpm_burst_is_shared_and_429s_carry_the_headers() {
    let mock = Mock::start("up");
    let db = PgDatabase::create().await;
    let redis = machine("fail_closed");
    let (a, b, _, token) = two_instances(&mock, &db, &redis, json!({ "rate_limit_rpm": 60 })).await;
    let started = tokio::time::Instant::now();
    let (on_a, on_b) = tokio::join!(send(&a, &token, 50), send(&b, &token, 50));
    let took = started.elapsed();
    let admitted = on_a.iter().chain(&on_b).filter(|(s, _)| *s == 200).count();
    println!("60 rpm through two instances: {admitted} of 100 admitted in {took:?}");
    // The burst (60), plus one per second that passed: not 60 per instance.
    let refill = usize::try_from(took.as_secs()).unwrap();
    assert!(
        (60..=60 + refill).contains(&admitted),
        "{admitted} admitted in {took:?}"
    );
    for (status, code) in on_a.iter().chain(&on_b).filter(|(s, _)| *s != 200) {
        assert_eq!((*status, code.as_str()), (429, "rate_limit_exceeded"));
    }
    let resp = b.chat(&token, chat_body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 429);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let retry: u64 = header("retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(header("x-ratelimit-limit-requests"), "60");
    assert_eq!(header("x-ratelimit-remaining-requests"), "0");
    assert!(header("x-ratelimit-reset-requests").ends_with('s'));
}

/// `/v1` per client IP with Redis: the admission script keeps one bucket for
/// the client across the fleet. Each instance's edge limiter (per instance,
/// burst 4) would have let 4 through on each, 8 in all; the script admits the
/// burst once, and refuses the rest exactly as the edge does.
#[tokio::test]
async fn shared_limits_per_ip_limit_is_fleet_wide() {
    let mock = Mock::start("up");
    let db = PgDatabase::create().await;
    let redis = machine("fail_closed");
    let per_ip = "rate_limits: { per_ip_rps: 1, per_ip_burst: 4 }";
    let a = instance_with(&mock, &db, "a", &redis, per_ip);
    // Management calls are outside `/v1`: they spend nothing.
    let (_, _, token) = a.project_and_token(json!({}), json!({})).await;
    let b = instance_with(&mock, &db, "b", &redis, per_ip);
    // One client (127.0.0.1), 12 requests at once, half through each instance.
    let started = tokio::time::Instant::now();
    let (on_a, on_b) = tokio::join!(
        send_with_retry_after(&a, &token, 6),
        send_with_retry_after(&b, &token, 6)
    );
    let took = started.elapsed();
    let all: Vec<_> = on_a.iter().chain(&on_b).collect();
    let admitted = all.iter().filter(|(s, _, _)| *s == 200).count();
    println!("per-IP 1 rps, burst 4, two instances: {admitted} of 12 admitted in {took:?}");
    // The burst, plus one per second that passed.
    let refill = usize::try_from(took.as_secs()).unwrap();
    assert!(
        (4..=4 + refill).contains(&admitted),
        "{admitted} admitted in {took:?}: {all:?}"
    );
    for (status, code, retry) in all.iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!((*status, code.as_str()), (429, "rate_limit_exceeded"));
        assert!(retry.is_some_and(|r| r >= 1), "retry-after: {retry:?}");
    }
}

/// Each request's status, error code ("" for a success) and `retry-after`.
async fn send_with_retry_after(
    gw: &Gateway,
    token: &str,
    n: usize,
) -> Vec<(u16, String, Option<u64>)> {
    let calls = (0..n).map(|_| async {
        let resp = gw.chat(token, chat_body("gpt-4o-mini")).await;
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
        (status, code, retry)
    });
    futures_util::future::join_all(calls).await
}

/// `fail_closed`: Redis killed mid-run → 503 at once on both instances and
/// `/ready` 503; Redis back → everything recovers without a restart.
#[tokio::test]
async fn shared_limits_redis_down_fails_closed_then_recovers() {
    let mut own = on_own_redis("on_error: fail_closed", json!({ "rate_limit_rpm": 1000 })).await;
    let (a, b, token) = (&own.a, &own.b, own.token.clone());
    for gw in [a, b] {
        assert_eq!(
            gw.chat(&token, chat_body("gpt-4o-mini")).await.status(),
            200
        );
        let (status, ready) = ready(gw).await;
        assert_eq!((status, &ready["checks"]["redis"]), (200, &json!(true)));
    }
    own.server.stop();
    for gw in [a, b] {
        for _ in 0..5 {
            let started = tokio::time::Instant::now();
            let resp = gw.chat(&token, chat_body("gpt-4o-mini")).await;
            let took = started.elapsed();
            assert!(took < Duration::from_secs(1), "took {took:?}");
            assert_eq!(resp.headers()["retry-after"], "1");
            let (status, body) = error_of(resp).await;
            assert_proxy_error(status, &body, 503, "service_unavailable");
        }
        let (status, ready) = ready(gw).await;
        assert_eq!((status, &ready["checks"]["redis"]), (503, &json!(false)));
        assert_eq!(gw.metric("palisade_redis_failing").await, 1.0);
        let logs = gw.logs();
        let warned = logs
            .lines()
            .filter(|l| l.contains("Redis is unreachable") && l.contains("WARN"))
            .count();
        assert_eq!(warned, 1, "one WARN per outage:\n{logs}");
    }
    own.server.start_again();
    for gw in [a, b] {
        eventually("admission through Redis again", WAIT, async || {
            (gw.chat(&token, chat_body("gpt-4o-mini")).await.status() == 200).then_some(())
        })
        .await;
        let (status, _) = ready(gw).await;
        assert_eq!(status, 200);
        assert_eq!(gw.metric("palisade_redis_failing").await, 0.0);
        assert!(gw.logs().contains("Redis is reachable again"));
    }
}

/// `local`: Redis down, each instance limits on its own with half of the
/// token's limit (`expected_instances: 2`): requests keep flowing, and the two
/// together stay within the limit.
#[tokio::test]
async fn shared_limits_redis_down_with_local_keeps_serving_divided_limits() {
    let limits = json!({ "rate_limit_rpm": 10, "max_requests": 100 });
    let mut own = on_own_redis("on_error: local, expected_instances: 2", limits).await;
    let (a, b, token) = (&own.a, &own.b, own.token.clone());
    own.server.stop();
    let mut admitted = 0;
    for gw in [a, b] {
        let mut statuses = Vec::new();
        for _ in 0..8 {
            let started = tokio::time::Instant::now();
            let resp = gw.chat(&token, chat_body("gpt-4o-mini")).await;
            assert!(started.elapsed() < Duration::from_secs(1));
            if resp.status() == 429 {
                assert_eq!(resp.headers()["x-ratelimit-limit-requests"], "5");
            }
            statuses.push(resp.status().as_u16());
        }
        // The first may have waited for Redis's timeout; all were answered, five
        // admitted (10 rpm / 2 instances), the rest refused by the limit.
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            5,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        admitted += 5;
        let (status, _) = ready(gw).await;
        assert_eq!(status, 503, "Redis down is visible in /ready");
        assert!(gw.logs().contains("limits are kept in this process"));
    }
    assert_eq!(admitted, 10);
}

/// A `redis-server` of the test's own, and two instances on it (`settings`
/// added to `redis:`); the project and a token (`token` fields) made on A
/// before B starts.
async fn on_own_redis(settings: &str, token: Value) -> OwnRedis {
    let mock = Mock::start("up");
    let db = PgDatabase::create().await;
    let server = RedisServer::start();
    let redis = format!(
        "url: \"{}\", command_timeout: 250ms, {settings}",
        server.url()
    );
    let (a, b, _, token) = two_instances(&mock, &db, &redis, token).await;
    OwnRedis {
        a,
        b,
        token,
        server,
        _db: db,
        _mock: mock,
    }
}

/// What [`on_own_redis`] set up; the gateways go first when dropped.
struct OwnRedis {
    a: Gateway,
    b: Gateway,
    token: String,
    server: RedisServer,
    _db: PgDatabase,
    _mock: Mock,
}

/// Instances A and B on `redis` (the `redis:` settings); the project and a
/// token (`token` fields) made on A before B starts. Returns the token's id and
/// secret.
async fn two_instances(
    mock: &Mock,
    db: &PgDatabase,
    redis: &str,
    token: Value,
) -> (Gateway, Gateway, String, String) {
    let a = instance(mock, db, "a", redis);
    let (_, id, secret) = a.project_and_token(json!({}), token).await;
    let b = instance(mock, db, "b", redis);
    (a, b, id, secret)
}

async fn ready(gw: &Gateway) -> (u16, Value) {
    let resp = gw.get("/ready").send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}
