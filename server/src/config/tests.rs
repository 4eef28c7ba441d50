//! Unit tests of loading, expansion and validation.
use super::*;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, InitError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Config::from_yaml(yaml, "test.yaml", &lookup, false)
}

fn minimal() -> String {
    format!(
        "auth: {{ management_token: \"{TOKEN}\" }}\nproviders:\n  - {{ name: a, base_url: \"http://127.0.0.1:1/v1\" }}\n"
    )
}

#[test]
fn default_config_round_trips() {
    let cfg = load(&minimal(), &[]).unwrap();
    let yaml = yaml_serde::to_string(&cfg).unwrap();
    // Secrets serialize redacted, so the dump is not a loadable config as is.
    assert!(!yaml.contains(TOKEN));
    let again = load(&yaml.replace("'[redacted]'", &format!("\"{TOKEN}\"")), &[]).unwrap();
    assert_eq!(again.server.listen, cfg.server.listen);
    assert_eq!(again.tokens.max_ttl, cfg.tokens.max_ttl);
}

#[test]
fn shipped_config_yaml_is_valid() {
    let cfg = load(BUILT_IN_YAML, &[("PALISADE_MANAGEMENT_TOKEN", TOKEN)]).unwrap();
    assert_eq!(cfg.server.max_body_bytes.0, DEFAULT_MAX_BODY_BYTES);
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let err = load(&format!("{}server: {{ listne: x }}\n", minimal()), &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("server"), "{msg}");
    assert!(msg.contains("listne"), "{msg}");
}

#[test]
fn unset_variable_is_named() {
    let err = load(
        "auth: { management_token: \"${PALISADE_TEST_UNSET_VAR}\" }\n",
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("PALISADE_TEST_UNSET_VAR"));
}

#[test]
fn short_management_token_is_refused_outside_dev() {
    let err = load(
        "auth: { management_token: short }\nproviders: [{ name: a, base_url: \"http://x/v1\" }]\n",
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("auth.management_token"));
}

