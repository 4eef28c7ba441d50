//! SQLite and PostgreSQL give the same answers (issue 18, acceptance "PostgreSQL"):
//! one test body drives the whole management API (projects and tokens CRUD,
//! rotate, revoke, users and sessions), the audit queries with every filter and
//! the usage queries with every `group_by` value, against a gateway on each
//! backend. The body asserts the answers it knows; it also returns every answer
//! it got, with ids, secrets and timestamps normalised, and whichever backend's
//! test finishes second compares the two transcripts whole (both tests run in one
//! process under `cargo test … backends`).

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::harness::*;

const JWT_SECRET: &str = "jwt-secret-for-e2e-0123456789abcdef-xyz";

fn start(mock: &Mock, db: Option<&PgDatabase>) -> Gateway {
    let mut b = gateway().provider(mock, "[\"*\"]").yaml(&format!(
        "auth: {{ management_token: \"${{E2E_MANAGEMENT_TOKEN}}\", encryption_key: \"${{E2E_ENCRYPTION_KEY}}\", jwt_secret: \"{JWT_SECRET}\", bcrypt_cost: 4 }}"
    ));
    if let Some(db) = db {
        b = b.database_url(&db.url);
    }
    b.start()
}

#[tokio::test]
async fn backends_sqlite_answers_the_whole_api() {
    let mock = Mock::start("up");
    let gw = start(&mock, None);
    let transcript = whole_api(&gw, &mock).await;
    compare("sqlite", transcript);
}

#[tokio::test]
async fn backends_postgres_answers_the_whole_api_like_sqlite() {
    let mock = Mock::start("up");
    let db = PgDatabase::create().await;
    let gw = start(&mock, Some(&db));
    let transcript = whole_api(&gw, &mock).await;
    compare("postgres", transcript);
}

type Steps = Vec<(String, Value)>;

/// The documented move (docs/operations.md, "Moving from SQLite to PostgreSQL"):
/// stop the SQLite gateway, `palisade migrate` the new database, `palisade
/// migrate-data`, start on PostgreSQL: the old token authenticates, and its
/// project, request count, audit trail and usage came along.
#[tokio::test]
async fn backends_migrate_data_moves_a_sqlite_gateway_to_postgres() {
    let mock = Mock::start("up");
    let mut old = start(&mock, None);
    let (pid, tid, secret) = old
        .project_and_token(json!({ "name": "moved" }), json!({ "max_requests": 10 }))
        .await;
    assert_eq!(
        old.chat(&secret, chat_body("gpt-4o-mini")).await.status(),
        200
    );
    old.wait_for("/manage/usage", |v| v["data"][0]["requests"] == 1)
        .await;
    assert_eq!(old.terminate(), Some(0));
    let db = PgDatabase::create().await;
    let migrated = old.run_command(&["migrate"], &[("E2E_DATABASE_URL", &db.url)]);
    assert!(migrated.status.success(), "{migrated:?}");
    let sqlite = format!("sqlite://{}", old.db_path().display());
    let copy = || {
        std::process::Command::new(palisade_bin())
            .args(["migrate-data", "--from", &sqlite, "--batch-size", "2"])
            // The target's URL through the environment, as documented for passwords.
            .env("PALISADE_MIGRATE_TO", &db.url)
            .output()
            .unwrap()
    };
    let out = copy();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("tokens: 1 rows copied"), "{stdout}");
    assert!(stdout.contains("usage_records: 1 rows copied"), "{stdout}");
    let again = copy();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        stderr.contains("the target database is not empty"),
        "{stderr}"
    );

    let new = start(&mock, Some(&db));
    assert_eq!(
        new.chat(&secret, chat_body("gpt-4o-mini")).await.status(),
        200
    );
    let (_, project) = new
        .manage("GET", &format!("/manage/projects/{pid}"), None)
        .await;
    assert_eq!(project["name"], "moved");
    new.wait_for(&format!("/manage/tokens/{tid}"), |t| {
        t["request_count"] == 2
    })
    .await;
    new.wait_for("/manage/usage", |v| v["data"][0]["requests"] == 2)
        .await;
    new.wait_for(
        &format!("/manage/audit?action=token.create&token_id={tid}"),
        |v| count(v) == 1,
    )
    .await;
}

