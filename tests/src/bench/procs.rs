//! Processes under test: the mock upstream, a release `palisade`, optionally nginx;
//! CPU pinning with `taskset`, and RSS from `/proc`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Proc {
    child: Child,
    pub url: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn have_taskset() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pins this process (and the threads it starts later) to `cpu`.
pub fn pin_self(cpu: usize) -> bool {
    Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn command(bin: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// Waits for a line containing `marker` on the reader and returns what follows it;
/// every line also goes to `log` when given (kept after the run, for the
/// gateway's own account of anything odd in the numbers).
///
/// Past the marker the rest is copied in bulk (`io::copy`), not line by line:
/// with the access log on, the gateway writes a line per request, and a copier
/// that made one `write` per line spent the bench's own CPU (on a 2-core machine,
/// the cores the gateway and the mock share) on the harness, not on the gateway.
fn wait_for(
    reader: impl std::io::Read + Send + 'static,
    marker: &'static str,
    log: Option<&Path>,
) -> Result<String, String> {
    let mut log: Box<dyn std::io::Write + Send> = match log {
        Some(path) => {
            Box::new(std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => Box::new(std::io::sink()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(256 * 1024, reader);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let _ = log.write_all(line.as_bytes());
            if let Some(i) = line.find(marker) {
                let rest = &line[i + marker.len()..];
                let addr = rest
                    .split(|c: char| c == '"' || c.is_whitespace())
                    .next()
                    .unwrap_or_default();
                let _ = tx.send(addr.to_owned());
                break;
            }
        }
        let _ = std::io::copy(&mut reader, &mut log);
    });
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| format!("no '{marker}' line in time"))
}

pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

pub fn spawn_mock(cpu: Option<usize>) -> Result<Proc, String> {
    let mut child = command(&bin_dir().join("mock-upstream"), cpu)
        .args(["--listen", "127.0.0.1:0", "--name", "bench"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start mock-upstream: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let addr = wait_for(out, "listening on ", None)?;
    Ok(Proc {
        child,
        url: format!("http://{addr}"),
    })
}

/// The `palisade` binary built beside this one.
pub fn palisade_bin() -> std::path::PathBuf {
    bin_dir().join("palisade")
}

pub const BENCH_MANAGEMENT_TOKEN: &str = "bench-management-token-0123456789abcdef";

/// `extra` is appended to the config (e.g. to switch audit and usage off); the
/// gateway's log goes to `log`.
pub fn spawn_palisade(
    bin: &Path,
    cpu: Option<usize>,
    dir: &Path,
    mock_url: &str,
    extra: &str,
    log: &Path,
) -> Result<Proc, String> {
    start_palisade(command(bin, cpu), dir, mock_url, extra, log)
}

/// [`spawn_palisade`] run by another program (`wrapper`, e.g. valgrind), unpinned.
pub fn spawn_palisade_under(
    wrapper: &[String],
    bin: &Path,
    dir: &Path,
    mock_url: &str,
    extra: &str,
    log: &Path,
) -> Result<Proc, String> {
    let (program, args) = wrapper.split_first().ok_or("empty wrapper")?;
    let mut cmd = Command::new(program);
    cmd.args(args).arg(bin);
    start_palisade(cmd, dir, mock_url, extra, log)
}

fn start_palisade(
    mut cmd: Command,
    dir: &Path,
    mock_url: &str,
    extra: &str,
    log: &Path,
) -> Result<Proc, String> {
    let audit = if extra.contains("audit:") {
        String::new()
    } else {
        format!("audit: {{ file: \"{}/audit.jsonl\" }}\n", dir.display())
    };
    // `extra` may bring its own `server:`, `database:`, `auth:` or `logging:` section instead of
    // these.
    // The bench's clients all connect from 127.0.0.1, as clients do through a load
    // balancer: trusted as one, so that `server.max_connections_per_ip` (256 by
    // default) does not refuse the open loop's connections (a key older builds
    // under `--before` would not know).
    let server = match extra.contains("server:") {
        true => "",
        false => {
            "server: { listen: \"127.0.0.1:0\", workers: 1, trusted_proxies: [\"127.0.0.1/32\"] }\n"
        }
    };
    let logging = match extra.contains("logging:") {
        true => "",
        false => "logging: { level: info, format: json }\n",
    };
    let auth = match extra.contains("auth:") {
        true => String::new(),
        false => format!("auth: {{ management_token: \"{BENCH_MANAGEMENT_TOKEN}\" }}\n"),
    };
    let database = match extra.contains("database:") {
        true => String::new(),
        false => format!(
            "database: {{ url: \"sqlite://{}/palisade.db?mode=rwc\" }}\n",
            dir.display()
        ),
    };
    let config = format!(
        "{server}{database}{auth}{logging}{audit}{extra}\
         providers:\n  - {{ name: mock, base_url: \"{mock_url}/v1\", api_key: \"sk-bench\", models: [\"gpt-4o-mini\", \"gpt-4o\"] }}\n",
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start palisade (build it with `cargo build --release -p palisade`): {e}"
            )
        })?;
    let err = child.stderr.take().ok_or("no stderr")?;
    let addr = wait_for(err, "listening on http://", Some(log))?;
    Ok(Proc {
        child,
        url: format!("http://{addr}"),
    })
}

/// nginx as a one-worker reverse proxy with upstream keep-alive, no buffering and a
/// trivial header check: the floor any gateway is compared against.
pub fn spawn_nginx(cpu: Option<usize>, dir: &Path, mock_url: &str) -> Result<Proc, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let upstream = mock_url.trim_start_matches("http://");
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
         upstream mock {{ server {upstream}; keepalive 256; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    tcp_nodelay on;\n\
         location / {{\n      if ($http_authorization != \"Bearer bench-nginx-key\") {{ return 401; }}\n\
         proxy_pass http://mock;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Authorization \"Bearer sk-bench\";\n      proxy_buffering off;\n      proxy_request_buffering off;\n    }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("nginx is not installed (apt-get install nginx-light)")?;
    let child = command(&nginx, cpu)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Proc {
                child,
                url: format!("http://127.0.0.1:{port}"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("nginx did not start listening".into())
}

/// (current RSS, peak RSS) in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
