//! Command line: `serve`, `migrate`, `migrate-data`, `check-config`, `user create`,
//! `rotate-encryption-key`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ExitError, InitError};
use crate::secret::Secret;

#[derive(Parser, Debug)]
#[command(
    name = "palisade",
    version,
    about = "A secure, OpenAI-compatible LLM gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Development mode: generates an ephemeral management token when none is
        /// set and prints it once to stderr. Never use in production.
        #[arg(long)]
        dev: bool,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Copy every project, token (with its hash), user, session, audit event and
    /// usage record from one database into another, empty one: the move from
    /// SQLite to PostgreSQL. Stop the gateway first. Both databases are migrated
    /// first; the copy is one transaction on the target (all or nothing).
    /// The URLs may hold passwords: give them in `PALISADE_MIGRATE_FROM` and
    /// `PALISADE_MIGRATE_TO` instead of on the command line, where `ps` shows them.
    MigrateData {
        /// The database to copy from (default: `PALISADE_MIGRATE_FROM`).
        #[arg(long)]
        from: Option<String>,
        /// The empty database to copy into (default: `PALISADE_MIGRATE_TO`).
        #[arg(long)]
        to: Option<String>,
        /// Rows per insert statement.
        #[arg(long, default_value_t = 500)]
        batch_size: u64,
    },
    /// Manage admin users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Re-encrypt every stored project upstream key under a new encryption key.
    /// Stop the server first. The current key comes from the configuration
    /// (`auth.encryption_key`), the new one from `PALISADE_NEW_ENCRYPTION_KEY`
    /// (never from the command line, where shell history and `ps` would keep it).
    /// All keys are rewritten in one transaction, or none.
    RotateEncryptionKey {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Validate as `serve --dev` would.
        #[arg(long)]
        dev: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create an admin user. The password is read from standard input (one line),
    /// never from the command line.
    Create {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        username: String,
        /// `admin` or `viewer`.
        #[arg(long)]
        role: String,
    },
}

pub async fn run(cli: Cli) -> Result<(), ExitError> {
    match cli.command {
        Command::Serve { config, dev } => {
            let mut cfg = if config::use_built_in(config.as_deref(), dev) {
                // Before logging starts, like the dev token line: one line on stderr.
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "palisade --dev: no ./config.yaml (and no --config or PALISADE_CONFIG): using the {}",
                    config::BUILT_IN_NAME
                );
                Config::load_built_in(dev)?
            } else {
                Config::load(&config::resolve_path(config.as_deref()), dev)?
            };
            let _guard = crate::telemetry::init(&cfg.logging);
            if dev {
                enter_dev_mode(&mut cfg);
            } else {
                crate::preflight::check(&cfg)?;
            }
            crate::app::serve(cfg).await
        }
        Command::Migrate { config } => {
            // Migrating needs only the database settings, so the serving-time
            // requirements (management token) are not enforced here.
            let cfg = Config::load(&config::resolve_path(config.as_deref()), true)?;
            let _guard = crate::telemetry::init(&cfg.logging);
            let conn = crate::db::connect(&cfg.database).await?;
            crate::db::migrate(&conn).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::MigrateData {
            from,
            to,
            batch_size,
        } => Ok(migrate_data(from, to, batch_size).await?),
        Command::User {
            command:
                UserCommand::Create {
                    config,
                    username,
                    role,
                },
        } => {
            let cfg = Config::load(&config::resolve_path(config.as_deref()), true)?;
            let _guard = crate::telemetry::init(&cfg.logging);
            Ok(create_user(&cfg, &username, &role).await?)
        }
        Command::RotateEncryptionKey { config } => {
            let cfg = Config::load(&config::resolve_path(config.as_deref()), true)?;
            let _guard = crate::telemetry::init(&cfg.logging);
            Ok(rotate_encryption_key(&cfg).await?)
        }
        Command::CheckConfig { config, dev } => {
            let path = config::resolve_path(config.as_deref());
            let cfg = Config::load(&path, dev)?;
            let yaml = yaml_serde::to_string(&cfg)
                .map_err(|e| InitError::Other(format!("cannot print the config: {e}")))?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "# {} is valid; effective configuration (secrets redacted):",
                path.display()
            )
            .and_then(|()| out.write_all(yaml.as_bytes()))
            .map_err(|e| InitError::Other(format!("stdout: {e}")))?;
            Ok(())
        }
    }
}

