//! The far side's stdin, which carries the protocol in.
//!
//! tokio's own stdin hands every read to a blocking thread: two thread
//! switches per read, tens of thousands per image. Under ssh, stdin is a
//! pipe, which tokio can poll directly once it is non-blocking. Anything
//! else (a terminal, a file, a socket that may be stdout too) keeps
//! tokio's stdin.
//!
//! Non-blocking mode belongs to the open pipe, which the process that
//! started us may share: [`restore`] puts it back before exit.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use tokio::io::AsyncRead;

/// Descriptors whose blocking mode was changed.
static CHANGED: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Stdin as a tokio reader: a polled pipe where possible.
pub fn stdin() -> Box<dyn AsyncRead + Send + Unpin> {
    match pipe() {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdin()),
    }
}

/// tokio checks that the descriptor is a readable FIFO before making it
/// non-blocking, and refuses anything else.
fn pipe() -> Option<tokio::net::unix::pipe::Receiver> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let keep = fd.try_clone().ok()?;
    let p = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()?;
    CHANGED.lock().unwrap().push(keep);
    Some(p)
}

/// Put back blocking mode on what [`stdin`] changed.
pub fn restore() {
    for fd in CHANGED.lock().unwrap().drain(..) {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take and
        // return plain flags.
        unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(raw, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
}