/// PostgreSQL going away is visible at once (SPEC §5): `/ready` 503 within a
/// second or two, `palisade_database_up` 0, one WARN line without the password;
/// all of it clears when the database answers again, without a restart.
#[tokio::test]
async fn backends_postgres_unreachable_makes_the_instance_unready_until_it_returns() {
    use sea_orm::ConnectionTrait;
    let mock = Mock::start("up");
    let db = PgDatabase::create().await;
    let gw = start(&mock, Some(&db));
    let ready = async || gw.get("/ready").send().await.unwrap().status().as_u16();
    assert_eq!(ready().await, 200);
    assert_eq!(gw.metric("palisade_database_up").await, 1.0);
    // Refuse new connections to the database and end the gateway's open ones.
    let (server, name) = db.url.rsplit_once('/').unwrap();
    let admin = sea_orm::Database::connect(format!("{server}/postgres"))
        .await
        .unwrap();
    let sql = async |sql: String| admin.execute_unprepared(&sql).await.unwrap();
    sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    sql(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let started = tokio::time::Instant::now();
    let unready = poll(WAIT, async || (ready().await == 503).then_some(())).await;
    assert!(unready.is_some(), "{}", gw.logs());
    println!("unready after {:?}", started.elapsed());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let (_, body) = gw.manage("GET", "/manage/projects", None).await;
    assert!(body.is_object(), "{body}");
    let down = poll(WAIT, async || {
        (gw.metric("palisade_database_up").await == 0.0).then_some(())
    })
    .await;
    assert!(down.is_some());
    let logs = gw.logs();
    assert!(logs.contains("the database does not answer"), "{logs}");
    sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let back = poll(WAIT, async || (ready().await == 200).then_some(())).await;
    assert!(back.is_some(), "{}", gw.logs());
    assert_eq!(gw.metric("palisade_database_up").await, 1.0);
    assert!(gw.logs().contains("the database answers again"));
}

/// Holds the first finished transcript; the second is compared with it.
fn compare(backend: &'static str, transcript: Steps) {
    static DONE: Mutex<Option<(&'static str, Steps)>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    match done.take() {
        None => *done = Some((backend, transcript)),
        Some((other, theirs)) => {
            assert_eq!(theirs.len(), transcript.len(), "{other} vs {backend}");
            for ((step, a), (_, b)) in theirs.iter().zip(&transcript) {
                assert_eq!(
                    a, b,
                    "step {step}: {other} answered {a}\n{backend} answered {b}"
                );
            }
        }
    }
}

/// Every answer of the body, in order, normalised.
struct Transcript {
    steps: Steps,
    ids: HashMap<String, usize>,
}

impl Transcript {
    fn record(&mut self, step: &str, status: u16, body: &Value) {
        let body = self.norm(None, body);
        self.steps
            .push((step.to_owned(), json!({ "status": status, "body": body })));
    }

    /// `<id N>`: N counts distinct ids in order of first appearance.
    fn id(&mut self, s: &str) -> String {
        let n = self.ids.len();
        let n = *self.ids.entry(s.to_owned()).or_insert(n);
        format!("<id {n}>")
    }

    fn norm(&mut self, key: Option<&str>, v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), self.norm(Some(k), v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|v| self.norm(key, v)).collect()),
            Value::String(s) => {
                if matches!(
                    key,
                    Some("token" | "token_hint" | "access_token" | "refresh_token" | "request_id")
                ) {
                    return json!(format!("<{}>", key.unwrap_or_default()));
                }
                if uuid::Uuid::try_parse(s).is_ok() {
                    return json!(self.id(s));
                }
                // An actor such as `user-id:<uuid>`.
                if let Some((kind, rest)) = s.split_once(':')
                    && uuid::Uuid::try_parse(rest).is_ok()
                {
                    return json!(format!("{kind}:{}", self.id(rest)));
                }
                if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
                    return json!("<time>");
                }
                if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
                    return json!("<day>");
                }
                v.clone()
            }
            _ => v.clone(),
        }
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn keys(v: &Value) -> Vec<Value> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].clone())
        .collect()
}

