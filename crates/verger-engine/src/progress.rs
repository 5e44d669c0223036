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
