//! Assembling and running the HTTP server.
//!
//! Connections: [`crate::http::edge::conn`] accepts them (per-IP cap, TLS) and guards
//! their bytes (a head timeout on every request, JSON for the parser's own
//! errors) before actix-http's HTTP/1.1 dispatcher runs the app below.
//!
//! Middleware order (outermost first), for every route:
//! 0. [`crate::http::edge::conn::body::middleware`]: marks the request in flight on its
//!    connection until its response ends, and bounds its body read
//!    (`server.client_body_timeout`);
//! 1. `request_id::middleware`: assigns the request id before anything can fail,
//!    and stamps `x-request-id` on every response, errors included.
//! 2. [`crate::http::access_log::middleware`] (when `logging.access_log`): one line per
//!    request, written when its body ends.
//! 3. `TracingLogger<RootSpan>`: one span per request carrying that id.
//! 4. [`crate::http::edge::middleware`]: `Host` check, global IP lists, and the security
//!    headers on every response;
//! 5. CORS (only when `server.cors.allowed_origins` lists any);
//! 6. Routing: `/v1` → [`crate::http::proxy`], `/manage` → [`crate::http::manage`] (which adds
//!    its own auth middleware), `/health`, `/ready`, else a JSON 404.
//!
//! No compression middleware anywhere: it would buffer SSE streams.
//!
//! Actors (the four of SPEC §1), each on its own thread:
//! - `TokenRegistry` ([`crate::actors::token_registry`]): handlers read its cache
//!   directly and send it management writes;
//! - `RequestQueue` ([`crate::actors::request_queue`]): handlers take a free slot
//!   lock-free, and message it only to wait for one;
//! - `ProviderSupervisor` ([`crate::actors::provider_supervisor`]): handlers
//!   report attempt outcomes to it (fire-and-forget) and read provider status
//!   directly; it runs breakers and health checks;
//! - `AuditWriter` ([`crate::actors::audit_writer`]): not an actix actor and has no
//!   messages: handlers queue audit events and usage records on its bounded
//!   channel (a semaphore of `audit.buffer` slots); it batches them to the DB and
//!   JSONL.
//!
//! Shutdown order:
//! 1. SIGTERM/SIGINT: actix stops accepting and lets in-flight requests and streams
//!    finish for up to `server.shutdown_grace`;
//! 2. the registry writes back request counters (`FlushUsage`);
//! 3. the counts of unauthenticated `/v1` failures not yet filed become audit
//!    events ([`crate::rate_limit::unauthenticated`]);
//! 4. the audit writer stops accepting records and writes everything queued
//!    (giving up after `max(shutdown_grace, 10s)` of failing storage, and logging
//!    at ERROR how many records that lost);
//! 5. the log writer flushes (its guard drops) and the process exits 0.

use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{App, web};
use sea_orm::DatabaseConnection;
use tracing_actix_web::TracingLogger;

use crate::actors::audit_writer::{AuditHandle, AuditSettings, AuditSink, AuditWriter};
use crate::actors::provider_supervisor::ProviderSupervisor;
use crate::actors::request_queue::Admission;
use crate::actors::token_registry::{FlushUsage, Registry, TokenRegistry, sync};
use crate::config::{Config, ExitError, InitError};
use crate::crypto::KeyCipher;
use crate::http::RootSpan;
use crate::http::ip_limit::IpLimits;
use crate::policy::CidrList;
use crate::providers::Providers;
use crate::rate_limit::RpmLimits;
use crate::rate_limit::ip::AuthFailures;
use crate::rate_limit::shared::SharedLimits;
use crate::rate_limit::unauthenticated::Unauthenticated;
use crate::sessions::passwords::{self, Hasher};
use crate::state::{AppState, EdgePolicy};
use crate::{db, http::request_id};