#[test]
fn env_overrides_listen_and_database() {
    let cfg = load(
        &minimal(),
        &[
            ("PALISADE_LISTEN", "127.0.0.1:9"),
            ("PALISADE_DATABASE_URL", "sqlite::memory:"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.server.listen, "127.0.0.1:9");
    assert_eq!(cfg.database.url.expose(), "sqlite::memory:");
}

#[test]
fn bad_values_are_rejected_with_paths() {
    let yaml = format!(
        "{}server: {{ listen: nowhere, max_body_bytes: 10XB }}\n",
        minimal()
    );
    assert!(
        load(&yaml, &[])
            .unwrap_err()
            .to_string()
            .contains("server.max_body_bytes")
    );
    let yaml = format!(
        "{}server: {{ trusted_proxies: [\"10.0.0.0/99\"] }}\n",
        minimal()
    );
    assert!(
        load(&yaml, &[])
            .unwrap_err()
            .to_string()
            .contains("trusted_proxies")
    );
    let yaml = format!("{}server: {{ listen: nowhere }}\n", minimal());
    assert!(
        load(&yaml, &[])
            .unwrap_err()
            .to_string()
            .contains("server.listen")
    );
    let yaml = format!("{}tokens: {{ default_ttl: 2d, max_ttl: 1d }}\n", minimal());
    assert!(
        load(&yaml, &[])
            .unwrap_err()
            .to_string()
            .contains("tokens.default_ttl")
    );
}

#[test]
fn health_check_unhealthy_threshold_defaults_to_2_and_must_be_positive() {
    let cfg = load(&minimal(), &[]).unwrap();
    assert_eq!(cfg.providers[0].health_check.unhealthy_threshold, 2);
    let with = |n: &str| {
        minimal().replace(
            "base_url: \"http://127.0.0.1:1/v1\" }",
            &format!(
                "base_url: \"http://127.0.0.1:1/v1\", health_check: {{ unhealthy_threshold: {n} }} }}"
            ),
        )
    };
    let cfg = load(&with("3"), &[]).unwrap();
    assert_eq!(cfg.providers[0].health_check.unhealthy_threshold, 3);
    let err = load(&with("0"), &[]).unwrap_err().to_string();
    assert!(
        err.contains("providers[0].health_check.unhealthy_threshold: must be at least 1"),
        "{err}"
    );
}

#[test]
fn slow_client_limits_default_and_must_be_positive() {
    let c = load(&minimal(), &[]).unwrap();
    assert_eq!(
        c.server.client_body_timeout.0,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(c.server.max_connections_per_ip, 256);
    for (key, value) in [
        ("client_body_timeout", "0s"),
        ("max_connections_per_ip", "0"),
    ] {
        let yaml = format!("{}server: {{ {key}: {value} }}\n", minimal());
        let err = load(&yaml, &[]).unwrap_err().to_string();
        assert!(err.contains(&format!("server.{key}")), "{err}");
    }
}

#[test]
fn flood_limits_default_on_and_are_validated() {
    let cfg = load(&minimal(), &[]).unwrap();
    assert_eq!(cfg.auth.bcrypt_concurrency, 0);
    assert_eq!(cfg.rate_limits.unauthenticated_per_minute, 60);
    assert_eq!(cfg.rate_limits.unauthenticated_burst, 100);
    assert_eq!(cfg.audit.unauthenticated_window, HumanDuration::secs(60));
    let err = |extra: &str| {
        load(&format!("{}{extra}\n", minimal()), &[])
            .unwrap_err()
            .to_string()
    };
    let yaml = minimal().replace("auth: {", "auth: { bcrypt_concurrency: 257,");
    let too_many = load(&yaml, &[]).unwrap_err().to_string();
    assert!(too_many.contains("auth.bcrypt_concurrency"), "{too_many}");
    assert!(
        err("audit: { unauthenticated_window: 500ms }").contains("audit.unauthenticated_window")
    );
    assert!(
        err("rate_limits: { unauthenticated_burst: 0 }")
            .contains("rate_limits.unauthenticated_burst")
    );
}

const ENCRYPTION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const JWT_SECRET: &str = "jwt-secret-0123456789abcdef-0123456789";

#[test]
fn omitted_auth_secrets_read_their_variables() {
    let cfg = load(
        &minimal(),
        &[
            (
                "PALISADE_MANAGEMENT_TOKEN",
                "from-the-environment-0123456789abcdef",
            ),
            ("PALISADE_JWT_SECRET", JWT_SECRET),
            ("PALISADE_ENCRYPTION_KEY", ENCRYPTION_KEY),
        ],
    )
    .unwrap();
    // Written in the file: the file wins.
    assert_eq!(cfg.auth.management_token.expose(), TOKEN);
    assert_eq!(cfg.auth.jwt_secret.expose(), JWT_SECRET);
    assert_eq!(cfg.auth.encryption_key.expose(), ENCRYPTION_KEY);
}

#[test]
fn omitted_auth_section_reads_the_management_token_variable() {
    let cfg = load(
        "providers: [{ name: a, base_url: \"http://x/v1\" }]\n",
        &[("PALISADE_MANAGEMENT_TOKEN", TOKEN)],
    )
    .unwrap();
    assert_eq!(cfg.auth.management_token.expose(), TOKEN);
    assert_eq!(cfg.auth.jwt_secret.expose(), "");
    assert_eq!(cfg.auth.encryption_key.expose(), "");
}

#[test]
fn auth_secret_written_empty_stays_empty() {
    let cfg = load(
        &format!(
            "auth: {{ management_token: \"{TOKEN}\", encryption_key: \"\" }}\nproviders: [{{ name: a, base_url: \"http://x/v1\" }}]\n"
        ),
        &[("PALISADE_ENCRYPTION_KEY", ENCRYPTION_KEY)],
    )
    .unwrap();
    assert_eq!(cfg.auth.encryption_key.expose(), "");
}

#[test]
fn exit_codes_tell_start_up_from_runtime_failures() {
    let init = ExitError::from(InitError::Database("unreachable".to_owned()));
    assert_eq!(init.code(), 64);
    assert_eq!(init.to_string(), "database: unreachable");
    let runtime = ExitError::Runtime("server error: boom".to_owned());
    assert_eq!(runtime.code(), 70);
    assert_eq!(runtime.to_string(), "server error: boom");
}

/// Every key of the configuration (the defaults, one provider with every field)
/// is in docs/configuration.md: as its full path (`server.tls.min_version`), or, in
/// a row that lists siblings, as `.min_version` with its parent's path in the doc.
#[test]
fn every_config_key_is_documented() {
    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let path = match prefix {
                        "" => k.clone(),
                        p => format!("{p}.{k}"),
                    };
                    match v {
                        serde_json::Value::Object(m) if !m.is_empty() => leaves(&path, v, out),
                        serde_json::Value::Array(a) if a.first().is_some_and(|f| f.is_object()) => {
                            leaves(&format!("{path}[]"), &a[0], out)
                        }
                        _ => out.push(path),
                    }
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    let cfg = load(&minimal(), &[]).unwrap();
    let mut keys = Vec::new();
    leaves("", &serde_json::to_value(&cfg).unwrap(), &mut keys);
    assert!(keys.len() > 50, "{keys:?}");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| {
            let (parent, leaf) = k.rsplit_once('.').unwrap_or(("", k));
            let as_path = doc.contains(&format!("`{k}"));
            let as_sibling = doc.contains(&format!("`.{leaf}`")) && doc.contains(parent);
            !(as_path || as_sibling)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
}

/// Host patterns are parsed once, when the configuration is read (the edge uses
/// the parsed list), and print back as written.
#[test]
fn trusted_hosts_are_parsed_when_read_and_print_as_written() {
    let yaml = format!(
        "{}server: {{ trusted_hosts: [\"API.example.com\", \"*.gw.test:8443\"] }}\n",
        minimal()
    );
    let cfg = load(&yaml, &[]).unwrap();
    assert!(cfg.server.trusted_hosts[0].matches("api.example.com", None));
    assert!(cfg.server.trusted_hosts[1].matches("a.gw.test", Some("8443")));
    let printed = yaml_serde::to_string(&cfg.server.trusted_hosts).unwrap();
    assert!(printed.contains("api.example.com") && printed.contains("*.gw.test:8443"));
    let bad = format!(
        "{}server: {{ trusted_hosts: [\"bad host!\"] }}\n",
        minimal()
    );
    let err = load(&bad, &[]).unwrap_err().to_string();
    assert!(
        err.contains("server.trusted_hosts") && err.contains("bad host!"),
        "{err}"
    );
}

/// TLS versions and CORS origins are checked once, when the configuration is read.
#[test]
fn tls_versions_and_origins_are_parsed_when_read() {
    let with = |server: &str| load(&format!("{}server: {{ {server} }}\n", minimal()), &[]);
    for (written, want) in [
        ("\"1.3\"", units::TlsVersion::V1_3),
        ("1.3", units::TlsVersion::V1_3),
        ("1.2", units::TlsVersion::V1_2),
    ] {
        let cfg = with(&format!("tls: {{ min_version: {written} }}")).unwrap();
        assert_eq!(cfg.server.tls.unwrap().min_version, Some(want), "{written}");
    }
    let err = with("tls: { min_version: \"1.1\" }")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.tls.min_version") && err.contains("1.1"),
        "{err}"
    );
    let cfg = with("cors: { allowed_origins: [\"https://app.example.com\"] }").unwrap();
    assert_eq!(
        cfg.server.cors.allowed_origins[0].as_str(),
        "https://app.example.com"
    );
    let err = with("cors: { allowed_origins: [\"https://app.example.com/\"] }")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.cors.allowed_origins") && err.contains("not an origin"),
        "{err}"
    );
}

#[test]
fn instance_id_defaults_to_the_host_name_and_refuses_odd_characters() {
    let cfg = load(&minimal(), &[]).unwrap();
    assert_eq!(cfg.server.instance_id, "");
    assert!(!cfg.server.instance().is_empty());
    let named = load(
        &format!("{}server: {{ instance_id: gw-a.1 }}\n", minimal()),
        &[],
    )
    .unwrap();
    assert_eq!(named.server.instance(), "gw-a.1");
    let err = load(
        &format!("{}server: {{ instance_id: \"a b\" }}\n", minimal()),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("server.instance_id"), "{err}");
}

#[test]
fn redis_defaults_and_every_key() {
    let cfg = load(&minimal(), &[]).unwrap();
    assert_eq!(cfg.redis.url(), None, "off unless set");
    assert_eq!(cfg.redis.key_prefix, "palisade:");
    assert_eq!(
        cfg.redis.command_timeout.0,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(cfg.redis.on_error, RedisOnError::FailClosed);
    assert_eq!(cfg.redis.expected_instances, 1);
    let yaml = format!(
        "{}redis: {{ url: \"redis://:pw@127.0.0.1:6379/2\", key_prefix: \"gw1:\", command_timeout: 80ms, on_error: local, expected_instances: 3 }}\n",
        minimal()
    );
    let cfg = load(&yaml, &[]).unwrap();
    assert_eq!(cfg.redis.url(), Some("redis://:pw@127.0.0.1:6379/2"));
    assert_eq!(cfg.redis.key_prefix, "gw1:");
    assert_eq!(
        cfg.redis.command_timeout.0,
        std::time::Duration::from_millis(80)
    );
    assert_eq!(cfg.redis.on_error, RedisOnError::Local);
    assert_eq!(cfg.redis.expected_instances, 3);
    // Printed redacted (check-config).
    let printed = yaml_serde::to_string(&cfg.redis).unwrap();
    assert!(!printed.contains("pw@"), "{printed}");
    // `rediss://` (TLS) is accepted too; an empty URL means off.
    let tls = format!(
        "{}redis: {{ url: \"rediss://h.example:6380\" }}\n",
        minimal()
    );
    assert!(load(&tls, &[]).is_ok());
    let empty = format!("{}redis: {{ url: \"\" }}\n", minimal());
    assert_eq!(load(&empty, &[]).unwrap().redis.url(), None);
}

#[test]
fn redis_url_comes_from_the_environment_too() {
    let cfg = load(
        &minimal(),
        &[("PALISADE_REDIS_URL", "redis://127.0.0.1:6379/0")],
    )
    .unwrap();
    assert_eq!(cfg.redis.url(), Some("redis://127.0.0.1:6379/0"));
}

#[test]
fn bad_redis_settings_are_named_and_the_url_is_not_echoed() {
    let yaml = format!(
        "{}redis: {{ url: \"http://user:hunter2@x\", key_prefix: \"a b\", command_timeout: 0s, on_error: local, expected_instances: 0 }}\n",
        minimal()
    );
    let msg = load(&yaml, &[]).unwrap_err().to_string();
    for key in [
        "redis.url",
        "redis.key_prefix",
        "redis.command_timeout",
        "redis.expected_instances",
    ] {
        assert!(msg.contains(key), "{key}: {msg}");
    }
    assert!(!msg.contains("hunter2"), "{msg}");
    let yaml = format!("{}redis: {{ on_error: open }}\n", minimal());
    let msg = load(&yaml, &[]).unwrap_err().to_string();
    assert!(msg.contains("redis.on_error"), "{msg}");
    let yaml = format!("{}redis: {{ command_timeout: 11s }}\n", minimal());
    assert!(load(&yaml, &[]).is_err());
}
