#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The container files keep their hardening: no Docker daemon is needed to check
//! that a change did not drop it (building and running the image is not part of
//! the suite; see the README).

fn read(name: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../").to_owned() + name).unwrap()
}

#[test]
fn dockerfile_runs_locked_non_root_with_a_healthcheck_and_no_baked_secrets() {
    let d = read("Dockerfile");
    assert!(d.contains("cargo build --release --locked"), "locked build");
    let user = d
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(
        !user.contains("root") && !user.ends_with(" 0") && !user.contains(" 0:"),
        "{user}"
    );
    assert!(d.contains("HEALTHCHECK"), "a health check");
    assert!(d.contains("VOLUME [\"/data\"]"), "data on a volume");
    for secret in ["MANAGEMENT_TOKEN=", "ENCRYPTION_KEY=", "API_KEY="] {
        assert!(
            !d.contains(secret),
            "a secret baked into the image: {secret}"
        );
    }
    let ignore = read(".dockerignore");
    for entry in ["target", "data", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

#[test]
fn compose_example_is_read_only_unprivileged_and_capability_free() {
    let c = read("compose.yaml");
    for needle in [
        "read_only: true",
        "no-new-privileges:true",
        "- ALL",
        "user: \"10001:10001\"",
    ] {
        assert!(c.contains(needle), "compose.yaml lacks {needle}");
    }
    assert!(
        c.contains("cap_drop:"),
        "compose.yaml drops no capabilities"
    );
}