/// Runs `palisade serve` until a shutdown signal; see the module docs for order.
/// Start-up failures are [`InitError`]s; a failure once serving is
/// [`ExitError::Runtime`], so the two exit with different codes.
pub async fn serve(config: Config) -> Result<(), ExitError> {
    let config = Arc::new(config);
    let conn = db::connect(&config.database).await?;
    db::migrate(&conn).await?;
    check_users_can_log_in(&conn, &config).await?;
    let registry = TokenRegistry::start(
        conn.clone(),
        key_cipher(&config)?,
        config.tokens.usage_flush_interval.0,
    )
    .await
    .map_err(|e| InitError::Database(format!("loading tokens: {e}")))?;
    let providers = Arc::new(Providers::from_config(&config.providers).map_err(InitError::Other)?);
    let audit = AuditWriter::start(conn.clone(), audit_settings(&config))
        .map_err(|e| InitError::Other(format!("audit.file {}: {e}", config.audit.file)))?;
    let trusted_proxies = CidrList::new(config.server.trusted_proxies.clone());
    let limits = &config.rate_limits;
    let ip_limits = IpLimits::new(limits, &trusted_proxies);
    let shared_limits = match config.redis.url() {
        Some(_) => Some(SharedLimits::new(&config.redis, limits).map_err(InitError::Other)?),
        None => None,
    };
    // Redis down at start-up is not fatal (it follows redis.on_error until it
    // answers), only logged.
    let redis_instances = match &shared_limits {
        Some(shared) => {
            let _ = shared.ping().await;
            shared.expected_instances()
        }
        None => 1,
    };
    let state = web::Data::new(AppState {
        config: Arc::clone(&config),
        audit: audit.sink.clone(),
        db: conn,
        registry: registry.clone(),
        providers: Arc::clone(&providers),
        supervisor: ProviderSupervisor::start(Arc::clone(&providers)),
        allowed_paths: config.proxy.allowed_paths.clone(),
        trusted_proxies,
        usage_enabled: config.usage.enabled,
        admission: Admission::start(
            config.queue.max_in_flight,
            config.queue.max_waiting,
            config.queue.max_wait.0,
        ),
        rpm: RpmLimits::new(Default::default(), limits.default_token_rpm)
            .divided_by(redis_instances),
        shared_limits,
        auth_failures: AuthFailures::new(
            limits.auth_failures_per_minute,
            limits.auth_failures_burst,
        ),
        login_failures: AuthFailures::new(
            limits.auth_failures_per_minute,
            limits.auth_failures_burst,
        ),
        unauthenticated: Unauthenticated::new(
            limits.unauthenticated_per_minute,
            limits.unauthenticated_burst,
            config.audit.unauthenticated_window.0,
        ),
        hasher: Hasher::start(
            passwords::concurrency(config.auth.bcrypt_concurrency),
            u32::try_from(config.auth.bcrypt_cost).unwrap_or(12),
        ),
        edge: EdgePolicy::from_config(&config.server),
    });
    let listener = spawn_background_work(&state, &providers, ip_limits.clone());
    if config.logging.access_log {
        crate::http::access_log::start()
            .map_err(|e| InitError::Other(format!("cannot start the access log: {e}")))?;
    }
    let served = run_until_signal(state.clone(), ip_limits).await;
    if served.is_ok() {
        shut_down(&state, &registry, audit).await;
    }
    if let Some(listener) = listener {
        listener.abort();
        let _ = listener.await;
    }
    served
}

/// Fail closed: admin users without a secret to sign their sessions.
async fn check_users_can_log_in(
    conn: &DatabaseConnection,
    config: &Config,
) -> Result<(), InitError> {
    let users = crate::service::sessions::Sessions::live_user_count(conn)
        .await
        .map_err(|e| InitError::Database(format!("counting users: {e}")))?;
    if users > 0 && config.auth.jwt_secret.is_empty() {
        return Err(InitError::Invalid {
            path: "start-up checks".to_owned(),
            errors: vec![format!(
                "auth.jwt_secret: {users} admin user(s) exist; set PALISADE_JWT_SECRET (at least 32 bytes) so they can log in"
            )],
        });
    }
    Ok(())
}

