//! The run report: what ran, how long each stage took, what it cost, in a JSON a person can read.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tracing::Instrument;

use verger_pca::PcaModel;

use crate::config::JobConfig;
use crate::progress::Progress;

/// Process CPU time and peak memory, from `getrusage`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

impl Usage {
    pub fn now() -> Usage {
        // SAFETY: getrusage fills the zeroed struct we own.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Usage {
            cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        }
    }
}

/// Wall and CPU seconds of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub wall_s: f64,
    pub cpu_s: f64,
}

/// The stage guard of a run: times stages one after another for the report, opens each one's tracing span
/// (so a slow stage shows in the logs with its duration) and drives the caller's progress display.
pub struct Stopwatch {
    started: Instant,
    started_cpu: f64,
    progress: Arc<dyn Progress>,
    pub stages: Vec<StageTiming>,
}

impl Stopwatch {
    pub fn start(progress: Arc<dyn Progress>) -> Self {
        Stopwatch {
            started: Instant::now(),
            started_cpu: Usage::now().cpu_s,
            progress,
            stages: Vec::new(),
        }
    }

    /// Runs `f` as stage `name`, recording its wall and CPU time; `total` is its number of progress items, if
    /// known (`f` advances the progress itself).
    pub async fn stage<T>(&mut self, name: &str, total: Option<u64>, f: impl std::future::Future<Output = T>) -> T {
        let (wall, cpu) = (Instant::now(), Usage::now().cpu_s);
        self.progress.begin(name, total);
        let out = f.instrument(tracing::info_span!("stage", name)).await;
        self.progress.end(name);
        let timing = StageTiming {
            stage: name.to_string(),
            wall_s: wall.elapsed().as_secs_f64(),
            cpu_s: Usage::now().cpu_s - cpu,
        };
        tracing::info!(stage = name, wall_s = timing.wall_s, cpu_s = timing.cpu_s, "stage done");
        self.stages.push(timing);
        out
    }

    /// The progress display, for stages to advance.
    pub fn progress(&self) -> Arc<dyn Progress> {
        self.progress.clone()
    }

    pub fn total_wall_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn total_cpu_s(&self) -> f64 {
        Usage::now().cpu_s - self.started_cpu
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub listed: u64,
    pub featurized: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PcaSummary {
    pub k: usize,
    pub explained_variance: f64,
    pub explained_variance_ratio: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub price_per_hour_usd: f64,
    pub basis: String,
    pub estimated_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    pub verger: String,
    pub datafusion: String,
    pub onnxruntime_library: String,
    pub model_sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub counts: Counts,
    pub stages: Vec<StageTiming>,
    pub wall_s: f64,
    pub cpu_s: f64,
    pub images_per_s: f64,
    pub cpu_ms_per_image: f64,
    pub peak_rss_mib: f64,
    pub pca: PcaSummary,
    pub cost: Cost,
    pub versions: Versions,
    /// Every bucket the job touched, with its region and whether the store reported it or `--region` applied.
    pub buckets: Vec<crate::io::store::BucketRegion>,
    /// Server-side encryption requested for every object written to a bucket (none for local outputs).
    pub encryption: Option<String>,
    pub config: serde_json::Value,
}

impl Report {
    /// The report of a run that ended with `counts` and `model`, timed by `clock`.
    pub fn new(config: &JobConfig, clock: &Stopwatch, counts: Counts, model: &PcaModel) -> Report {
        let wall_s = clock.total_wall_s();
        let cpu_s = clock.total_cpu_s();
        let processed = (counts.featurized + counts.failed).max(1) as f64;
        Report {
            counts,
            stages: clock.stages.clone(),
            wall_s,
            cpu_s,
            images_per_s: processed / wall_s,
            cpu_ms_per_image: cpu_s * 1000.0 / processed,
            peak_rss_mib: Usage::now().peak_rss_mib,
            pca: PcaSummary {
                k: model.k,
                explained_variance: model.explained_variance(),
                explained_variance_ratio: model.explained_variance_ratio[..model.k].to_vec(),
            },
            cost: Cost {
                price_per_hour_usd: config.price_per_hour_usd,
                basis: "wall time x hourly price of one machine (set with --price-per-hour)".into(),
                estimated_usd: wall_s / 3600.0 * config.price_per_hour_usd,
            },
            versions: Versions {
                verger: env!("CARGO_PKG_VERSION").into(),
                datafusion: datafusion::DATAFUSION_VERSION.into(),
                onnxruntime_library: verger_model::runtime::locate()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                model_sha256: config.featurize.model.sha256.clone(),
            },
            buckets: Vec::new(),
            encryption: config.featurize.store.encryption.as_ref().map(|e| e.describe()),
            config: serde_json::to_value(config).expect("config serializes"),
        }
    }
}
