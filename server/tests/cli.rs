#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The `palisade` binary's command line, run as a user would.
//! (Having an integration test here also makes `cargo test --workspace` build the
//! binary that the end-to-end suite in `tests/` starts.)

use std::process::Command;

const TOKEN: &str = "cli-test-management-token-0123456789";

fn palisade() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.env_remove("PALISADE_CONFIG")
        .env_remove("PALISADE_LISTEN")
        .env_remove("PALISADE_DATABASE_URL")
        .env_remove("PALISADE_MANAGEMENT_TOKEN");
    cmd
}

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_prints_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "auth: { management_token: \"${MY_TOKEN}\" }\nproviders:\n  - { name: up, base_url: \"http://127.0.0.1:9/v1\", api_key: \"sk-very-secret-upstream\" }\n",
    );
    let out = palisade()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("MY_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listen: 127.0.0.1:8080"), "{stdout}");
    assert!(stdout.contains("[redacted]"), "{stdout}");
    assert!(
        !stdout.contains(TOKEN) && !stdout.contains("sk-very-secret-upstream"),
        "{stdout}"
    );
}

#[test]
fn check_config_finds_config_through_palisade_config_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!(
            "auth: {{ management_token: {TOKEN} }}\nproviders: [{{ name: a, base_url: \"http://x/v1\" }}]\n"
        ),
    );
    let out = palisade()
        .arg("check-config")
        .env("PALISADE_CONFIG", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_unknown_keys_and_unset_variables_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "server: { listen_addr: x }\n");
    let out = palisade()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server") && stderr.contains("listen_addr"),
        "{stderr}"
    );

    let path = write(
        dir.path(),
        "auth: { management_token: \"${PALISADE_SURELY_UNSET}\" }\n",
    );
    let out = palisade()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PALISADE_SURELY_UNSET"));
}

#[test]
fn serve_refuses_a_short_management_token_without_dev() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "auth: { management_token: short }\nproviders: [{ name: a, base_url: \"http://x/v1\" }]\n",
    );
    let out = palisade()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.management_token"));
}

#[test]
fn migrate_creates_a_private_database() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/state/p.db");
    let path = write(
        dir.path(),
        &format!(
            "database: {{ url: \"sqlite://{}?mode=rwc\" }}\nproviders: [{{ name: a, base_url: \"http://x/v1\" }}]\n",
            db.display()
        ),
    );
    let out = palisade()
        .args(["migrate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file_mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    let dir_mode = std::fs::metadata(db.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(file_mode, 0o600);
    assert_eq!(dir_mode, 0o700);
}

/// `serve` with `config`, expected to refuse: exit 64, stderr naming `what`.
fn assert_refused(config: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), config);
    let out = palisade()
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(what), "{stderr}");
}

#[test]
fn serve_refuses_a_public_plaintext_listener_unless_told_tls_is_elsewhere() {
    let base = format!(
        "auth: {{ management_token: {TOKEN} }}\naudit: {{ file: \"\" }}\ndatabase: {{ url: \"sqlite::memory:\" }}\nproviders: [{{ name: a, base_url: \"http://127.0.0.1:9/v1\", health_check: {{ enabled: false }} }}]\n"
    );
    assert_refused(
        &format!("{base}server: {{ listen: \"0.0.0.0:0\" }}\n"),
        "allow_plaintext_public",
    );
    // Told that TLS terminates in front: it starts (and is stopped here).
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!("{base}server: {{ listen: \"0.0.0.0:0\", allow_plaintext_public: true }}\n"),
    );
    let mut child = palisade()
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut seen = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("listening on") {
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("listening on"), "{seen}");
}

#[test]
fn serve_refuses_data_files_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused(
        &format!(
            "auth: {{ management_token: {TOKEN} }}\naudit: {{ file: \"\" }}\ndatabase: {{ url: \"sqlite://{}?mode=rwc\" }}\nproviders: [{{ name: a, base_url: \"http://127.0.0.1:9/v1\" }}]\n",
            db.display()
        ),
        "chmod 600",
    );
}

#[test]
fn serve_refuses_admin_users_without_a_jwt_secret() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!(
            "auth: {{ management_token: {TOKEN}, bcrypt_cost: 4 }}\naudit: {{ file: \"\" }}\ndatabase: {{ url: \"sqlite://{}/state/p.db?mode=rwc\" }}\nproviders: [{{ name: a, base_url: \"http://127.0.0.1:9/v1\", health_check: {{ enabled: false }} }}]\n",
            dir.path().display()
        ),
    );
    let mut child = palisade()
        .args([
            "user",
            "create",
            "--username",
            "root-ops",
            "--role",
            "admin",
            "--config",
        ])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long enough password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("jwt_secret"));
    let out = palisade()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("auth.jwt_secret"), "{stderr}");
    assert!(!stderr.contains("a long enough password"), "{stderr}");
}

/// Reads `child`'s stderr until a line contains `marker` (or the stream ends);
/// everything read so far.
fn stderr_until(child: &mut std::process::Child, marker: &str) -> String {
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut seen = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains(marker) {
            break;
        }
        line.clear();
    }
    seen
}

#[test]
fn serve_dev_without_any_config_file_runs_on_built_in_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = palisade()
        .args(["serve", "--dev"])
        .current_dir(dir.path())
        .env("PALISADE_LISTEN", "127.0.0.1:0")
        // The built-in provider reads these; keep it off the network.
        .env("PALISADE_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .env_remove("PALISADE_OPENAI_API_KEY")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = stderr_until(&mut child, "listening on");
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("listening on"), "{seen}");
    let notes: Vec<_> = seen
        .lines()
        .filter(|l| l.contains("using the built-in defaults"))
        .collect();
    assert_eq!(notes.len(), 1, "{seen}");
    // The built-in configuration is the documented one: data under ./data.
    assert!(dir.path().join("data/palisade.db").exists(), "{seen}");
}

#[test]
fn serve_without_a_config_file_refuses_unless_dev_and_none_was_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = palisade()
        .arg("serve")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("config.yaml"), "{stderr}");
    // A file that was named and is missing stays an error under --dev too.
    for named in [["--config", "missing.yaml"].as_slice(), &[]] {
        let mut cmd = palisade();
        cmd.args(["serve", "--dev"])
            .args(named)
            .current_dir(dir.path());
        if named.is_empty() {
            cmd.env("PALISADE_CONFIG", "missing.yaml");
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{named:?}: {stderr}");
        assert!(stderr.contains("missing.yaml"), "{named:?}: {stderr}");
        assert!(!stderr.contains("built-in"), "{named:?}: {stderr}");
    }
}