fn count(v: &Value) -> usize {
    v["data"].as_array().unwrap().len()
}

/// One backend's run: the gateway and what it answered.
struct Run<'a> {
    gw: &'a Gateway,
    t: Transcript,
}

impl Run<'_> {
    /// A management call, recorded; its status must be `want`.
    async fn call(&mut self, want: u16, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.gw.manage(method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        self.t.record(&format!("{method} {path}"), status, &v);
        v
    }

    /// `POST /manage/{what}`, which must create.
    async fn create(&mut self, what: &str, body: Value) -> Value {
        self.call(201, "POST", &format!("/manage/{what}"), Some(body))
            .await
    }

    async fn patch(&mut self, path: &str, body: Value) -> Value {
        self.call(200, "PATCH", path, Some(body)).await
    }

    /// Walks `path` (no query) page by page, `limit` rows a page: (rows, pages).
    async fn pages(&mut self, path: &str, limit: usize) -> (usize, usize) {
        let (mut rows, mut pages, mut cursor) = (0, 0, String::new());
        loop {
            let page = self
                .call(200, "GET", &format!("{path}?limit={limit}{cursor}"), None)
                .await;
            rows += count(&page);
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => return (rows, pages),
            }
        }
    }

    /// Proxied chats: (secret, model, expected status) each.
    async fn chats(&self, calls: &[(&str, &str, u16)]) {
        for (secret, model, want) in calls {
            let got = self.gw.chat(secret, chat_body(model)).await.status();
            assert_eq!(got, *want, "{model}");
        }
    }

    /// Polls until `done`, and records the answer.
    async fn wait(&mut self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let v = self.gw.wait_for(path, done).await;
        self.t.record(path, 200, &v);
        v
    }

    async fn refresh(&mut self, token: &Value, want: u16) -> Value {
        let r = self.gw.post("/manage/auth/refresh");
        let r = r.json(&json!({ "refresh_token": token })).send().await;
        let r = r.unwrap();
        let status = r.status().as_u16();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{v}");
        self.t.record("refresh", status, &v);
        v
    }
}

