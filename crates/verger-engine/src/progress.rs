//! How the engine tells its caller what it is doing; the CLI draws bars or log lines from it.

/// Receives progress events. Calls come from worker threads.
pub trait Progress: Send + Sync {
    /// A stage begins; `total` is its number of items when known.
    fn begin(&self, stage: &str, total: Option<u64>);
    /// `n` more items of the current stage are done.
    fn advance(&self, n: u64);
    /// The current stage is over.
    fn end(&self, stage: &str);
}

/// Discards progress, for tests and library use.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _stage: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
    fn end(&self, _stage: &str) {}
}

/// A request to stop a run early (Ctrl-C in a notebook): the run stops at its next await, releases its
/// output's claim and fails with [`crate::JobError::Interrupted`]; what it staged stays for `--resume`.
/// Clones share one flag.
#[derive(Clone, Default)]
pub struct Stop(std::sync::Arc<StopState>);

#[derive(Default)]
struct StopState {
    requested: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Stop {
    pub fn new() -> Self {
        Stop::default()
    }

    pub fn request(&self) {
        self.0.requested.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_requested(&self) -> bool {
        self.0.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once [`Stop::request`] was called (at once if it already was).
    pub async fn requested(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Stop").field(&self.is_requested()).finish()
    }
}
