//! The far side's resume spool: the bytes of each layer as they arrive, so a
//! transfer cut off by a dead link resumes where it stopped instead of
//! starting over.
//!
//! - One file per layer, named by its diffID (the sha256 of the uncompressed
//!   tar), holding a prefix of that tar. What a file holds is only trusted
//!   once the whole layer hashes to its name: a resumed layer is re-hashed
//!   from its first byte, and a mismatch deletes the file.
//! - A file is locked (`flock`) while a transfer uses it, so two pulls never
//!   write the same file; a locked file is neither offered nor evicted.
//! - Bounded: a layer that doesn't fit in the budget after evicting the
//!   oldest unlocked files isn't spooled (it still streams to the daemon).
//!   Files untouched for [`STALE`] are removed.
//! - A successful load removes the files of the image's layers.
//! - A layer arriving fast is not kept: sending it again after a break costs
//!   less than writing every byte twice (for docker and here) costs every
//!   transfer on a fast link. Unshaped in the benchmark, spooling took 0.3 s
//!   of a 5.8 s transfer.
//!
//! Where: `DOS_SPOOL_DIR`, else `$XDG_CACHE_HOME/dos/spool`, else
//! `~/.cache/dos/spool`. `DOS_SPOOL_MAX` bounds it (`0` turns it off).
//! `DOS_SPOOL_FAST` is the pace (bytes per second, e.g. `40M`) above which a
//! layer is not kept past its first [`PROBE`] bytes (`0`: kept at any pace).
//! Spooling is best effort: a spool that can't be written only costs the
//! ability to resume, never the transfer.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::registry::path::Digest;

/// Default bound on the spool's size.
pub const DEFAULT_MAX: u64 = 4 << 30;

/// Default pace above which a layer is not kept (bytes per second).
pub const DEFAULT_FAST: u64 = 40_000_000;

/// The bytes of a layer after which its pace is judged.
pub const PROBE: u64 = 16 << 20;

/// Files not written for this long are removed.
pub const STALE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    max: u64,
    /// Pace above which a layer is not kept (None: any pace).
    fast: Option<u64>,
}

/// One layer's file, locked by this process while it is held.
#[derive(Debug)]
pub struct Entry {
    pub diff_id: String,
    path: PathBuf,
    file: Option<File>,
    /// Bytes the file holds (a prefix of the layer's tar).
    len: u64,
}

impl Spool {
    /// The spool the environment describes, or None when it's turned off or
    /// can't be used (then a warning says why).
    pub fn from_env() -> Option<Spool> {
        let settings = crate::settings::spool(DEFAULT_MAX, DEFAULT_FAST);
        let max = settings.max.filter(|m| *m > 0)?;
        let fast = settings.fast;
        let dir = settings.dir?;
        match Spool::open(&dir, max) {
            Ok(s) => Some(Spool {
                fast: (fast > 0).then_some(fast),
                ..s
            }),
            Err(e) => {
                tracing::warn!(
                    "the resume spool {} can't be used ({e}); an interrupted transfer will start over",
                    dir.display()
                );
                None
            }
        }
    }

    /// Open (creating it, private to this user) and prune stale files.
    pub fn open(dir: &Path, max: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let spool = Spool {
            dir: dir.to_path_buf(),
            max,
            fast: Some(DEFAULT_FAST),
        };
        let now = SystemTime::now();
        for (path, _, modified) in spool.files() {
            if now.duration_since(modified).unwrap_or_default() > STALE {
                spool.remove_if_unlocked(&path);
            }
        }
        Ok(spool)
    }

    /// Should a layer that arrived `bytes` (at least [`PROBE`]) in `secs`
    /// be kept?
    pub fn worth_keeping(&self, bytes: u64, secs: f64) -> bool {
        self.fast.is_none_or(|f| (bytes as f64) <= secs * f as f64)
    }

    /// The file for a layer, if one holds some of it and no one else is
    /// using it.
    pub fn existing(&self, diff_id: &str) -> Option<Entry> {
        let path = self.path_of(diff_id)?;
        let file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
        file.try_lock().ok()?;
        let len = file.metadata().ok()?.len();
        (len > 0).then(|| Entry {
            diff_id: diff_id.to_string(),
            path,
            file: Some(file),
            len,
        })
    }

