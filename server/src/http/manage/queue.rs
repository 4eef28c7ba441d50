//! `GET /manage/queue`: the request queue's gauges and counters, read live from
//! the atomics the `RequestQueue` actor and the handlers share.

use actix_web::{HttpResponse, web};

use crate::state::AppState;

pub async fn show(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.admission.stats().snapshot())
}
