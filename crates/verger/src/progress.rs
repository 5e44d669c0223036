//! Progress on the terminal: a bar with rate and ETA when stderr is a terminal, a log line every few seconds
//! otherwise (CI logs, `nohup`, pipes).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use verger_engine::Progress;

const LOG_EVERY: Duration = Duration::from_secs(5);

struct Stage {
    name: String,
    total: Option<u64>,
    started: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

pub struct CliProgress {
    terminal: bool,
    done: Arc<AtomicU64>,
    stage: Mutex<Option<Stage>>,
}

impl CliProgress {
    pub fn new() -> Self {
        CliProgress {
            terminal: std::io::stderr().is_terminal(),
            done: Arc::default(),
            stage: Mutex::new(None),
        }
    }
}

impl Progress for CliProgress {
    fn begin(&self, stage: &str, total: Option<u64>) {
        self.done.store(0, Ordering::Relaxed);
        let bar = self.terminal.then(|| {
            let bar = total.map_or_else(ProgressBar::new_spinner, ProgressBar::new);
            let template = "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}";
            bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
            bar.set_message(stage.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        *self.stage.lock().unwrap_or_else(|p| p.into_inner()) = Some(Stage {
            name: stage.to_string(),
            total,
            started: now,
            last_log: now,
            bar,
        });
    }

    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let mut guard = self.stage.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stage) = guard.as_mut() else { return };
        if let Some(bar) = &stage.bar {
            bar.set_position(done);
        } else if stage.last_log.elapsed() >= LOG_EVERY {
            stage.last_log = Instant::now();
            let rate = done as f64 / stage.started.elapsed().as_secs_f64();
            match stage.total {
                Some(total) => eprintln!(
                    "{}: {done}/{total} ({rate:.1}/s, ETA {:.0} s)",
                    stage.name,
                    total.saturating_sub(done) as f64 / rate.max(1e-9)
                ),
                None => eprintln!("{}: {done} ({rate:.1}/s)", stage.name),
            }
        }
    }

    fn end(&self, _stage: &str) {
        if let Some(stage) = self.stage.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if let Some(bar) = stage.bar {
                bar.finish_and_clear();
            }
            eprintln!("{}: done in {:.1} s", stage.name, stage.started.elapsed().as_secs_f64());
        }
    }
}
