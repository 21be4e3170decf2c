//! Where dos keeps state between runs on this machine: `$XDG_CACHE_HOME/dos`,
//! else `~/.cache/dos` (the resume spool, what the capture registry learned).

use std::path::PathBuf;

/// None when neither variable is set.
pub fn dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    match var("XDG_CACHE_HOME") {
        Some(c) => Some(PathBuf::from(c).join("dos")),
        None => var("HOME").map(|h| PathBuf::from(h).join(".cache/dos")),
    }
}