    /// A fresh file for a layer of `size` bytes, making room by evicting the
    /// oldest unlocked files not in `keep`; None if it can't fit.
    pub fn create(&self, diff_id: &str, size: u64, keep: &HashSet<String>) -> Option<Entry> {
        if size > self.max {
            return None;
        }
        let path = self.path_of(diff_id)?;
        let mut files = self.files();
        let mut used: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort_by_key(|(_, _, modified)| *modified);
        for (p, len, _) in files {
            if used + size <= self.max {
                break;
            }
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p != path && !keep.contains(&format!("sha256:{name}")) && self.remove_if_unlocked(&p)
            {
                used -= len;
            }
        }
        if used + size > self.max {
            return None;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ok()?;
        file.try_lock().ok()?;
        file.set_len(0).ok()?;
        Some(Entry {
            diff_id: diff_id.to_string(),
            path,
            file: Some(file),
            len: 0,
        })
    }

    fn path_of(&self, diff_id: &str) -> Option<PathBuf> {
        Digest::parse(diff_id).map(|d| self.dir.join(d.hex()))
    }

    /// Spool files with their sizes and modification times.
    fn files(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| {
            let e = e.ok()?;
            let m = e.metadata().ok()?;
            let name = e.file_name();
            let is_layer = name.len() == 64 && m.is_file();
            is_layer.then(|| {
                (
                    e.path(),
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                )
            })
        })
        .collect()
    }

    fn remove_if_unlocked(&self, path: &Path) -> bool {
        match File::open(path) {
            Ok(f) if f.try_lock().is_ok() => fs::remove_file(path).is_ok(),
            _ => false,
        }
    }
}

impl Entry {
    /// Bytes of the layer this file holds.
    pub fn held(&self) -> u64 {
        self.len
    }

    /// Still being written (no write has failed).
    pub fn usable(&self) -> bool {
        self.file.is_some()
    }

    /// Read what the file holds at `pos`.
    pub fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("spool file dropped"))?;
        f.seek(SeekFrom::Start(pos))?;
        f.read(buf)
    }

    /// Keep only the first `len` bytes; later writes append after them.
    pub fn truncate(&mut self, len: u64) {
        let ok = self
            .file
            .as_mut()
            .is_some_and(|f| f.set_len(len).is_ok() && f.seek(SeekFrom::Start(len)).is_ok());
        if ok {
            self.len = len;
        } else {
            self.give_up("truncating");
        }
    }

    /// Append the layer's next bytes. A failure (disk full) stops spooling
    /// this layer; the transfer goes on.
    pub fn append(&mut self, bytes: &[u8]) {
        if let Some(f) = self.file.as_mut() {
            match f.write_all(bytes) {
                Ok(()) => self.len += bytes.len() as u64,
                Err(e) => self.give_up(&format!("writing ({e})")),
            }
        }
    }

    /// Delete the file (the layer is loaded, or its content proved wrong).
    pub fn remove(mut self) {
        self.file.take();
        let _ = fs::remove_file(&self.path);
    }

    fn give_up(&mut self, what: &str) {
        tracing::warn!(
            "resume spool: {what} {} failed; this layer won't be resumable",
            self.path.display()
        );
        self.file.take();
        let _ = fs::remove_file(&self.path);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn a_fast_layer_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        // 16 MiB in a second is 16.8 MB/s: kept; in 0.1 s: not.
        assert!(spool.worth_keeping(PROBE, 1.0));
        assert!(!spool.worth_keeping(PROBE, 0.1));
        let any_pace = Spool {
            fast: None,
            ..spool
        };
        assert!(any_pace.worth_keeping(PROBE, 0.001));
    }

    #[test]
    fn write_reopen_resume_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.existing(&id('a')).is_none());
        let mut e = spool.create(&id('a'), 100, &HashSet::new()).unwrap();
        e.append(b"hello ");
        // Held: nobody else gets it.
        assert!(spool.existing(&id('a')).is_none());
        drop(e);
        let mut e = spool.existing(&id('a')).unwrap();
        assert_eq!(e.held(), 6);
        let mut buf = [0u8; 16];
        let n = e.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello ");
        e.truncate(3);
        e.append(b"p!");
        let n = e.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"help!");
        e.remove();
        assert!(spool.existing(&id('a')).is_none());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn bounded_by_evicting_the_oldest_unheld() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 100).unwrap();
        assert!(spool.create(&id('b'), 101, &HashSet::new()).is_none());
        let mut a = spool.create(&id('a'), 60, &HashSet::new()).unwrap();
        a.append(&[1; 60]);
        // Held by us: can't be evicted, so 50 more don't fit.
        assert!(spool.create(&id('b'), 50, &HashSet::new()).is_none());
        drop(a);
        // Needed by this transfer: kept.
        let keep: HashSet<String> = [id('a')].into();
        assert!(spool.create(&id('b'), 50, &keep).is_none());
        let b = spool.create(&id('b'), 50, &HashSet::new()).unwrap();
        assert!(spool.existing(&id('a')).is_none(), "the oldest was evicted");
        drop(b);
    }

    #[test]
    fn names_that_are_not_digests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 100).unwrap();
        for bad in ["sha256:../../etc/passwd", "sha256:ABC", "md5:aa", ""] {
            assert!(spool.create(bad, 1, &HashSet::new()).is_none(), "{bad}");
            assert!(spool.existing(bad).is_none(), "{bad}");
        }
    }
}
