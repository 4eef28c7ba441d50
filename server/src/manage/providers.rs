//! `GET /manage/providers`: each provider's breaker, health and load, read from the
//! live status the `ProviderSupervisor` publishes (never from a cache of it).

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::app::AppState;

pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let data: Vec<_> = state
        .providers
        .all()
        .iter()
        .map(|p| {
            let s = &p.status;
            let d = s.diagnostics();
            json!({
                "name": p.name,
                "state": s.state().as_str(),
                "healthy": s.healthy(),
                "consecutive_failures": s.consecutive_failures(),
                "last_error": d.last_error,
                "last_check_at": d.last_check_at,
                "in_flight": s.in_flight(),
                "priority": p.priority,
                "weight": p.weight,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "data": data }))
}
