//! What the local daemon has pushed to the capture registry before: for each
//! layer (by diffID) the compressed blob it pushed and its sizes.
//!
//! The daemon keeps the same knowledge itself (its "v2 metadata": diffID →
//! blob digest, per registry and repository) and uses it to ask a registry
//! whether it already holds a layer before compressing it. This file lets dos
//! predict those questions and answer them, so it keeps one per daemon (by
//! daemon ID) and capture port. It only ever saves time: a wrong or lost
//! entry makes the daemon compress a layer it could have skipped, or makes
//! dos fall back to `docker save`.
//!
//! Format, one layer per line: `diffID digest size raw` (raw: the layer's
//! uncompressed length, 0 when not known).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::registry::path::Digest;

/// Oldest entries are dropped past this many (a few hundred KiB of file).
const MAX_ENTRIES: usize = 5000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    /// Compressed size, as the registry reports it.
    pub size: u64,
    /// Uncompressed tar length (0: not known).
    pub raw: u64,
}

#[derive(Debug, Default)]
pub struct Known {
    path: Option<PathBuf>,
    /// diffID → blob, in the order learned (oldest first) for trimming.
    entries: Vec<(String, Blob)>,
    index: HashMap<String, usize>,
}

impl Known {
    /// The file for this daemon and port under `dir`, or an empty set when
    /// it doesn't exist or can't be read.
    pub fn load(dir: &Path, daemon_id: &str, port: u16) -> Known {
        let safe: String = daemon_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = dir.join(format!("{safe}-{port}"));
        let mut k = Known {
            path: Some(path.clone()),
            ..Known::default()
        };
        if let Ok(text) = fs::read_to_string(&path) {
            for line in text.lines() {
                if let Some((d, b)) = parse_line(line) {
                    k.insert(&d, b);
                }
            }
        }
        k
    }

    pub fn get(&self, diff_id: &str) -> Option<&Blob> {
        self.index.get(diff_id).map(|&i| &self.entries[i].1)
    }

    /// Learn (or relearn) a layer. A raw length of 0 keeps one learned before.
    pub fn insert(&mut self, diff_id: &str, mut blob: Blob) {
        if let Some(i) = self.index.remove(diff_id) {
            let (_, old) = self.entries.remove(i);
            if blob.raw == 0 && old.digest == blob.digest {
                blob.raw = old.raw;
            }
            self.reindex();
        }
        self.index.insert(diff_id.to_string(), self.entries.len());
        self.entries.push((diff_id.to_string(), blob));
        if self.entries.len() > MAX_ENTRIES {
            let extra = self.entries.len() - MAX_ENTRIES;
            self.entries.drain(..extra);
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (d, _))| (d.clone(), i))
            .collect();
    }

    /// Write the file (atomically: a partial write never replaces it).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        for (d, b) in &self.entries {
            writeln!(tmp, "{d} {} {} {}", b.digest, b.size, b.raw)?;
        }
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

fn parse_line(line: &str) -> Option<(String, Blob)> {
    let mut f = line.split(' ');
    let diff_id = Digest::parse(f.next()?)?;
    let digest = Digest::parse(f.next()?)?;
    let size = f.next()?.parse().ok()?;
    let raw = f.next()?.parse().ok()?;
    f.next().is_none().then(|| {
        (
            diff_id.as_str().to_string(),
            Blob {
                digest: digest.as_str().to_string(),
                size,
                raw,
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn saves_loads_and_ignores_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = Known::load(dir.path(), "AB:CD", 5000);
        let blob = Blob {
            digest: d('b'),
            size: 10,
            raw: 30,
        };
        k.insert(&d('a'), blob.clone());
        k.save().unwrap();
        let file = dir.path().join("AB_CD-5000");
        let mut text = fs::read_to_string(&file).unwrap();
        text.push_str("garbage\nsha256:00 x 1 2\n");
        fs::write(&file, text).unwrap();
        let k = Known::load(dir.path(), "AB:CD", 5000);
        assert_eq!(k.get(&d('a')), Some(&blob));
        assert!(Known::load(dir.path(), "AB:CD", 5001)
            .get(&d('a'))
            .is_none());
    }

    #[test]
    fn relearning_keeps_a_known_raw_length_and_trims_the_oldest() {
        let mut k = Known::default();
        let b = |raw| Blob {
            digest: d('b'),
            size: 1,
            raw,
        };
        k.insert(&d('a'), b(30));
        k.insert(&d('a'), b(0));
        assert_eq!(k.get(&d('a')).unwrap().raw, 30);
        for i in 0..MAX_ENTRIES + 1 {
            let id = format!("sha256:{i:064x}");
            k.insert(&id, b(1));
        }
        assert!(k.get(&d('a')).is_none());
        assert_eq!(k.entries.len(), MAX_ENTRIES);
        assert!(k.get(&format!("sha256:{:064x}", MAX_ENTRIES)).is_some());
    }
}