/// `auth.encryption_key`, when set: upstream keys stored per project are sealed with it.
fn key_cipher(config: &Config) -> Result<Option<KeyCipher>, InitError> {
    match config.auth.encryption_key.expose() {
        "" => Ok(None),
        k => KeyCipher::from_base64(k)
            .map(Some)
            .map_err(|e| InitError::Other(format!("auth.encryption_key: {e}"))),
    }
}

fn audit_settings(config: &Config) -> AuditSettings {
    AuditSettings {
        file: (!config.audit.file.is_empty()).then(|| config.audit.file.clone().into()),
        store_in_db: config.audit.store_in_db,
        batch_size: usize::try_from(config.audit.batch_size).unwrap_or(usize::MAX),
        flush_interval: config.audit.flush_interval.0,
        buffer: usize::try_from(config.audit.buffer).unwrap_or(usize::MAX),
        audit_retention: retention(config.audit.retention_days),
        usage_retention: retention(config.usage.retention_days),
        database: Some(config.database.clone()),
        instance: config.server.instance(),
    }
}

/// Background work owned by the server, on its system's arbiter. Returns the
/// PostgreSQL change listener, which must be ended while the runtime still runs
/// (sqlx's listener spawns a task when dropped).
#[allow(clippy::disallowed_methods)]
fn spawn_background_work(
    state: &web::Data<AppState>,
    providers: &Arc<Providers>,
    ip_limits: IpLimits,
) -> Option<actix_rt::task::JoinHandle<()>> {
    // Glob providers' model lists.
    actix_rt::spawn(crate::providers::refresh_models_forever(
        Arc::clone(providers),
        state.config.proxy.models_refresh_interval.0,
    ));
    actix_rt::spawn(prune_limiters_forever(state.clone(), ip_limits));
    // Redis: notices an outage without traffic, and its end (requests skip a
    // Redis known to be down).
    if state.shared_limits.is_some() {
        let state = state.clone();
        actix_rt::spawn(async move {
            if let Some(shared) = &state.shared_limits {
                shared.probe_forever().await;
            }
        });
    }
    // Expired revoked-JWT ids and refresh tokens, hourly.
    actix_rt::spawn(clean_sessions_forever(state.db.clone()));
    // Unauthenticated `/v1` failures, filed as one audit event per client IP and
    // reason per window.
    actix_rt::spawn(file_unauthenticated_forever(state.clone()));
    // Changes other instances sharing the database make: the revision poll on
    // every backend, the push on PostgreSQL (token_registry::sync).
    let registry = state.registry.clone();
    actix_rt::spawn(sync::poll_forever(
        registry.clone(),
        state.config.tokens.sync_interval.0,
    ));
    // Database reachability (`/ready`, `palisade_database_up`, a WARN when lost).
    actix_rt::spawn(crate::db::reach::watch_forever(state.db.clone()));
    let url = &state.config.database.url;
    url.expose().starts_with("postgres").then(|| {
        actix_rt::spawn(sync::listen_forever(
            registry,
            url.clone(),
            state.config.server.instance(),
        ))
    })
}

