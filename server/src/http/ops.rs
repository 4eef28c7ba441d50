//! Operational routes: `/health` (liveness) and `/ready` (database answers and takes
//! writes, records can be kept, a provider is usable, Redis answers when set), plus the JSON 404 for unknown
//! paths outside `/v1`/`/manage`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::AppState;

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    // Bounded: a PostgreSQL server that is gone would otherwise hold the probe for
    // the pool's whole acquire timeout. The outcome also feeds the metric and log.
    let db = crate::db::reach::check(&state.db).await;
    // While writes fail, a probe write (at most one a second) notices recovery
    // even when nothing else writes.
    crate::db::probe_if_failing(&state.db).await;
    // At least one provider whose breaker is not open (SPEC §4; half-open counts:
    // it is about to be probed). Health checks alone never make the gateway
    // unready: routing fails open on health (docs/health.md).
    let providers = state.providers.any_usable();
    // Writes: the last database write, and the audit writer's batch (the audit
    // file included), went through. While they fail, records wait in the audit
    // buffer; once it is full, `/v1` is refused (`records`).
    let writes = !crate::db::health().is_failing() && !state.audit.is_failing();
    let records = state.audit.check_room().is_ok();
    // Redis, when configured: a live ping (bounded by redis.command_timeout).
    let redis = match &state.shared_limits {
        Some(shared) => Some(shared.ping().await.is_ok()),
        None => None,
    };
    let ok = db && providers && writes && records && redis != Some(false);
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "checks": {
            "database": db,
            "writes": writes,
            "records": records,
            "providers": providers,
            "redis": redis,
        },
        "audit": {
            "waiting": state.audit.waiting(),
            "oldest_seconds": state.audit.oldest_age().as_secs_f64(),
        },
    });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("retry-after", "1"))
            .json(body)
    }
}

pub async fn not_found() -> HttpResponse {
    crate::error::route_not_found()
}
