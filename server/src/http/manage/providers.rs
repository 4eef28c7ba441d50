//! `GET /manage/providers`: each provider's breaker, health and load, read from the
//! live status the `ProviderSupervisor` publishes (never from a cache of it).
//! Besides SPEC's fields: `health_check_failures` (consecutive failed checks that
//! counted toward `unhealthy_threshold`), `last_success_at` (when the provider last
//! answered a request, to the second), `models_error` (why the last refresh of a
//! `*` provider's model list failed; `null` when it worked), `priority`, `weight`.

use actix_web::{HttpResponse, web};
use chrono::SubsecRound;
use serde_json::json;

use crate::state::AppState;

pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let data: Vec<_> = state
        .providers
        .all()
        .iter()
        .map(|p| {
            let s = &p.status;
            let d = s.diagnostics();
            let last_success_at = s.since_last_success().and_then(|age| {
                let age = chrono::Duration::from_std(age).ok()?;
                Some((crate::time::now() - age).trunc_subsecs(0))
            });
            json!({
                "name": p.name,
                "state": s.state().as_str(),
                "healthy": s.healthy(),
                "consecutive_failures": s.consecutive_failures(),
                "last_error": d.last_error,
                "last_check_at": d.last_check_at,
                "health_check_failures": s.check_failures(),
                "last_success_at": last_success_at,
                "models_error": d.models_error,
                "in_flight": s.in_flight(),
                "priority": p.priority,
                "weight": p.weight,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "data": data }))
}
