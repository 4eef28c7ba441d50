//! Small filesystems a test can fill and free: size-limited tmpfs mounts over
//! directories of the gateway's data directory, for real `ENOSPC` faults.
//!
//! Two ways, picked once per test ([`SmallFs::mount`]):
//! - **namespace** (no root needed): where unprivileged user namespaces are
//!   available, the gateway starts inside `unshare -Urm`, which mounts the tmpfs
//!   in the gateway's own mount namespace; the test reaches it through
//!   `/proc/<pid>/root/…`. Nothing is mounted on the host, and the mounts vanish
//!   with the process.
//! - **host** (fallback when root): the tmpfs is mounted on the host and unmounted
//!   when the `SmallFs` is dropped.
//!
//! Neither available: the test fails with a message saying what it needs (it never
//! skips). Filling refuses to write anywhere but a tmpfs and stops at twice the
//! mount's size, so a mistake can never fill a real disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Namespace,
    Host,
}

pub struct SmallFs {
    mode: Mode,
    /// Mount points and sizes in bytes.
    mounts: Vec<(PathBuf, u64)>,
    /// The gateway's pid (namespace mode: the way into its mounts).
    pid: Option<u32>,
}

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["-Urm", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl SmallFs {
    /// Prepares a tmpfs of `size` bytes at each directory (created if missing).
    pub fn mount(mounts: &[(&Path, u64)]) -> Self {
        let mode = if unshare_works() {
            Mode::Namespace
        } else if is_root() {
            Mode::Host
        } else {
            panic!(
                "the storage fault tests need unprivileged user namespaces (`unshare -Urm true` fails here) or root, to mount a small tmpfs"
            );
        };
        let fs = Self {
            mode,
            mounts: mounts.iter().map(|(p, n)| (p.to_path_buf(), *n)).collect(),
            pid: None,
        };
        for (dir, _) in &fs.mounts {
            std::fs::create_dir_all(dir).unwrap();
        }
        if mode == Mode::Host {
            for (dir, size) in &fs.mounts {
                let st = Command::new("mount")
                    .args([
                        "-t",
                        "tmpfs",
                        "-o",
                        &format!("size={size},mode=0700"),
                        "tmpfs",
                    ])
                    .arg(dir)
                    .status()
                    .unwrap();
                assert!(st.success(), "mount tmpfs on {}", dir.display());
            }
        }
        fs
    }

    /// The command to start the gateway through (`GatewayBuilder::wrap`).
    pub fn wrapper(&self) -> Vec<String> {
        if self.mode == Mode::Host {
            return Vec::new();
        }
        let mounts: Vec<String> = self
            .mounts
            .iter()
            .map(|(dir, size)| {
                format!(
                    "mount -t tmpfs -o size={size},mode=0700 tmpfs '{}'",
                    dir.display()
                )
            })
            .collect();
        let script = format!("{} && exec \"$@\"", mounts.join(" && "));
        ["unshare", "-Urm", "sh", "-c", &script, "sh"]
            .map(str::to_owned)
            .to_vec()
    }

    /// The gateway started: its mounts are reached through its pid.
    pub fn attach(&mut self, pid: u32) {
        self.pid = Some(pid);
    }

    /// Where the test reads or writes a path as the gateway sees it.
    pub fn path(&self, p: &Path) -> PathBuf {
        match (self.mode, self.pid) {
            (Mode::Namespace, Some(pid)) => {
                PathBuf::from(format!("/proc/{pid}/root")).join(p.strip_prefix("/").unwrap())
            }
            (Mode::Namespace, None) => panic!("attach the gateway's pid first"),
            (Mode::Host, _) => p.to_path_buf(),
        }
    }

    /// Fills the tmpfs at mount point `dir` until writes fail with `ENOSPC`;
    /// returns the filler file (give it to [`Self::free`]).
    pub fn fill(&self, dir: &Path) -> PathBuf {
        let (_, size) = self
            .mounts
            .iter()
            .find(|(d, _)| d == dir)
            .expect("a mount point of this SmallFs");
        let at = self.path(dir);
        let fs_type = Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(&at)
            .output()
            .unwrap();
        assert_eq!(
            fs_type.stdout.trim_ascii(),
            b"tmpfs",
            "refusing to fill {}: not the small tmpfs",
            at.display()
        );
        let filler = at.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            assert!(written <= size * 2, "{} never filled up", at.display());
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", at.display()),
            }
        }
        // Whatever a page-sized write could still squeeze in.
        while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
        filler
    }

    pub fn free(&self, filler: &Path) {
        std::fs::remove_file(filler).unwrap();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if self.mode == Mode::Host {
            for (dir, _) in &self.mounts {
                let _ = Command::new("umount").arg("-l").arg(dir).status();
            }
        }
    }
}
