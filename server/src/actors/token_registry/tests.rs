//! The registry's write order: every write reaches the database before the cache
//! shows it, and a write the database refuses leaves the cache as it was. Real
//! SQLite files in a temporary directory; the actor runs on its own arbiter, as in
//! the server.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection};

use super::*;
use crate::config::{DatabaseConfig, HumanDuration};
use crate::ids::{ProjectId, TokenId};
use crate::secret::Secret;
use crate::service::query::Query;

struct Fixture {
    _dir: tempfile::TempDir,
    cfg: DatabaseConfig,
    reg: Registry,
    project: ProjectId,
    token: TokenId,
    hash: TokenHash,
}

impl Fixture {
    /// A registry over a fresh database holding one project with one token.
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        let cfg = DatabaseConfig {
            url: Secret::new(format!("sqlite://{}?mode=rwc", path.display())),
            // Long enough that a write waiting on another connection's lock
            // (`a_write_is_in_the_database_before_the_cache_shows_it`) never
            // gives up during the test.
            busy_timeout: HumanDuration::secs(60),
            ..Default::default()
        };
        let db = crate::db::connect(&cfg).await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        let reg = TokenRegistry::start(db, None, Duration::from_secs(3600))
            .await
            .unwrap();
        let project = reg
            .addr
            .send(CreateProject(NewProject {
                name: "p".to_owned(),
                description: None,
                upstream_api_key: None,
                allowed_models: Vec::new(),
                allowed_cidrs: Vec::new(),
                rate_limit_rpm: None,
                providers: Vec::new(),
            }))
            .await
            .unwrap()
            .unwrap();
        let project = ProjectId(project.id);
        let issued = create_token(&reg, project).await.unwrap();
        Self {
            _dir: dir,
            cfg,
            project,
            token: TokenId(issued.model.id),
            hash: issued.secret.hash(),
            reg,
        }
    }

    fn db(&self) -> &DatabaseConnection {
        &self.reg.db
    }

    /// What a request presenting the token's secret gets now.
    fn lookup(&self) -> Result<Resolved, Denial> {
        self.reg
            .cache
            .lookup(&self.hash, crate::time::now())
            .map_err(|r| r.error)
    }

    async fn stored_token(&self) -> entity::tokens::Model {
        Query::token(self.db(), self.token.0)
            .await
            .unwrap()
            .unwrap()
    }

    /// Makes the database refuse every `event` (INSERT, UPDATE) on `table`.
    async fn refuse(&self, event: &str, table: &str) {
        self.db()
            .execute_unprepared(&format!(
                "CREATE TRIGGER refuse_{event}_{table} BEFORE {event} ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            ))
            .await
            .unwrap();
    }

    async fn accept_again(&self, event: &str, table: &str) {
        self.db()
            .execute_unprepared(&format!("DROP TRIGGER refuse_{event}_{table}"))
            .await
            .unwrap();
    }

    /// Registry connections in use (not idle in the pool).
    fn connections_in_use(&self) -> usize {
        let pool = self.db().get_sqlite_connection_pool();
        (pool.size() as usize).saturating_sub(pool.num_idle())
    }
}

async fn create_token(reg: &Registry, project: ProjectId) -> Result<IssuedToken, RegistryError> {
    reg.addr
        .send(CreateToken(NewToken {
            project_id: project,
            name: None,
            expires_at: crate::time::now() + chrono::Duration::days(1),
            max_requests: None,
            rate_limit_rpm: None,
            allowed_models: Vec::new(),
            allowed_cidrs: Vec::new(),
        }))
        .await
        .unwrap()
}

/// Asserts that the registry answered a refused write with an error.
#[track_caller]
fn refused<T>(reply: Result<Result<T, RegistryError>, MailboxError>) {
    match reply.unwrap() {
        Err(RegistryError::Internal(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("the database refused the write, the registry did not say so"),
    }
}

/// Polls `cond` every few milliseconds until it holds, for at most 10 s.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn a_write_is_in_the_database_before_the_cache_shows_it() {
    let t = Fixture::new().await;
    assert!(t.lookup().is_ok());
    // Another connection holds the write lock, so the revocation cannot commit.
    let other = crate::db::connect(&t.cfg).await.unwrap();
    let lock = crate::db::begin_write(&other).await.unwrap();
    let revoke = t.reg.addr.send(RevokeToken(t.token));
    let mut revoke = std::pin::pin!(revoke);
    // The registry's write is waiting on the lock once one of its connections
    // stays in use far longer than its one-row read takes. Until then, and
    // while the write waits, the cache must not show the revocation.
    let mut in_use_since = None;
    wait_for("the revocation to wait on the lock", || {
        assert!(t.lookup().is_ok(), "the cache showed the revocation first");
        match t.connections_in_use() {
            0 => in_use_since = None,
            _ => {
                let since = *in_use_since.get_or_insert_with(tokio::time::Instant::now);
                return since.elapsed() >= Duration::from_millis(200);
            }
        }
        false
    })
    .await;
    let waiting =
        std::future::poll_fn(|cx| std::task::Poll::Ready(revoke.as_mut().poll(cx).is_pending()))
            .await;
    assert!(waiting, "no reply while the database is locked");
    assert!(t.lookup().is_ok(), "the cache showed the revocation first");
    lock.rollback().await.unwrap();
    revoke.await.unwrap().unwrap();
    // The reply comes after both: the row is revoked and so is the cache.
    assert!(t.stored_token().await.revoked_at.is_some());
    assert!(matches!(t.lookup(), Err(Denial::TokenRevoked)));
}

#[actix_rt::test]
async fn token_writes_the_database_refuses_leave_the_cache_unchanged() {
    let t = Fixture::new().await;
    t.refuse("UPDATE", "tokens").await;
    refused(t.reg.addr.send(RevokeToken(t.token)).await);
    let patch = TokenPatch {
        is_active: Some(false),
        rate_limit_rpm: Some(Some(1)),
        ..Default::default()
    };
    refused(t.reg.addr.send(UpdateToken(t.token, patch)).await);
    let rotate = RotateToken {
        id: t.token,
        grace: Duration::ZERO,
    };
    refused(t.reg.addr.send(rotate).await);
    refused(t.reg.addr.send(RevokeProjectTokens(t.project)).await);
    // Not revoked, not deactivated, not rotated away, its limit unchanged.
    let resolved = t.lookup().unwrap();
    assert_eq!(resolved.token.rate_limit_rpm, None);
    let stored = t.stored_token().await;
    assert_eq!((stored.revoked_at, stored.is_active), (None, true));

    t.refuse("INSERT", "tokens").await;
    refused(Ok(create_token(&t.reg, t.project).await));
    assert_eq!(t.reg.cache.tokens_of(t.project), [t.token]);

    // Once the database takes writes again, so does the cache.
    t.accept_again("UPDATE", "tokens").await;
    t.reg
        .addr
        .send(RevokeToken(t.token))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(t.lookup(), Err(Denial::TokenRevoked)));
}

#[actix_rt::test]
async fn project_writes_the_database_refuses_leave_the_cache_unchanged() {
    let t = Fixture::new().await;
    t.refuse("UPDATE", "projects").await;
    let patch = ProjectPatch {
        is_active: Some(false),
        rate_limit_rpm: Some(Some(1)),
        ..Default::default()
    };
    refused(t.reg.addr.send(UpdateProject(t.project, patch)).await);
    // Deleting updates the project and revokes its tokens in one transaction:
    // refused as a whole, in the database and in the cache.
    refused(t.reg.addr.send(DeleteProject(t.project)).await);
    let resolved = t.lookup().unwrap();
    assert!(resolved.project.is_active && !resolved.project.deleted);
    assert_eq!(resolved.project.rate_limit_rpm, None);
    assert_eq!(t.stored_token().await.revoked_at, None);
    let stored = Query::project(t.db(), t.project.0).await.unwrap().unwrap();
    assert!(stored.deleted_at.is_none() && stored.is_active);
}

/// Two registries on one database stand for two instances: each adds what it
/// counted, so the stored count is the sum; a failed write-back is owed again.
#[actix_rt::test]
async fn write_backs_add_deltas_so_instances_counts_add_up() {
    let f = Fixture::new().await;
    let other_db = crate::db::connect(&f.cfg).await.unwrap();
    let other = TokenRegistry::start(other_db, None, Duration::from_secs(3600))
        .await
        .unwrap();
    let now = crate::time::now();
    let mine = f.lookup().unwrap().token;
    let theirs = other
        .cache
        .lookup(&f.hash, now)
        .map_err(|r| r.error)
        .unwrap()
        .token;
    for _ in 0..3 {
        f.reg.cache.try_consume(&mine, now).unwrap();
    }
    // Redis-admitted requests count here too (and learn Redis's count).
    other.cache.count_shared(&theirs, None, now);
    other.cache.count_shared(&theirs, Some(9), now);
    assert_eq!(
        theirs.counters.request_count(),
        9,
        "raised to what Redis saw"
    );
    let flush = async |r: &Registry| r.addr.send(FlushUsage).await.unwrap().unwrap();
    flush(&f.reg).await;
    flush(&other).await;
    assert_eq!(f.stored_token().await.request_count, 5);
    // Nothing new: nothing added.
    flush(&f.reg).await;
    assert_eq!(f.stored_token().await.request_count, 5);
    // A write-back the database refuses is owed again, added with the next.
    f.reg.cache.try_consume(&mine, now).unwrap();
    f.refuse("UPDATE", "tokens").await;
    assert!(f.reg.addr.send(FlushUsage).await.unwrap().is_err());
    f.accept_again("UPDATE", "tokens").await;
    f.reg.cache.try_consume(&mine, now).unwrap();
    flush(&f.reg).await;
    let stored = f.stored_token().await;
    assert_eq!(stored.request_count, 7);
    // The latest use wins, whichever instance writes last.
    let earlier = now - chrono::Duration::hours(1);
    other.cache.count_shared(&theirs, None, earlier);
    flush(&other).await;
    let stored = f.stored_token().await;
    assert_eq!(stored.request_count, 8);
    assert_eq!(
        stored.last_used_at.map(|t| t.timestamp_millis()),
        Some(now.timestamp_millis())
    );
}
