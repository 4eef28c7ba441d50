use super::*;
use chrono::Duration;

fn project(active: bool) -> ProjectState {
    ProjectState {
        id: ProjectId::new(),
        is_active: active,
        deleted: false,
        upstream_api_key: None,
        allowed_models: ModelList::default(),
        allowed_cidrs: CidrList::default(),
        rate_limit_rpm: None,
        providers: Arc::from([]),
    }
}

fn token(project: ProjectId, max: Option<i64>) -> TokenState {
    TokenState {
        id: TokenId::new(),
        project_id: project,
        hint: "tok-abcd****wxyz".into(),
        is_active: true,
        revoked: false,
        expires_at: Utc::now() + Duration::days(1),
        max_requests: max,
        rate_limit_rpm: None,
        allowed_models: ModelList::default(),
        allowed_cidrs: CidrList::default(),
        counters: Arc::default(),
    }
}

#[test]
fn lookup_distinguishes_states() {
    let cache = TokenCache::default();
    let p = project(true);
    let pid = p.id;
    cache.put_project(p);
    let t = token(pid, None);
    let tid = t.id;
    let h = TokenHash::of("tok-1");
    cache.put_token(t, h, None);
    let now = Utc::now();
    assert!(cache.lookup(&h, now).is_ok());
    assert!(matches!(
        cache.lookup(&TokenHash::of("tok-2"), now),
        Err(Refused {
            error: Denial::InvalidApiKey,
            matched: None
        })
    ));
    assert!(matches!(
        cache.lookup(&h, now + Duration::days(2)),
        Err(Refused {
            error: Denial::TokenExpired,
            matched: Some(_)
        })
    ));
    cache.update_token(tid, |t| t.with(|t| t.is_active = false));
    assert!(matches!(
        cache.lookup(&h, now),
        Err(Refused {
            error: Denial::TokenInactive,
            matched: Some(_)
        })
    ));
    cache.update_token(tid, |t| t.with(|t| t.revoked = true));
    // The refusal names the token it matched, for the audit trail.
    let refused = cache.lookup(&h, now).unwrap_err();
    let matched = refused.matched.unwrap();
    assert_eq!((matched.token.id, matched.project.id), (tid, pid));
    assert!(matches!(
        cache.lookup(&h, now),
        Err(Refused {
            error: Denial::TokenRevoked,
            matched: Some(_)
        })
    ));
}