/// Binds, serves, and on SIGTERM/SIGINT drains in-flight requests (module docs:
/// middleware order).
async fn run_until_signal(
    state: web::Data<AppState>,
    ip_limits: IpLimits,
) -> Result<(), ExitError> {
    let config = Arc::clone(&state.config);
    let origins = config.server.cors.allowed_origins.clone();
    let access_log = config.logging.access_log;
    let tls = match &config.server.tls {
        Some(tls) if config.server.tls_enabled() => Some(crate::tls::server_config(tls)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listen = &config.server.listen;
    let cannot = |e: std::io::Error| InitError::Other(format!("cannot listen on {listen}: {e}"));
    let listening = crate::http::edge::conn::listen(&config.server, tls, move || {
        let cors = crate::http::edge::cors::middleware(&origins);
        App::new()
            // Read-only state for every handler.
            .app_data(state.clone())
            // Innermost: CORS (preflights answered here, before any auth).
            .wrap(actix_web::middleware::Condition::new(
                cors.is_some(),
                cors.unwrap_or_default(),
            ))
            // Host check, global IP lists, security headers on every response.
            .wrap(from_fn(crate::http::edge::middleware))
            // The request span, so every log line of the request carries its id.
            .wrap(TracingLogger::<RootSpan>::new())
            // The access line: inside request ids (it logs the id), outside the
            // rest so it sees every status, the edge's refusals included.
            .wrap(actix_web::middleware::Condition::new(
                access_log,
                from_fn(crate::http::access_log::middleware),
            ))
            // Request ids exist before any other middleware can fail.
            .wrap(from_fn(request_id::middleware))
            // Outermost: the connection's head timer must know when a request is
            // in flight, for every response; the body deadline wraps the payload
            // before anything reads it.
            .wrap(from_fn(crate::http::edge::conn::body::middleware))
            .configure(|cfg| crate::http::configure(cfg, ip_limits.clone()))
    })
    .map_err(cannot)?;
    for addr in &listening.addrs {
        tracing::info!(%addr, "palisade listening on {scheme}://{addr}");
    }
    // Signals are ours, not actix's: actix would stop the whole actor system, and
    // the registry must still be alive to write its counters after the drain.
    let server = listening.builder.run();
    let handle = server.handle();
    #[allow(clippy::disallowed_methods)]
    actix_rt::spawn(async move {
        wait_for_shutdown_signal().await;
        tracing::info!("shutdown signal received; draining in-flight requests");
        handle.stop(true).await;
    });
    server
        .await
        .map_err(|e| ExitError::Runtime(format!("server error: {e}")))?;
    Ok(())
}

/// After the drain: request counters, unfiled unauthenticated counts, then every
/// queued audit record, then the access log.
async fn shut_down(state: &web::Data<AppState>, registry: &Registry, audit: AuditHandle) {
    let config = &state.config;
    match registry.addr.send(FlushUsage).await {
        Ok(Ok(n)) => tracing::info!(tokens = n, "request counters written; bye"),
        Ok(Err(e)) => tracing::error!(error = %e, "could not write request counters at shutdown"),
        Err(e) => tracing::error!(error = %e, "token registry unavailable at shutdown"),
    }
    state
        .unauthenticated
        .flush(async |e| file_event(&state.audit, e).await)
        .await;
    let report = audit
        .drain(
            config
                .server
                .shutdown_grace
                .0
                .max(std::time::Duration::from_secs(10)),
        )
        .await;
    if report.is_complete() {
        tracing::info!("audit records written");
    } else {
        // Honest about it: storage was failing to the end.
        tracing::error!(
            audit_events = report.audit_events,
            usage_records = report.usage_records,
            reserved = report.reserved,
            "storage is failing: audit records NOT written at shutdown are lost"
        );
    }
    crate::http::access_log::drain(std::time::Duration::from_secs(5));
}

/// Limiter state for clients, tokens and projects that have gone quiet is dropped
/// once a minute; their buckets would be full again anyway.
async fn prune_limiters_forever(state: web::Data<AppState>, ip_limits: IpLimits) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        crate::rate_limit::RateStore::prune(state.rpm.store());
        state.auth_failures.prune();
        state.login_failures.prune();
        ip_limits.prune();
    }
}

async fn file_unauthenticated_forever(state: web::Data<AppState>) {
    state
        .unauthenticated
        .flush_every_window(async |e| file_event(&state.audit, e).await)
        .await;
}

async fn file_event(audit: &AuditSink, event: crate::actors::audit_writer::AuditEvent) {
    audit
        .record(crate::actors::audit_writer::Record::Audit(Box::new(event)))
        .await;
}

async fn clean_sessions_forever(db: DatabaseConnection) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = crate::service::sessions::Sessions::cleanup(&db, crate::time::now()).await {
            tracing::warn!(error = %e, "cleaning expired sessions failed; retrying in an hour");
        }
    }
}

fn retention(days: u64) -> Option<chrono::Duration> {
    (days > 0).then(|| chrono::Duration::days(i64::try_from(days).unwrap_or(i64::MAX / 86_400)))
}

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
