//! Fail closed: what `palisade serve` refuses to start with outside `--dev`
//! (SPEC §4). Configuration *values* are validated in `config::validate`; these
//! checks look at the surroundings: where the listener is exposed and who can read
//! the data files.
//!
//! `--dev` skips them and says so at start (see `cli::enter_dev_mode`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, InitError};

/// Every refusal at once, then a warning for what is merely unwise.
pub fn check(cfg: &Config) -> Result<(), InitError> {
    let mut errors = Vec::new();
    if let Ok(addr) = cfg.server.listen.parse::<SocketAddr>()
        && !addr.ip().is_loopback()
        && !cfg.server.tls_enabled()
        && !cfg.server.allow_plaintext_public
    {
        errors.push(format!(
            "server.listen: {addr} is reachable from other hosts but serves plaintext; configure server.tls, or set server.allow_plaintext_public: true when TLS terminates at a load balancer in front of Palisade"
        ));
    }
    for path in data_paths(cfg) {
        if let Some(problem) = exposed(&path) {
            errors.push(problem);
        }
    }
    if !errors.is_empty() {
        return Err(InitError::Invalid {
            path: "start-up checks".to_owned(),
            errors,
        });
    }
    if cfg.server.trusted_hosts.is_empty() {
        tracing::warn!(
            "server.trusted_hosts is empty: any Host header is answered; list the names clients use"
        );
    }
    Ok(())
}

/// The SQLite database and the audit file, and the directories holding them.
fn data_paths(cfg: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(db) = crate::db::sqlite_file_path(cfg.database.url.expose()) {
        files.push(db);
    }
    if !cfg.audit.file.is_empty() {
        files.push(PathBuf::from(&cfg.audit.file));
    }
    let mut out = Vec::new();
    for f in files {
        if let Some(dir) = f.parent().filter(|d| !d.as_os_str().is_empty()) {
            out.push(dir.to_path_buf());
        }
        out.push(f);
    }
    out
}

/// A data file others can read or write, or a data directory others can write
/// to (and so swap files in), described. A directory others can merely list is
/// allowed: the files in it are what holds secrets.
fn exposed(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    let (mask, want, what) = if path.is_dir() {
        (0o022, "700", "write to it (and replace the files in it)")
    } else {
        (
            0o077,
            "600",
            "read it (it holds token hashes and audit records)",
        )
    };
    (mode & mask != 0).then(|| {
        format!(
            "{}: mode {:o} lets other users {what}; chmod {want} it",
            path.display(),
            mode & 0o777
        )
    })
}
