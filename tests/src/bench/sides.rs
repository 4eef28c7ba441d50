//! The sides measured: a project and token on each Palisade the bench starts, the
//! audit-off side, and other gateways given with `--compare`.

use serde_json::{Value, json};

use super::load::Target;
use super::procs;

/// A project and token for the bench; `limited` gives both a requests-per-minute
/// limit (the maximum, so it never refuses).
pub async fn setup_token(
    client: &reqwest::Client,
    base: &str,
    limited: bool,
) -> Result<String, String> {
    let rpm = limited.then_some(10_000_000);
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(procs::BENCH_MANAGEMENT_TOKEN)
            .json(&body)
            .send()
    };
    let p: Value = post(
        "/manage/projects",
        json!({"name": "bench", "allowed_models": ["gpt-4o*"], "allowed_cidrs": ["127.0.0.0/8"], "rate_limit_rpm": rpm}),
    )
    .await
    .map_err(|e| e.to_string())?
    .json()
    .await
    .map_err(|e| e.to_string())?;
    let t: Value = post(
        "/manage/tokens",
        json!({"project_id": p["id"], "name": "bench", "max_requests": 1_000_000_000_000i64, "allowed_models": ["gpt-4o-mini"], "allowed_cidrs": ["127.0.0.1"], "rate_limit_rpm": rpm}),
    )
    .await
    .map_err(|e| e.to_string())?
    .json()
    .await
    .map_err(|e| e.to_string())?;
    t["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("token creation failed: {t}"))
}

/// The audit-off side, when it runs.
pub fn quiet_target(gateways: &[Target]) -> Option<&Target> {
    gateways.iter().find(|g| g.name == "palisade-audit-off")
}

pub fn parse_compare(spec: &str) -> Result<Target, String> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or("--compare takes NAME=URL[,KEY]")?;
    let (url, key) = match rest.split_once(',') {
        Some((u, k)) => (u, Some(k.to_owned())),
        None => (rest, None),
    };
    Ok(Target {
        name: name.to_owned(),
        base: url.trim_end_matches('/').to_owned(),
        key,
    })
}
