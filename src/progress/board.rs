//! What the progress display shows: the image's layers and where each one
//! is, fed by the sending code and the far side's word, read by
//! [`super::display`] a few times a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{human, Counter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The far side has it.
    Present,
    /// Not sent yet.
    Waiting,
    Sending,
    /// All its bytes are in the stream; the far side hasn't checked it yet.
    Sent,
    /// The far side hashed it: it is the layer.
    Verified,
    /// The far engine is loading the image.
    Loading,
    /// The image is in place.
    Done,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Present => "present",
            State::Waiting => "waiting",
            State::Sending => "sending",
            State::Sent => "sent",
            State::Verified => "verified",
            State::Loading => "loading",
            State::Done => "done",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub diff_id: String,
    /// Bytes of the layer as read here (a tar, or the blob the store
    /// holds); None until known.
    pub size: Option<u64>,
    /// Of those, how many are done (read into the stream, or resumed).
    pub done: u64,
    pub state: State,
}

/// A change worth a line of its own where there is no live display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Layers { present: usize, total: usize },
    Started { row: usize },
    Verified { row: usize },
    Loading,
}

#[derive(Default)]
struct Inner {
    rows: Vec<Row>,
    /// The row being sent: its index, the `read` count when it started,
    /// and the bytes it resumed (the far side had them).
    current: Option<(usize, u64, u64)>,
    /// Bytes the missing layers add up to, where all are known.
    missing_total: Option<u64>,
    changes: Vec<Change>,
    /// The far side says when each layer checks out (a newer far dos).
    verifies: bool,
    loading: bool,
    /// The layers come here (a fetch), rather than go to a far side.
    receiving: bool,
}

/// The transfer's board. Cheap to update; shared by `Arc`.
pub struct Board {
    inner: Mutex<Inner>,
    /// Bytes of missing layers read so far (the sending code counts them).
    pub read: Arc<AtomicU64>,
    /// Bytes on the link, both ways.
    wire: Counter,
    started: Instant,
}

/// The figures of a moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub rows: Vec<Row>,
    pub wire: u64,
    pub read: u64,
    pub missing_total: Option<u64>,
    pub elapsed: Duration,
}

impl Board {
    pub fn new(wire: Counter) -> Arc<Board> {
        Arc::new(Board {
            inner: Mutex::default(),
            read: Arc::new(AtomicU64::new(0)),
            wire,
            started: Instant::now(),
        })
    }

    /// A board no one displays (tests, and paths with nothing to show).
    pub fn unseen() -> Arc<Board> {
        Board::new(Arc::new(|| 0))
    }

    /// The far side's inventory: the first `present` layers are there.
    /// `sizes` are the layers' sizes where known here, in order.
    pub fn layers(&self, diff_ids: &[String], present: usize, sizes: &[Option<u64>]) {
        let mut i = self.inner.lock().unwrap();
        i.rows = diff_ids
            .iter()
            .enumerate()
            .map(|(n, d)| Row {
                diff_id: d.clone(),
                size: sizes.get(n).copied().flatten(),
                done: 0,
                state: if n < present {
                    State::Present
                } else {
                    State::Waiting
                },
            })
            .collect();
        let missing: Option<u64> = i.rows[present.min(i.rows.len())..]
            .iter()
            .map(|r| r.size)
            .sum();
        i.missing_total = missing;
        i.changes.push(Change::Layers {
            present,
            total: diff_ids.len(),
        });
    }

    /// The layers come to this side (a fetch): the lines say "here".
    pub fn receiving(&self) {
        self.inner.lock().unwrap().receiving = true;
    }

    pub fn is_receiving(&self) -> bool {
        self.inner.lock().unwrap().receiving
    }

    /// The far side will say when each layer checks out.
    pub fn far_verifies(&self, yes: bool) {
        self.inner.lock().unwrap().verifies = yes;
    }

    /// When the layer sizes aren't known here but their sum is (a cold
    /// transfer of the whole image).
    pub fn missing_total(&self, bytes: u64) {
        let mut i = self.inner.lock().unwrap();
        if i.missing_total.is_none() {
            i.missing_total = Some(bytes);
        }
    }

    /// The sending code starts a layer of `len` bytes, the first `skip` of
    /// which the far side holds already.
    pub fn sending(&self, diff_id: &str, len: u64, skip: u64) {
        let read = self.read.load(Ordering::Relaxed);
        let mut i = self.inner.lock().unwrap();
        i.close_current(read);
        let Some(n) = i.rows.iter().position(|r| r.diff_id == diff_id) else {
            return;
        };
        let r = &mut i.rows[n];
        r.size = Some(len);
        r.done = skip;
        r.state = State::Sending;
        i.current = Some((n, read, skip));
        i.changes.push(Change::Started { row: n });
    }

    /// Every missing layer is in the stream.
    pub fn all_sent(&self) {
        let read = self.read.load(Ordering::Relaxed);
        let mut i = self.inner.lock().unwrap();
        i.close_current(read);
        i.maybe_loading();
    }

    /// The far side checked a layer.
    pub fn verified(&self, diff_id: &str) {
        let read = self.read.load(Ordering::Relaxed);
        let mut i = self.inner.lock().unwrap();
        if let Some(n) = i.rows.iter().position(|r| r.diff_id == diff_id) {
            if i.current.is_some_and(|(c, _, _)| c == n) {
                i.close_current(read);
            }
            if let Some(s) = i.rows[n].size {
                i.rows[n].done = s;
            }
            i.rows[n].state = State::Verified;
            i.changes.push(Change::Verified { row: n });
        }
        i.maybe_loading();
    }