#[test]
fn quota_never_over_admits_under_threads() {
    let cache = Arc::new(TokenCache::default());
    let t = Arc::new(token(ProjectId::new(), Some(100)));
    t.counters.lease.store(1000, Ordering::Release);
    let admitted = Arc::new(AtomicI64::new(0));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (cache, t, admitted) = (cache.clone(), t.clone(), admitted.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    if matches!(cache.try_consume(&t, Utc::now()), Ok(Consumed::Counted)) {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 100);
    assert_eq!(t.counters.request_count(), 100);
}

#[test]
fn admission_stops_at_the_lease_and_at_the_quota() {
    let cache = TokenCache::default();
    let t = token(ProjectId::new(), Some(3));
    let now = Utc::now();
    assert!(matches!(
        cache.try_consume(&t, now),
        Ok(Consumed::NeedsLease)
    ));
    assert_eq!(
        t.counters.request_count(),
        0,
        "nothing counted without a lease"
    );
    t.counters.lease.store(2, Ordering::Release);
    assert!(matches!(cache.try_consume(&t, now), Ok(Consumed::Counted)));
    assert!(matches!(cache.try_consume(&t, now), Ok(Consumed::Counted)));
    assert!(matches!(
        cache.try_consume(&t, now),
        Ok(Consumed::NeedsLease)
    ));
    // A lease past the quota never admits past the quota.
    t.counters.lease.store(10, Ordering::Release);
    assert!(matches!(cache.try_consume(&t, now), Ok(Consumed::Counted)));
    assert!(matches!(
        cache.try_consume(&t, now),
        Err(Denial::QuotaExceeded(3))
    ));
    assert_eq!(t.counters.request_count(), 3);
}

#[test]
fn tokens_without_a_quota_need_no_lease() {
    let cache = TokenCache::default();
    let t = token(ProjectId::new(), None);
    assert!(matches!(
        cache.try_consume(&t, Utc::now()),
        Ok(Consumed::Counted)
    ));
    assert_eq!(t.counters.request_count(), 1);
}

#[test]
fn loaded_counters_take_over_an_unreleased_lease() {
    let c = TokenCounters::new(40, Some(50), None);
    assert_eq!(c.request_count(), 50);
    assert!(c.take_dirty(), "the taken-over count is written back");
    assert_eq!(c.take_unflushed(), 10, "as the 10 leased requests");
    assert_eq!(c.take_unflushed(), 0);
    let c = TokenCounters::new(40, None, None);
    assert_eq!(c.request_count(), 40);
    assert!(!c.take_dirty());
}

#[test]
fn rotation_keeps_previous_until_grace_ends() {
    let cache = TokenCache::default();
    let p = project(true);
    let pid = p.id;
    cache.put_project(p);
    let t = token(pid, None);
    let old = TokenHash::of("tok-old");
    let new = TokenHash::of("tok-new");
    let now = Utc::now();
    let until = now + Duration::seconds(10);
    cache.put_token(t.with(|_| {}), old, None);
    cache.put_token(t, new, Some((old, until)));
    assert!(cache.lookup(&old, now).is_ok());
    assert!(cache.lookup(&new, now).is_ok());
    assert!(matches!(
        cache.lookup(&old, until),
        Err(Refused {
            error: Denial::InvalidApiKey,
            matched: None
        })
    ));
    cache.prune_expired_previous(until);
    assert!(matches!(
        cache.lookup(&old, now),
        Err(Refused {
            error: Denial::InvalidApiKey,
            matched: None
        })
    ));
}

/// A cache holding one project (`active` or not).
fn cache_with_project(active: bool) -> (TokenCache, ProjectId) {
    let cache = TokenCache::default();
    let p = project(active);
    let id = p.id;
    cache.put_project(p);
    (cache, id)
}

/// Expiry is an absolute wall-clock instant (`expires_at`, stored), so the cache
/// takes `now` from its caller instead of reading a clock: the instant is exact.
#[test]
fn a_token_is_valid_until_its_expiry_and_expired_from_that_instant_on() {
    let (cache, pid) = cache_with_project(true);
    let t0 = Utc::now();
    let ttl = Duration::seconds(30);
    let t = token(pid, None).with(|t| t.expires_at = t0 + ttl);
    let id = t.id;
    let h = TokenHash::of("tok-ttl");
    cache.put_token(t, h, None);
    let just_before = t0 + ttl - Duration::milliseconds(1);
    assert!(cache.lookup(&h, t0).is_ok());
    assert!(cache.lookup(&h, just_before).is_ok());
    let expired = |now| {
        matches!(
            cache.lookup(&h, now),
            Err(Refused {
                error: Denial::TokenExpired,
                ..
            })
        )
    };
    assert!(expired(t0 + ttl));
    let count = |now, state| {
        cache
            .census(now)
            .into_iter()
            .find(|(s, _)| *s == state)
            .map(|(_, n)| n)
    };
    assert_eq!(count(just_before, "active"), Some(1));
    assert_eq!(count(t0 + ttl, "active"), Some(0));
    assert_eq!(count(t0 + ttl, "expired"), Some(1));
    // Expired is said before inactive.
    cache.update_token(id, |t| t.with(|t| t.is_active = false));
    assert!(expired(t0 + ttl));
}

#[test]
fn a_rotated_secret_works_until_the_last_instant_of_its_grace() {
    let (cache, pid) = cache_with_project(true);
    let (old, new) = (TokenHash::of("tok-old"), TokenHash::of("tok-new"));
    let until = Utc::now() + Duration::seconds(10);
    let just_before = until - Duration::milliseconds(1);
    cache.put_token(token(pid, None), new, Some((old, until)));
    assert!(cache.lookup(&old, just_before).is_ok());
    assert!(cache.lookup(&old, until).is_err());
    // Pruning just before the end keeps it.
    cache.prune_expired_previous(just_before);
    assert!(cache.lookup(&old, just_before).is_ok());
    assert!(cache.lookup(&new, until).is_ok());
}
