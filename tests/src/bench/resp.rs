//! Just enough of the Redis protocol for the `--scale-out` side: `INFO`, `SCAN`
//! and `DEL` on one blocking connection, and `MONITOR` read line by line. The
//! bench's own connection, not the gateway's client, so what it sends is never
//! counted as the gateway's (it is told apart by its address).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A reply, as far as the bench needs one.
#[derive(Debug)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Int(i) => i.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) => String::new(),
            Reply::Array(items) => items.iter().map(Reply::text).collect::<Vec<_>>().join(" "),
        }
    }
}

/// `host:port` out of `redis://host:port[/db]`; a password in the URL is not
/// supported here (the machine's Redis has none).
pub fn address(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or("--redis-url must be redis://host:port[/db]")?;
    let hostport = rest.split('/').next().unwrap_or_default();
    if hostport.contains('@') {
        return Err("--redis-url with a password is not supported by the bench".into());
    }
    Ok(match hostport.contains(':') {
        true => hostport.to_owned(),
        false => format!("{hostport}:6379"),
    })
}

pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(addr: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("redis {addr}: {e}"))?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    pub fn try_clone_stream(&self) -> Result<TcpStream, String> {
        self.reader.get_ref().try_clone().map_err(|e| e.to_string())
    }

    pub fn send(&mut self, args: &[&str]) -> Result<(), String> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.reader
            .get_mut()
            .write_all(out.as_bytes())
            .map_err(|e| e.to_string())
    }

    pub fn call(&mut self, args: &[&str]) -> Result<Reply, String> {
        self.send(args)?;
        match self.reply()? {
            Reply::Error(e) => Err(format!("redis {}: {e}", args.first().unwrap_or(&""))),
            r => Ok(r),
        }
    }

    pub fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("redis closed the connection".into()),
            Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn reply(&mut self) -> Result<Reply, String> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let int = || {
            rest.parse::<i64>()
                .map_err(|e| format!("bad reply {line:?}: {e}"))
        };
        Ok(match kind {
            "+" => Reply::Status(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(int()?),
            "$" => match usize::try_from(int()?) {
                Ok(n) => {
                    let mut buf = vec![0; n + 2];
                    self.reader
                        .read_exact(&mut buf)
                        .map_err(|e| e.to_string())?;
                    buf.truncate(n);
                    Reply::Bulk(Some(buf))
                }
                Err(_) => Reply::Bulk(None),
            },
            "*" => {
                let n = usize::try_from(int()?).unwrap_or(0);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.reply()?);
                }
                Reply::Array(items)
            }
            _ => return Err(format!("unexpected redis reply {line:?}")),
        })
    }

    /// `INFO commandstats` as (command, calls), e.g. `("evalsha", 1830)`.
    pub fn command_calls(&mut self) -> Result<Vec<(String, u64)>, String> {
        let info = self.call(&["INFO", "commandstats"])?.text();
        Ok(info
            .lines()
            .filter_map(|l| {
                let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect())
    }

    /// Deletes every key under `prefix`; how many there were.
    pub fn delete_prefix(&mut self, prefix: &str) -> Result<usize, String> {
        let pattern = format!("{prefix}*");
        let mut cursor = "0".to_owned();
        let mut deleted = 0;
        loop {
            let r = self.call(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])?;
            let Reply::Array(parts) = r else {
                return Err("SCAN: unexpected reply".into());
            };
            let mut parts = parts.into_iter();
            cursor = parts.next().map(|c| c.text()).unwrap_or_default();
            let keys: Vec<String> = match parts.next() {
                Some(Reply::Array(keys)) => keys.iter().map(Reply::text).collect(),
                _ => Vec::new(),
            };
            if !keys.is_empty() {
                let mut args = vec!["DEL"];
                args.extend(keys.iter().map(String::as_str));
                self.call(&args)?;
                deleted += keys.len();
            }
            if cursor == "0" || cursor.is_empty() {
                return Ok(deleted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            address("redis://127.0.0.1:6379/0").unwrap(),
            "127.0.0.1:6379"
        );
        assert_eq!(address("redis://localhost").unwrap(), "localhost:6379");
        assert!(address("redis://:pw@h:1/0").is_err());
        assert!(address("rediss://h:1").is_err());
    }
}