    /// The image is in place.
    pub fn done(&self) {
        let mut i = self.inner.lock().unwrap();
        for r in &mut i.rows {
            if r.state != State::Present {
                r.state = State::Done;
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let read = self.read.load(Ordering::Relaxed);
        let mut i = self.inner.lock().unwrap();
        if let Some((n, start, skip)) = i.current {
            let r = &mut i.rows[n];
            r.done = (skip + read.saturating_sub(start)).min(r.size.unwrap_or(u64::MAX));
        }
        Snapshot {
            rows: i.rows.clone(),
            wire: (self.wire)(),
            read,
            missing_total: i.missing_total,
            elapsed: self.started.elapsed(),
        }
    }

    /// The changes since the last call.
    pub fn changes(&self) -> Vec<Change> {
        std::mem::take(&mut self.inner.lock().unwrap().changes)
    }
}

impl Inner {
    fn close_current(&mut self, read: u64) {
        if let Some((n, start, skip)) = self.current.take() {
            let r = &mut self.rows[n];
            r.done = r.size.unwrap_or(skip + read.saturating_sub(start));
            if r.state == State::Sending {
                r.state = State::Sent;
            }
        }
    }

    /// Once every missing layer is sent (and, where the far side says so,
    /// verified), what is left is the far engine's load.
    fn maybe_loading(&mut self) {
        let verifies = self.verifies;
        let all_in = self.current.is_none()
            && self.rows.iter().all(|r| match r.state {
                State::Present | State::Verified => true,
                State::Sent => !verifies,
                _ => false,
            });
        let any = self.rows.iter().any(|r| r.state != State::Present);
        if all_in && any && !self.loading {
            self.loading = true;
            for r in &mut self.rows {
                if matches!(r.state, State::Sent | State::Verified) {
                    r.state = State::Loading;
                }
            }
            self.changes.push(Change::Loading);
        }
    }
}

impl Snapshot {
    /// Bytes per second on the link so far.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.wire as f64 / s
        } else {
            0.0
        }
    }

    /// Seconds left, from the pace of reading the missing layers, where
    /// their size is known.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.missing_total?;
        let s = self.elapsed.as_secs_f64();
        if self.read == 0 || s < 1.0 || self.read >= total {
            return None;
        }
        let pace = self.read as f64 / s;
        Some(Duration::from_secs_f64((total - self.read) as f64 / pace))
    }

    /// The total line: "14.2 MB sent · 2.1 MB/s · 31.0 of 96.4 MB read · ETA 0:40".
    pub fn total_line(&self) -> String {
        let mut s = format!(
            "total    {} on the link · {}/s",
            human(self.wire as f64),
            human(self.rate())
        );
        if let Some(t) = self.missing_total {
            s.push_str(&format!(
                " · {} of {} to send",
                human(self.read.min(t) as f64),
                human(t as f64)
            ));
        }
        if let Some(eta) = self.eta() {
            let secs = eta.as_secs();
            s.push_str(&format!(" · ETA {}:{:02}", secs / 60, secs % 60));
        }
        s
    }
}

impl Row {
    /// The row as it was in `state` (a plain line telling a change).
    pub fn line_as(&self, state: State) -> String {
        let id = self.diff_id.get(..19).unwrap_or(&self.diff_id);
        let size = self.size.map(|s| human(s as f64)).unwrap_or_default();
        format!("{id}  {:<8}  {size}", state.word())
    }

    /// "sha256:1a2b3c4d5e6f  sending   12.1 MB of 33.0 MB"
    pub fn line(&self) -> String {
        let id = self.diff_id.get(..19).unwrap_or(&self.diff_id);
        let size = self.size.map(|s| human(s as f64));
        let figures = match (self.state, size) {
            (State::Sending, Some(s)) => format!("{} of {s}", human(self.done as f64)),
            (_, Some(s)) => s,
            (_, None) => String::new(),
        };
        format!("{id}  {:<8}  {figures}", self.state.word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_goes_from_waiting_to_done() {
        let b = Board::unseen();
        b.far_verifies(true);
        let ids: Vec<String> = ["sha256:aa", "sha256:bb", "sha256:cc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        b.layers(&ids, 1, &[Some(10), None, None]);
        assert_eq!(b.snapshot().missing_total, None);
        b.sending("sha256:bb", 100, 20);
        b.read.fetch_add(30, Ordering::Relaxed);
        let s = b.snapshot();
        assert_eq!(s.rows[1].state, State::Sending);
        assert_eq!(s.rows[1].done, 50);
        b.sending("sha256:cc", 5, 0);
        assert_eq!(b.snapshot().rows[1].state, State::Sent);
        b.verified("sha256:bb");
        b.read.fetch_add(5, Ordering::Relaxed);
        b.all_sent();
        // Sent, not yet checked by the far side: not loading yet.
        assert_eq!(b.snapshot().rows[2].state, State::Sent);
        b.verified("sha256:cc");
        let s = b.snapshot();
        assert_eq!(s.rows[0].state, State::Present);
        assert_eq!(s.rows[1].state, State::Loading);
        assert_eq!(s.rows[2].state, State::Loading);
        b.done();
        assert_eq!(b.snapshot().rows[2].state, State::Done);
        assert_eq!(
            b.changes(),
            vec![
                Change::Layers {
                    present: 1,
                    total: 3
                },
                Change::Started { row: 1 },
                Change::Started { row: 2 },
                Change::Verified { row: 1 },
                Change::Verified { row: 2 },
                Change::Loading
            ]
        );
    }
}