async fn migrate_data(
    from: Option<String>,
    to: Option<String>,
    batch: u64,
) -> Result<(), InitError> {
    use crate::config::DatabaseConfig;
    use crate::service::copy;
    let bad = |m: String| InitError::Other(format!("migrate-data: {m}"));
    let url = |arg: Option<String>, flag: &str, var: &str| {
        arg.or_else(|| std::env::var(var).ok())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| bad(format!("--{flag} (or {var}) is required")))
    };
    let (from, to) = (
        url(from, "from", "PALISADE_MIGRATE_FROM")?,
        url(to, "to", "PALISADE_MIGRATE_TO")?,
    );
    for (flag, u) in [("from", &from), ("to", &to)] {
        if !crate::db::is_postgres(u) && !u.starts_with("sqlite:") {
            return Err(bad(format!(
                "--{flag} must be a sqlite: or postgres:// URL"
            )));
        }
    }
    // Opening a SQLite URL with `mode=rwc` would create an empty source.
    if let Some(path) = crate::db::sqlite_file_path(&from)
        && !path.exists()
    {
        return Err(bad(format!("--from: {} does not exist", path.display())));
    }
    let open = async |u: &str| {
        let cfg = DatabaseConfig {
            url: Secret::new(u),
            ..DatabaseConfig::default()
        };
        let conn = crate::db::connect(&cfg).await?;
        crate::db::migrate(&conn).await?;
        Ok::<_, InitError>(conn)
    };
    let source = open(&from).await?;
    let target = open(&to).await?;
    let copied = copy::copy_all(&source, &target, batch)
        .await
        .map_err(|e| bad(e.to_string()))?;
    // Read back: what the target holds now is what the source held.
    let now = copy::counts(&target)
        .await
        .map_err(|e| bad(format!("counting the copy: {e}")))?;
    if now != copied {
        return Err(bad(format!(
            "the copy holds {now:?} rows, the source had {copied:?}"
        )));
    }
    let mut out = std::io::stdout().lock();
    for (table, n) in &copied {
        writeln!(out, "{table}: {n} rows copied")
            .map_err(|e| InitError::Other(format!("stdout: {e}")))?;
    }
    Ok(())
}

async fn create_user(cfg: &Config, username: &str, role: &str) -> Result<(), InitError> {
    use crate::sessions::{Role, passwords};
    let bad = |m: String| InitError::Other(format!("user create: {m}"));
    let role = Role::parse(role).ok_or_else(|| bad("--role must be admin or viewer".into()))?;
    if !crate::sessions::users::username_ok(username) {
        return Err(bad("--username: 1-64 letters, digits and . _ - @".into()));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| bad(format!("reading the password from stdin: {e}")))?;
    let password = Secret::new(line.trim_end_matches(['\n', '\r']));
    passwords::check_policy(password.expose()).map_err(|why| bad(format!("password {why}")))?;
    let conn = crate::db::connect(&cfg.database).await?;
    crate::db::migrate(&conn).await?;
    let cost = u32::try_from(cfg.auth.bcrypt_cost).unwrap_or(12);
    let hasher = passwords::Hasher::start(1, cost);
    let user = crate::sessions::users::create_user(&conn, username, password, role, &hasher)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created {} user {} ({})",
        user.role, user.username, user.id
    )
    .map_err(|e| InitError::Other(format!("stdout: {e}")))?;
    if cfg.auth.jwt_secret.is_empty() {
        writeln!(out, "note: set auth.jwt_secret (PALISADE_JWT_SECRET, at least 32 bytes) before starting the server: logins need it")
            .map_err(|e| InitError::Other(format!("stdout: {e}")))?;
    }
    Ok(())
}

async fn rotate_encryption_key(cfg: &Config) -> Result<(), InitError> {
    use crate::crypto::KeyCipher;
    let bad = |m: String| InitError::Other(format!("rotate-encryption-key: {m}"));
    let old = KeyCipher::from_base64(cfg.auth.encryption_key.expose())
        .map_err(|e| bad(format!("auth.encryption_key (the current key): {e}")))?;
    let new_key = Secret::new(std::env::var("PALISADE_NEW_ENCRYPTION_KEY").unwrap_or_default());
    let new = KeyCipher::from_base64(new_key.expose())
        .map_err(|e| bad(format!("PALISADE_NEW_ENCRYPTION_KEY: {e}")))?;
    let conn = crate::db::connect(&cfg.database).await?;
    crate::db::migrate(&conn).await?;
    let n = crate::service::mutation::Mutation::reencrypt_project_keys(&conn, &old, &new)
        .await
        .map_err(bad)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "re-encrypted {n} project upstream key(s); set PALISADE_ENCRYPTION_KEY to the new key before starting the server"
    )
    .map_err(|e| InitError::Other(format!("stdout: {e}")))
}

/// `--dev`: an ephemeral management token unless one is configured, printed once.
fn enter_dev_mode(cfg: &mut Config) {
    tracing::warn!(
        "DEVELOPMENT MODE: a short or missing management token and a missing JWT secret are replaced by ephemeral ones; a public plaintext listener and data files readable by others are allowed; do not expose this instance"
    );
    if cfg.auth.management_token.expose().len() < config::MIN_MANAGEMENT_TOKEN_LEN {
        let token = crate::secret::TokenSecret::generate();
        let value = format!("dev-{}", &token.expose()[4..]);
        // Printed once, to stderr, outside the log stream, as SPEC §4 asks of --dev.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "palisade --dev: ephemeral management token: {value}");
        cfg.auth.management_token = Secret::new(value);
    }
    if cfg.auth.jwt_secret.is_empty() {
        // Ephemeral: sessions end with the process.
        let secret = crate::secret::TokenSecret::generate();
        cfg.auth.jwt_secret = Secret::new(secret.expose().to_owned());
    }
}
