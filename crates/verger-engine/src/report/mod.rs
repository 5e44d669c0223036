//! The run report: what ran, how long each stage took, how fast the images went, what it cost, in a JSON a
//! person can read (`report.json`), and the same as a page people would rather look at (`report.html`,
//! [`page`]); [`cost`] prices runs from a table of hourly prices.
//!
//! It does not decide what a run does: the job fills the report in as its stages end.

pub mod cost;
pub mod page;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use verger_model::{Device, Precision};
use verger_pca::PcaModel;

use crate::config::JobConfig;
use crate::progress::Progress;

pub use cost::{Cost, CostConfig, PriceError, Pricing};

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

/// Hands the allocator's free pages back to the system, after each partition, at most once per
/// [`TRIM_INTERVAL`]. glibc keeps what is freed in its arenas, and its mmap threshold rises as large buffers are
/// freed, so that later ones come from those arenas too: left alone, a run's peak memory grew by about 0.5 KB
/// per image over 100,000 images (`bench/scale.py`), with no buffer still alive. Not more often, since pages
/// handed back are faulted in again by the next partition: trimming after each of a daily run's short written
/// partitions doubled its write stage. A no-op with other C libraries.
pub fn release_free_memory() {
    trim(false);
}

/// [`release_free_memory`] now, whenever the last was: at the end of a stage, before the next one allocates
/// its own buffers (the PCA fit's matrices on top of the last partitions' freed pages made a run's peak).
pub fn release_free_memory_now() {
    trim(true);
}

fn trim(now: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static LAST: Mutex<Option<Instant>> = Mutex::new(None);
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        if !now && last.is_some_and(|at| at.elapsed() < TRIM_INTERVAL) {
            return;
        }
        // SAFETY: malloc_trim only returns free pages; it takes the allocator's own locks.
        unsafe {
            libc::malloc_trim(0);
        }
        *last = Some(Instant::now());
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = now;
}

/// The least time between two [`release_free_memory`] trims.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Wall and CPU seconds of one stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageTiming {
    pub stage: String,
    pub wall_s: f64,
    pub cpu_s: f64,
    /// The process's peak memory when the stage ended: the stage where it rises is the one that needed it.
    #[serde(default)]
    pub peak_rss_mib: f64,
}

/// The stage guard of a run: times stages one after another for the report, opens each one's tracing span
/// (so a slow stage shows in the logs with its duration) and drives the caller's progress display.
pub struct Stopwatch {
    started: Instant,
    started_cpu: f64,
    progress: Arc<Recorder>,
    pub stages: Vec<StageTiming>,
}

impl Stopwatch {
    pub fn start(progress: Arc<dyn Progress>) -> Self {
        let started = Instant::now();
        Stopwatch {
            started,
            started_cpu: Usage::now().cpu_s,
            progress: Arc::new(Recorder {
                inner: progress,
                started,
                timeline: Mutex::new(Timeline::default()),
            }),
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
        let usage = Usage::now();
        let timing = StageTiming {
            stage: name.to_string(),
            wall_s: wall.elapsed().as_secs_f64(),
            cpu_s: usage.cpu_s - cpu,
            peak_rss_mib: usage.peak_rss_mib,
        };
        tracing::info!(stage = name, wall_s = timing.wall_s, cpu_s = timing.cpu_s, "stage done");
        self.stages.push(timing);
        out
    }

    /// The progress display, for stages to advance.
    pub fn progress(&self) -> Arc<dyn Progress> {
        self.progress.clone()
    }

    /// Images featurized over time, so far.
    pub fn throughput(&self) -> Option<Throughput> {
        self.progress.timeline.lock().expect("timeline lock").throughput.clone()
    }

    pub fn total_wall_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn total_cpu_s(&self) -> f64 {
        Usage::now().cpu_s - self.started_cpu
    }
}

/// The stage whose items are images, recorded over time.
pub const TIMED_STAGE: &str = "featurize";
/// At most this many intervals: the interval doubles when a run outlasts them.
const MAX_INTERVALS: usize = 240;

/// Images done in each interval of the featurize stage: the report's throughput over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Seconds from the run's start to the stage's.
    pub started_s: f64,
    pub interval_s: f64,
    /// Images done in each interval (a resumed run counts the rows it found done at the start).
    pub images: Vec<u64>,
}

