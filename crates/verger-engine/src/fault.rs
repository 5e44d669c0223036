//! Test hooks for crash consistency. `VERGER_ABORT_AT=<point>[:<n>]` aborts the process, as `kill -9` would
//! (no destructors, no flushing), the n-th time (default: first) the job reaches `point`. Points are named
//! after what has just been committed: `listed`, `manifest`, `featurize`, `pca`, `write`, `errors`, `report`.
//! `VERGER_PAUSE_AT=<point>:<seconds>` makes the run wait there (without blocking its runtime), so a test can
//! act on the output in between: `featurized` (all staged) and `written` (all result files written).
//! `VERGER_STALL_AT=publish` stops the process (SIGSTOP, as a frozen machine would) the first time a sink is
//! about to publish a file, until something sends it SIGCONT.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub const ENV: &str = "VERGER_ABORT_AT";

fn target() -> &'static Option<(String, usize)> {
    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    TARGET.get_or_init(|| {
        let spec = std::env::var(ENV).ok()?;
        let (point, n) = spec.split_once(':').unwrap_or((&spec, "1"));
        Some((point.to_string(), n.parse().ok()?))
    })
}

/// Marks that `point` was reached; aborts if the hook asks for it.
pub fn checkpoint(point: &str) {
    let Some((target, n)) = target() else { return };
    if target != point {
        return;
    }
    static SEEN: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let count = seen.entry(point.to_string()).or_default();
    *count += 1;
    if *count == *n {
        eprintln!("{ENV}: aborting at {point}:{n}");
        std::process::abort();
    }
}

pub const STALL_ENV: &str = "VERGER_STALL_AT";

/// Marks that `point` was reached; the first time, stops the process if the stall hook names `point`.
pub fn stall_point(point: &str) {
    static STALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var(STALL_ENV).is_ok_and(|p| p == point) && !STALLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        eprintln!("{STALL_ENV}: stopping at {point}");
        // SAFETY: raise only sends a signal to this process.
        unsafe { libc::raise(libc::SIGSTOP) };
        eprintln!("{STALL_ENV}: resumed at {point}");
    }
}

pub const PAUSE_ENV: &str = "VERGER_PAUSE_AT";

/// Waits at `point` for as long as the pause hook asks, if it names `point`.
pub async fn pause_point(point: &str) {
    let Ok(spec) = std::env::var(PAUSE_ENV) else { return };
    let Some((target, seconds)) = spec.split_once(':') else {
        return;
    };
    if target != point {
        return;
    }
    if let Ok(seconds) = seconds.parse::<f64>() {
        eprintln!("{PAUSE_ENV}: pausing {seconds} s at {point}");
        tokio::time::sleep(std::time::Duration::from_secs_f64(seconds)).await;
    }
}
