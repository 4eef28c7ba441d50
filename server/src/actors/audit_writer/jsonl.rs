//! The audit file (`audit.file`): JSON lines that are only ever appended whole.
//!
//! - A batch's lines go out in one append. If it fails or comes up short (a full
//!   disk takes what fits), the file is cut back to its length before the append,
//!   so it never ends in a partial record and a retry does not duplicate lines.
//! - If even that cut fails, the next append makes it first.
//! - At start, a partial last line (a crash in the middle of an append) is cut
//!   off, with a WARN naming how many bytes went.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub(super) struct AuditFile {
    path: PathBuf,
    /// A failed append could not be undone: cut the file back to this length
    /// before the next one.
    cut_to: Option<u64>,
}

impl AuditFile {
    /// Creates the file (`0600`, in a `0700` directory) if needed and repairs a
    /// torn last line.
    pub(super) fn open(path: PathBuf) -> io::Result<Self> {
        prepare_private_file(&path)?;
        let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
        if let Some(cut) = repair_tail(&mut f)? {
            tracing::warn!(
                path = %path.display(),
                bytes = cut,
                "the audit file ended in a partial line; cut it off"
            );
        }
        Ok(Self { path, cut_to: None })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `lines` (complete lines, each ending in `\n`) in one write.
    /// On an error the file holds exactly what it held before.
    pub(super) fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        if let Some(len) = self.cut_to {
            f.set_len(len)?;
            self.cut_to = None;
        }
        let before = f.metadata()?.len();
        match f.write_all(lines).and_then(|()| f.flush()) {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(cut) = f.set_len(before) {
                    tracing::warn!(error = %cut, "cannot undo a failed append to the audit file yet");
                    self.cut_to = Some(before);
                }
                Err(e)
            }
        }
    }
}

/// Cuts everything after the last `\n`; returns how many bytes went, if any.
fn repair_tail(f: &mut File) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; usize::try_from(CHUNK).unwrap_or(65_536)];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = usize::try_from(end - start).unwrap_or(0);
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep == len {
                return Ok(None);
            }
            f.set_len(keep)?;
            return Ok(Some(len - keep));
        }
        end = start;
    }
    if len > 0 {
        f.set_len(0)?;
        return Ok(Some(len));
    }
    Ok(None)
}

fn prepare_private_file(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn open_cuts_a_torn_last_line_and_keeps_whole_ones() {
        let (_dir, path) = file_with(b"{\"a\":1}\n{\"b\":2}\n{\"c\":");
        AuditFile::open(path.clone()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        // Intact files are left alone.
        AuditFile::open(path.clone()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn open_empties_a_file_without_any_whole_line() {
        let long = vec![b'x'; 200_000];
        let (_dir, path) = file_with(&long);
        AuditFile::open(path.clone()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn a_torn_line_longer_than_a_chunk_is_found() {
        let mut content = b"{\"a\":1}\n".to_vec();
        content.extend(vec![b'x'; 150_000]);
        let (_dir, path) = file_with(&content);
        AuditFile::open(path.clone()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n");
    }

    #[test]
    fn a_pending_cut_is_made_before_the_next_append() {
        let (_dir, path) = file_with(b"{\"a\":1}\n{\"partial");
        let mut f = AuditFile {
            path: path.clone(),
            cut_to: Some(8),
        };
        f.append(b"{\"b\":2}\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn a_failed_append_leaves_the_file_as_it_was() {
        // /dev/full takes nothing: every write fails with ENOSPC.
        let mut f = AuditFile {
            path: PathBuf::from("/dev/full"),
            cut_to: None,
        };
        let err = f.append(b"{\"a\":1}\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
    }
}