impl Throughput {
    fn add(&mut self, at_s: f64, n: u64) {
        let mut slot = ((at_s - self.started_s).max(0.0) / self.interval_s) as usize;
        while slot >= MAX_INTERVALS {
            // Twice as long intervals: pairs merged.
            self.images = self.images.chunks(2).map(|pair| pair.iter().sum()).collect();
            self.interval_s *= 2.0;
            slot /= 2;
        }
        if self.images.len() <= slot {
            self.images.resize(slot + 1, 0);
        }
        self.images[slot] += n;
    }
}

/// Passes progress on to the caller's display, and records the featurize stage's over time.
struct Recorder {
    inner: Arc<dyn Progress>,
    started: Instant,
    timeline: Mutex<Timeline>,
}

#[derive(Default)]
struct Timeline {
    throughput: Option<Throughput>,
    /// The featurize stage is under way.
    recording: bool,
}

impl Progress for Recorder {
    fn begin(&self, stage: &str, total: Option<u64>) {
        if stage == TIMED_STAGE {
            *self.timeline.lock().expect("timeline lock") = Timeline {
                throughput: Some(Throughput {
                    started_s: self.started.elapsed().as_secs_f64(),
                    interval_s: 0.5,
                    images: Vec::new(),
                }),
                recording: true,
            };
        }
        self.inner.begin(stage, total)
    }

    fn advance(&self, n: u64) {
        let at_s = self.started.elapsed().as_secs_f64();
        let mut timeline = self.timeline.lock().expect("timeline lock");
        if timeline.recording {
            if let Some(t) = timeline.throughput.as_mut() {
                t.add(at_s, n);
            }
        }
        drop(timeline);
        self.inner.advance(n)
    }