/// The body run against each backend.
async fn whole_api(gw: &Gateway, mock: &Mock) -> Steps {
    let mut r = Run {
        gw,
        t: Transcript {
            steps: Vec::new(),
            ids: HashMap::new(),
        },
    };
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let t0 = now();
    let post = Some;

    // --- projects ---
    let alpha = r.create("projects", json!({ "name": "alpha", "description": "first", "allowed_models": ["gpt-4o-mini", "gpt-4o"], "rate_limit_rpm": 600 })).await;
    let beta = r.create("projects", json!({ "name": "Beta" })).await;
    let gamma = r
        .create(
            "projects",
            json!({ "name": "gamma", "upstream_api_key": "sk-project-own-key-0123456789" }),
        )
        .await;
    let (a, b, c) = (id(&alpha), id(&beta), id(&gamma));
    r.call(
        409,
        "POST",
        "/manage/projects",
        post(json!({ "name": "alpha" })),
    )
    .await;
    // Three live projects, two per page.
    assert_eq!(r.pages("/manage/projects", 2).await, (3, 2));
    r.call(200, "GET", &format!("/manage/projects/{a}"), None)
        .await;
    r.patch(
        &format!("/manage/projects/{b}"),
        json!({ "description": "second", "is_active": false }),
    )
    .await;
    let inactive = r
        .call(200, "GET", "/manage/projects?active=false", None)
        .await;
    assert_eq!(count(&inactive), 1);
    r.patch(
        &format!("/manage/projects/{b}"),
        json!({ "is_active": true }),
    )
    .await;
    r.call(
        404,
        "GET",
        &format!("/manage/projects/{}", uuid::Uuid::nil()),
        None,
    )
    .await;

    // --- tokens ---
    let t1 = r
        .create(
            "tokens",
            json!({ "project_id": a, "name": "one", "max_requests": 100 }),
        )
        .await;
    let t2 = r
        .create(
            "tokens",
            json!({ "project_id": a, "name": "two", "rate_limit_rpm": 60 }),
        )
        .await;
    let t3 = r.create("tokens", json!({ "project_id": b })).await;
    let t4 = r
        .create("tokens", json!({ "project_id": c, "name": "four" }))
        .await;
    let (t1id, t2id, t3id, t4id) = (id(&t1), id(&t2), id(&t3), id(&t4));
    let s3 = t3["token"].as_str().unwrap().to_owned();
    let s4 = t4["token"].as_str().unwrap().to_owned();
    let of_a = r
        .call(200, "GET", &format!("/manage/tokens?project_id={a}"), None)
        .await;
    assert_eq!(count(&of_a), 2);
    assert_eq!(r.pages("/manage/tokens", 3).await, (4, 2));
    r.patch(
        &format!("/manage/tokens/{t2id}"),
        json!({ "is_active": false }),
    )
    .await;
    let inactive = r
        .call(200, "GET", "/manage/tokens?active=false", None)
        .await;
    assert_eq!(count(&inactive), 1);
    let rotated = r
        .call(
            200,
            "POST",
            &format!("/manage/tokens/{t1id}/rotate"),
            post(json!({ "grace_seconds": 0 })),
        )
        .await;
    let s1 = rotated["token"].as_str().unwrap().to_owned();
    r.call(204, "DELETE", &format!("/manage/tokens/{t2id}"), None)
        .await;
    r.call(200, "GET", &format!("/manage/tokens/{t2id}"), None)
        .await;

    // --- traffic: usage rows, and a proxy.denied event (not in alpha's models) ---
    let mini = "gpt-4o-mini";
    r.chats(&[
        (&s1, mini, 200),
        (&s1, mini, 200),
        (&s1, mini, 200),
        (&s1, "gpt-4o", 200),
        (&s3, mini, 200),
        (&s1, "text-embedding-3-small", 403),
    ])
    .await;
    r.wait("/manage/usage", |v| {
        v["data"][0]["requests"].as_i64() == Some(5)
    })
    .await;
    // Everything so far is stored before this instant; what follows is after it.
    let mid = now();
    mock.fail_next(json!({ "count": 1, "status": 400 })).await;
    r.chats(&[(&s3, "gpt-4o", 400), (&s4, mini, 200)]).await;

    // --- revocations ---
    r.call(
        200,
        "POST",
        &format!("/manage/projects/{b}/tokens/revoke"),
        None,
    )
    .await;
    r.call(204, "DELETE", &format!("/manage/projects/{c}"), None)
        .await;
    r.chats(&[(&s3, mini, 401), (&s4, mini, 401)]).await;
    let live = r.call(200, "GET", "/manage/projects", None).await;
    assert_eq!(count(&live), 2);
    r.create("projects", json!({ "name": "gamma" })).await;

    // --- users and sessions ---
    let pw = "correct horse battery";
    let u =
        |name: &str, role: &str| post(json!({ "username": name, "password": pw, "role": role }));
    let user = r
        .call(201, "POST", "/manage/users", u("Alice", "viewer"))
        .await;
    r.call(409, "POST", "/manage/users", u("alice", "admin"))
        .await;
    r.call(201, "POST", "/manage/users", u("bob", "admin"))
        .await;
    let users = r.call(200, "GET", "/manage/users", None).await;
    assert_eq!(count(&users), 2);
    let login = gw
        .post("/manage/auth/login")
        .json(&json!({ "username": "alice", "password": pw }));
    let pair: Value = login.send().await.unwrap().json().await.unwrap();
    let second = r.refresh(&pair["refresh_token"], 200).await;
    // A spent refresh token again: reuse, the whole family is revoked.
    r.refresh(&pair["refresh_token"], 401).await;
    r.refresh(&second["refresh_token"], 401).await;
    r.call(204, "DELETE", &format!("/manage/users/{}", id(&user)), None)
        .await;
    let users = r.call(200, "GET", "/manage/users", None).await;
    assert_eq!(count(&users), 1);

    // --- usage: every group, every filter ---
    let all = r
        .wait("/manage/usage?group_by=day", |v| {
            v["data"][0]["requests"].as_i64() == Some(7)
        })
        .await;
    assert_eq!(all["data"][0]["errors"], 1);
    let by_model = r
        .call(200, "GET", "/manage/usage?group_by=model", None)
        .await;
    assert_eq!(keys(&by_model), vec![json!("gpt-4o"), json!("gpt-4o-mini")]);
    let by_token = r
        .call(200, "GET", "/manage/usage?group_by=token", None)
        .await;
    let mut want = vec![json!(t1id), json!(t3id), json!(t4id)];
    want.sort_by_key(|v| v.as_str().unwrap().to_owned());
    assert_eq!(keys(&by_token), want);
    let late = r
        .call(
            200,
            "GET",
            &format!("/manage/usage?group_by=token&since={mid}"),
            None,
        )
        .await;
    assert_eq!(count(&late), 2, "{late}");
    // --- audit: pages and every filter ---
    r.wait("/manage/audit?action=user.delete", |v| count(v) == 1)
        .await;
    let everything = r.call(200, "GET", "/manage/audit?limit=500", None).await;
    let (seen, _) = r.pages("/manage/audit", 5).await;
    assert_eq!(seen, count(&everything));
    let created = r
        .call(200, "GET", "/manage/audit?action=token.create", None)
        .await;
    assert_eq!(count(&created), 4);
    let denied = r
        .call(200, "GET", "/manage/audit?result=denied", None)
        .await;
    assert!(count(&denied) >= 1, "{denied}");
    // The other filters, whose answers the transcripts compare.
    for q in [
        format!("usage?group_by=model&project_id={a}"),
        format!("usage?group_by=day&token_id={t3id}"),
        format!("usage?group_by=model&until={mid}"),
        format!("usage?group_by=day&until={t0}"),
        format!("usage?group_by=token&project_id={b}&since={t0}"),
        "audit?action=token.rotate".to_owned(),
        "audit?action=proxy.denied".to_owned(),
        "audit?actor=management-token&limit=3".to_owned(),
        format!("audit?project_id={a}"),
        format!("audit?token_id={t1id}"),
        "audit?result=failure".to_owned(),
        format!("audit?since={mid}&action=project.delete"),
        format!("audit?until={mid}&action=project.delete"),
        format!("audit?until={t0}"),
        format!("audit?since={t0}&action=token.create&limit=2"),
    ] {
        r.call(200, "GET", &format!("/manage/{q}"), None).await;
    }
    r.t.steps
}

#[test]
fn backends_transcripts_normalise_ids_inside_actors() {
    let mut t = Transcript {
        steps: Vec::new(),
        ids: HashMap::new(),
    };
    let v = t.norm(
        None,
        &json!({ "actor": "user-id:01a22e88-a9ed-739f-b771-e7821e60cce2", "at": "2026-11-30T10:00:00.123456Z", "day": "2026-11-30" }),
    );
    assert_eq!(
        v,
        json!({ "actor": "user-id:<id 0>", "at": "<time>", "day": "<day>" })
    );
}