    fn end(&self, stage: &str) {
        if stage == TIMED_STAGE {
            let mut timeline = self.timeline.lock().expect("timeline lock");
            if let Some(t) = timeline.throughput.as_mut() {
                // The stage's last interval, so that the chart spans the whole stage.
                t.add(self.started.elapsed().as_secs_f64(), 0);
            }
            timeline.recording = false;
        }
        self.inner.end(stage)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Counts {
    pub listed: u64,
    pub featurized: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PcaSummary {
    pub k: usize,
    pub explained_variance: f64,
    pub explained_variance_ratio: Vec<f64>,
    /// The explained-variance ratio of every component the model has (the scree plot), not only the k kept.
    #[serde(default)]
    pub spectrum: Vec<f64>,
    /// Projected with a given model (`--pca-model`) rather than fitted on this run.
    #[serde(default)]
    pub given: bool,
    /// With a given model: the principal angles (degrees, ascending) between its basis and one refit on this
    /// run's images, so the user sees when a refit is worth it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_degrees: Option<Vec<f64>>,
}

impl PcaSummary {
    pub fn of(model: &PcaModel, given: bool) -> PcaSummary {
        PcaSummary {
            k: model.k,
            explained_variance: model.explained_variance(),
            explained_variance_ratio: model.explained_variance_ratio[..model.k].to_vec(),
            spectrum: model.explained_variance_ratio.clone(),
            given,
            drift_degrees: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    pub verger: String,
    pub datafusion: String,
    pub onnxruntime_library: String,
    /// Where inference ran: `cpu` or `cuda:N`.
    #[serde(default)]
    pub device: Device,
    /// The arithmetic it computed in.
    #[serde(default)]
    pub precision: Precision,
    /// The OpenVINO library that ran bf16 inference.
    #[serde(default)]
    pub openvino_library: Option<String>,
    pub model_sha256: String,
    /// Of `pca/model.json` as written.
    #[serde(default)]
    pub pca_model_sha256: Option<String>,
}

/// A classifier's scores on this run, added by `verger evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluationSummary {
    pub classifier: String,
    pub rows: u64,
    pub top1: f64,
    pub top5: f64,
    pub macro_f1: f64,
    #[serde(default)]
    pub unseen_labels: BTreeMap<String, u64>,
    /// Where the full evaluation is.
    pub details: String,
    #[serde(default)]
    pub confusion: Option<Confusion>,
    /// The scores on the images without a near twin in the training run (`--novel-only-vs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub novel: Option<crate::classify::NovelScores>,
}

/// A confusion matrix, sparse: `(true, predicted, count)` for every cell that is not zero.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub cells: Vec<(usize, usize, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub counts: Counts,
    pub stages: Vec<StageTiming>,
    pub wall_s: f64,
    pub cpu_s: f64,
    pub images_per_s: f64,
    pub cpu_ms_per_image: f64,
    pub peak_rss_mib: f64,
    /// None when nothing could be featurized (the run failed, and its report says so).
    pub pca: Option<PcaSummary>,
    pub cost: Cost,
    pub versions: Versions,
    /// When the report was written, RFC 3339.
    pub finished_at: String,
    /// Images featurized over time.
    #[serde(default)]
    pub throughput: Option<Throughput>,
    /// Every bucket the job touched, with its region and whether the store reported it or `--region` applied.
    pub buckets: Vec<crate::io::store::BucketRegion>,
    /// Server-side encryption requested for every object written to a bucket (none for local outputs).
    pub encryption: Option<String>,
    /// Whether paths in the shared outputs are pseudonymised.
    #[serde(default)]
    pub pseudonymized: bool,
    pub config: serde_json::Value,
    /// Classifiers scored on this run (`verger evaluate`), one entry each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evaluations: Vec<EvaluationSummary>,
    /// What the feature cache did (`--cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::job::cache::CacheSummary>,
    /// What `verger quality` found in this run's images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<crate::quality::QualitySummary>,
}

/// The configuration as the report shows it. A pseudonymised run's report names no real location: its input,
/// output, cache, PCA model and key file are replaced by what they are (issue 41, point 7).
fn shared_config(config: &JobConfig) -> serde_json::Value {
    let mut shown = serde_json::to_value(config).expect("config serializes");
    if config.pseudonymize_key.is_some() {
        for (field, what) in [
            ("input", "(pseudonymised: the input)"),
            ("output", "(pseudonymised: this output)"),
            ("cache", "(pseudonymised: the cache)"),
            ("pca_model", "(pseudonymised: the given PCA model)"),
            ("pseudonymize_key", "(the key file)"),
        ] {
            if shown.get(field).is_some_and(|v| !v.is_null()) {
                shown[field] = serde_json::Value::from(what);
            }
        }
    }
    shown
}

impl Report {
    /// The report of a run that ended with `counts` and `pca` (none when nothing was featurized), timed by
    /// `clock` and priced with `pricing`.
    pub fn new(
        config: &JobConfig,
        clock: &Stopwatch,
        counts: Counts,
        pca: Option<PcaSummary>,
        pricing: &Pricing,
    ) -> Report {
        let wall_s = clock.total_wall_s();
        let cpu_s = clock.total_cpu_s();
        let processed = (counts.featurized + counts.failed).max(1) as f64;
        Report {
            cost: pricing.cost(wall_s, counts.featurized),
            counts,
            stages: clock.stages.clone(),
            wall_s,
            cpu_s,
            images_per_s: processed / wall_s,
            cpu_ms_per_image: cpu_s * 1000.0 / processed,
            peak_rss_mib: Usage::now().peak_rss_mib,
            pca,
            versions: Versions {
                verger: env!("CARGO_PKG_VERSION").into(),
                datafusion: datafusion::DATAFUSION_VERSION.into(),
                onnxruntime_library: verger_model::runtime::library_for(config.featurize.device)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                device: config.featurize.device,
                precision: config.featurize.precision,
                openvino_library: (config.featurize.precision == Precision::Bf16)
                    .then(|| verger_model::bf16::locate().ok())
                    .flatten()
                    .map(|p| p.display().to_string()),
                model_sha256: config.featurize.model.sha256.clone(),
                pca_model_sha256: None,
            },
            finished_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            throughput: clock.throughput(),
            buckets: Vec::new(),
            encryption: config.featurize.store.encryption.as_ref().map(|e| e.describe()),
            pseudonymized: config.pseudonymize_key.is_some(),
            config: shared_config(config),
            evaluations: Vec::new(),
            cache: None,
            quality: None,
        }
    }

    /// A report as `report.json` holds it; `from` names the file in the message when it is not one.
    pub fn from_json(bytes: &[u8], from: &str) -> Result<Report, String> {
        let report: Report = serde_json::from_slice(bytes).map_err(|e| {
            format!("{from} is not a run report of this verger version ({e}); rerun, or use the verger that wrote it")
        })?;
        for e in &report.evaluations {
            let labels = e.confusion.as_ref().map_or(0, |c| c.labels.len());
            let cells = e.confusion.as_ref().map_or(&[][..], |c| &c.cells[..]);
            if cells.iter().any(|&(t, p, _)| t >= labels || p >= labels) {
                return Err(format!(
                    "{from}: the evaluation of {} has confusion cells beyond its {labels} labels",
                    e.classifier
                ));
            }
        }
        Ok(report)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a report serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_whose_confusion_cells_name_no_label_is_refused() {
        let pricing = Pricing::new(&CostConfig::default()).unwrap();
        let mut report: serde_json::Value = serde_json::json!({
            "counts": {"listed": 1, "featurized": 1, "failed": 0}, "stages": [], "wall_s": 1.0, "cpu_s": 1.0,
            "images_per_s": 1.0, "cpu_ms_per_image": 1.0, "peak_rss_mib": 1.0, "pca": null,
            "cost": pricing.cost(1.0, 1),
            "versions": {"verger": "0", "datafusion": "55", "onnxruntime_library": "x", "model_sha256": "ab"},
            "finished_at": "2026-12-02T12:00:00Z", "buckets": [], "encryption": null, "config": {},
            "evaluations": [{"classifier": "c", "rows": 1, "top1": 1.0, "top5": 1.0, "macro_f1": 1.0,
                             "details": "c/e", "confusion": {"labels": ["a"], "cells": [[0, 0, 1]]}}],
        });
        let bytes = |r: &serde_json::Value| serde_json::to_vec(r).unwrap();
        assert!(Report::from_json(&bytes(&report), "r.json").is_ok());
        report["evaluations"][0]["confusion"]["cells"][0][1] = 3.into();
        let e = Report::from_json(&bytes(&report), "r.json").unwrap_err();
        assert!(e.contains("confusion cells beyond its 1 labels"), "{e}");
        assert!(Report::from_json(b"{}", "r.json")
            .unwrap_err()
            .contains("not a run report"));
    }

    #[test]
    fn throughput_intervals_double_to_stay_few() {
        let mut t = Throughput {
            started_s: 10.0,
            interval_s: 0.5,
            images: Vec::new(),
        };
        t.add(10.1, 3);
        t.add(10.6, 2);
        assert_eq!(t.images, vec![3, 2]);
        // 200 s at 0.5 s would be 400 intervals: they double until fewer than MAX_INTERVALS.
        for s in 0..200 {
            t.add(10.0 + s as f64 + 0.25, 1);
        }
        assert!(t.images.len() <= MAX_INTERVALS);
        assert_eq!(t.interval_s, 1.0);
        assert_eq!(t.images.iter().sum::<u64>(), 205);
        assert_eq!(t.images[0], 3 + 2 + 1);
    }
}
