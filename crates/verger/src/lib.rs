//! verger's library API: one call per user-facing operation, each taking a typed configuration and returning
//! a typed result or [`Error`]. The `verger` command line, the examples, the Python package (`verger-python`)
//! and the HTTP service are thin front ends over these calls: they parse (the command line and the Python
//! package with the same parser, [`cli`]), call, print, and map the outcome to an [`ExitStatus`] or an
//! exception.
//!
//! - [`run`]: the whole job (list → featurize → PCA → Parquet), locally or on a cluster; [`run_until`] the same,
//!   stoppable from another thread;
//! - [`list`]: what a run would process, per label;
//! - [`estimate`]: what a run would take and cost, from a sample;
//! - [`report`]: a run's `report.html`, written again from its `report.json`;
//! - [`preprocess`]: the exact 224×224 RGB pixels the model sees;
//! - [`featurize`]: the 1280-d features of images (files, `s3://` objects or bytes in memory) as a record batch;
//!   [`embed`]: those of a few files into one Parquet file;
//! - [`read`] and [`read_pca`]: a finished run's rows and its PCA model;
//! - [`train`], [`evaluate`] and [`identify`]: a classifier on a run's features, scored on another run, and
//!   applied to new photos;
//! - [`quality`]: a run's images as a dataset: duplicates, leakage into other runs, outliers, likely wrong labels;
//! - [`serve`]: [`identify`] over HTTP, with limits and metrics;
//! - [`export`]: the classifier and its featurizer as one ONNX file for apps;
//! - [`scheduler`] and [`executor`]: the cluster's processes.
//!
//! The cluster (Apache DataFusion Ballista) is the `cluster` feature: a build without it answers cluster runs
//! and the cluster's commands with [`Error::ClusterNotBuilt`], naming the build that has them.
//!
//! Calls that need an async runtime make their own, so they can be called from plain threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

pub mod cli;

pub use verger_classify::knn::{Method, Search};
pub use verger_classify::TrainOptions;
pub use verger_engine::classify::{
    check_unknown_percentile, Classifier, ClassifyError, Evaluation, Exported, Identification, Identified, Input,
    NovelScores, Novelty, TrainConfig, TrainReport, UnknownRule, DEFAULT_UNKNOWN_PERCENTILE, UNKNOWN_NEIGHBOUR,
};
pub use verger_engine::quality::{check_threshold, QualityConfig, QualityError, QualitySummary};

/// `verger quality`'s defaults and findings.
pub mod quality {
    pub use verger_engine::quality::{
        Bin, Duplicates, Image, Leakage, Outlier, Suspect, DEFAULT_FOLDS, DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD,
        DEFAULT_TOP, IMAGES, LEAKAGE, SUMMARY,
    };
}
pub use verger_serve::{ServeConfig, ServeError};

/// The HTTP service's defaults and credentials.
pub mod serve {
    pub use verger_serve::{
        TlsFiles, Token, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
        DEFAULT_MAX_PIXELS, DEFAULT_MEMORY_BUDGET, DEFAULT_PORT, DEFAULT_QUEUE_PER_WORKER, DEFAULT_QUEUE_TIMEOUT,
    };
}
pub use verger_engine::config::{
    default_threads, DEFAULT_CLUSTER_JOBS, DEFAULT_K, DEFAULT_LEASE_TTL_S, DEFAULT_PARTITION_ROWS,
};
pub use verger_engine::estimate::{Estimate, EstimateConfig, Prediction};
pub use verger_engine::report::{Cost, CostConfig, PriceError};

/// Prices: the original set-up a run's cost is compared with, and the built-in table.
pub mod cost {
    pub use verger_engine::report::cost::original::{
        INSTANCE_TYPE as ORIGINAL_INSTANCE_TYPE, REGION as ORIGINAL_REGION,
    };
    pub use verger_engine::report::cost::{PriceTable, BUILT_IN_PRICES};
}

/// `verger estimate`'s defaults.
pub mod estimate {
    pub use verger_engine::estimate::{CLUSTER_EXECUTORS, DEFAULT_SAMPLE};
}
pub use verger_engine::embed::{EmbedOutcome, Failure};
pub use verger_engine::featurize::Image;
pub use verger_engine::report::Report;
pub use verger_engine::saved_pca::SavedPca;
pub use verger_engine::store::{Encryption, StoreOptions};
pub use verger_engine::{ErrorBudget, FeaturizeSettings, JobConfig, JobError, NoProgress, Progress, Stop, StoreError};
pub use verger_image::Limits;
pub use verger_listing::{ImageEntry, ImageList, DEFAULT_GLOB, LIST_CONCURRENCY};
pub use verger_model::runtime::opt_out_of_telemetry;
pub use verger_model::Device;
pub use verger_pca::Components;

/// What any call can fail with.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] verger_model::ModelError),
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Quality(#[from] QualityError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// The cluster could not be reached or its processes could not start.
    #[error("{0}")]
    Cluster(String),
    /// A cluster operation in a build without the `cluster` feature.
    #[error(
        "{what} needs verger's cluster (Apache DataFusion Ballista), which this build leaves out: {CLUSTER_BUILD}"
    )]
    ClusterNotBuilt { what: &'static str },
    /// A configuration that cannot work, found before anything ran.
    #[error("{0}")]
    Config(String),
}

/// Whether this build has the cluster (`run --cluster`, the scheduler, the executor, `cluster init`).
pub const HAS_CLUSTER: bool = cfg!(feature = "cluster");

/// How to get a build with the cluster.
pub const CLUSTER_BUILD: &str =
    "`scripts/setup --cluster` builds it (with cargo: `cargo build --release -p verger --features cluster`)";

/// [`Error::ClusterNotBuilt`] for `what` in a build without the cluster; nothing otherwise.
pub fn require_cluster(what: &'static str) -> Result<(), Error> {
    match HAS_CLUSTER {
        true => Ok(()),
        false => Err(Error::ClusterNotBuilt { what }),
    }
}

impl Error {
    fn io(what: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            what: what.to_string(),
            source,
        }
    }
}

/// How a front end ends: the command line's exit status, and the meaning the other front ends give outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every input processed.
    Success = 0,
    /// Nothing committed (`--resume` continues a run).
    Failed = 1,
    /// A command line that cannot work.
    Usage = 2,
    /// Completed, but some inputs could not be processed (listed in the errors output).
    Partial = 3,
}

impl ExitStatus {
    pub const HELP: &'static str = "Exit status: 0 = every image processed; 1 = the run failed (nothing committed); \
2 = bad command line; 3 = completed, but some inputs could not be processed (see OUTPUT/errors/).";

    /// Success when nothing failed, else Partial.
    pub fn from_failures(failed: u64) -> ExitStatus {
        match failed {
            0 => ExitStatus::Success,
            _ => ExitStatus::Partial,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The ONNX Runtime library this process uses, loaded on first call (see `verger_model::runtime` for where
/// it is looked for).
pub fn runtime_library() -> Result<&'static Path, Error> {
    Ok(verger_model::runtime::ensure_loaded(verger_model::Device::Cpu)?)
}

/// `$VERGER_MODEL`, else `shared/models/...` beside the checkout this library was built from.
pub fn default_model() -> Option<String> {
    if let Ok(location) = std::env::var("VERGER_MODEL") {
        return Some(location);
    }
    let shared =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/mobilenet_v2/mobilenet_v2_imagenet.onnx");
    shared.is_file().then(|| shared.to_string_lossy().into_owned())
}

/// Local paths made absolute (cluster workers may run elsewhere); URIs as given.
pub fn absolute(location: &str) -> Result<String, Error> {
    if location.contains("://") {
        return Ok(location.to_string());
    }
    std::path::absolute(location)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| Error::io(location, e))
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))
}

/// What [`run`] ended with.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    /// The run committed its output; its report.
    Done(Box<Report>),
    /// `resume` found the output already complete: nothing to do.
    AlreadyComplete(String),
}

impl RunOutcome {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            RunOutcome::Done(report) => ExitStatus::from_failures(report.counts.failed),
            RunOutcome::AlreadyComplete(_) => ExitStatus::Success,
        }
    }
}

/// Runs the whole job of `config`, reporting progress to `progress`.
pub fn run(config: &JobConfig, progress: Arc<dyn Progress>) -> Result<RunOutcome, Error> {
    run_until(config, progress, &Stop::new())
}

/// [`run`], stopping early when `stop` is requested (from another thread): the run then fails with
/// [`JobError::Interrupted`], its output's claim released and its staged work kept, so that a run with
/// `resume` continues it at once.
pub fn run_until(config: &JobConfig, progress: Arc<dyn Progress>, stop: &Stop) -> Result<RunOutcome, Error> {
    if config.threads == 0 {
        return Err(Error::Config("threads must be at least 1".into()));
    }
    if config.cluster.is_some() {
        require_cluster("a cluster run (--cluster)")?;
    }
    config.featurize.store.check_transport()?;
    // Fail before anything else when the runtime is unusable (the job verifies the model first thing). On a
    // cluster the executors run the model on their devices: this process needs no GPU.
    let device = match &config.cluster {
        Some(_) => verger_model::Device::Cpu,
        None => config.featurize.device,
    };
    verger_model::runtime::ensure_loaded(device)?;
    let runtime = runtime(config.threads)?;
    let cluster = match &config.cluster {
        Some(url) => Some(cluster::connect(config, url, &runtime)?),
        None => None,
    };
    match runtime.block_on(verger_engine::run_job(config, progress, cluster, stop)) {
        Ok(outcome) => Ok(RunOutcome::Done(Box::new(outcome.report))),
        Err(JobError::AlreadyComplete(output)) => Ok(RunOutcome::AlreadyComplete(output)),
        Err(e) => Err(e.into()),
    }
}

/// Predicts the wall time, CPU hours and cost of running `config.input`, here and on clusters, from a random
/// sample featurized here; writes nothing.
pub fn estimate(config: &EstimateConfig) -> Result<Estimate, Error> {
    config.featurize.store.check_transport()?;
    verger_model::runtime::ensure_loaded(config.featurize.device)?;
    Ok(runtime(config.threads)?.block_on(verger_engine::estimate::estimate(config))?)
}

/// Writes `output`'s `report.html` again from its `report.json` (with the run's errors and PCA map); returns
/// the page's location.
pub fn report(output: &str, store: &StoreOptions) -> Result<String, Error> {
    store.check_transport()?;
    held_to_regions(&[output], store)?;
    let output = absolute(output)?;
    Ok(runtime(1)?.block_on(verger_engine::report::page::rewrite(&output, store))?)
}

/// What to list.
#[derive(Debug, Clone)]
pub struct ListConfig {
    /// A folder or `s3://bucket/prefix`, searched recursively.
    pub input: String,
    pub globs: Vec<String>,
    /// Folders of a bucket listed at once.
    pub concurrency: usize,
    pub store: StoreOptions,
}

impl ListConfig {
    pub fn new(input: impl Into<String>) -> Self {
        ListConfig {
            input: input.into(),
            globs: vec![DEFAULT_GLOB.to_string()],
            concurrency: LIST_CONCURRENCY,
            store: StoreOptions::default(),
        }
    }
}

/// The images a run would process.
#[derive(Debug, Clone)]
pub struct Listing {
    /// In URI order.
    pub images: ImageList,
    pub per_label: BTreeMap<String, usize>,
    pub seconds: f64,
}

/// Lists the images `config` selects; writes nothing.
pub fn list(config: &ListConfig) -> Result<Listing, Error> {
    config.store.check_transport()?;
    let started = std::time::Instant::now();
    let images = runtime(default_threads())?.block_on(async {
        verger_engine::bucket_regions(&[config.input.as_str()], &config.store).await?;
        verger_engine::list_images(&config.input, &config.globs, &config.store, config.concurrency).await
    })?;
    let mut per_label = BTreeMap::new();
    for label in images.labels().iter().flatten() {
        match per_label.get_mut(label) {
            Some(count) => *count += 1,
            None => {
                per_label.insert(label.to_string(), 1);
            }
        }
    }
    Ok(Listing {
        images,
        per_label,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The 224×224 RGB pixels (row-major, 3 bytes a pixel) the model sees for the encoded image `bytes`,
/// bit-identical to Pillow's `Image.open(..).convert("RGB").resize((224, 224))`.
pub fn preprocess(bytes: &[u8], limits: &Limits) -> Result<Vec<u8>, verger_image::ImageError> {
    verger_image::load_rgb224(bytes, limits)
}

/// Writes [`preprocess`]'s pixels of `image` as `out/<file stem>.png`; returns the file written.
pub fn preprocess_file(image: &Path, out: &Path, limits: &Limits) -> Result<PathBuf, Error> {
    let bytes = std::fs::read(image).map_err(|e| Error::io(image.display(), e))?;
    let failed = |e: verger_image::ImageError| Error::Config(format!("{}: {e}", image.display()));
    let rgb = preprocess(&bytes, limits).map_err(failed)?;
    let stem = image
        .file_stem()
        .ok_or_else(|| Error::Config(format!("{}: no file name", image.display())))?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out.display(), e))?;
    let target = out.join(stem).with_extension("png");
    let side = verger_image::MODEL_SIDE;
    let png = verger_image::encode_png(&rgb, side, side).map_err(failed)?;
    std::fs::write(&target, png).map_err(|e| Error::io(target.display(), e))?;
    Ok(target)
}

/// Writes the features of `images` (paths or `s3://` URIs) to the Parquet file `out` (a path or `s3://`).
pub fn embed(images: &[String], settings: &FeaturizeSettings, out: &str) -> Result<EmbedOutcome, Error> {
    settings.store.check_transport()?;
    verger_model::runtime::ensure_loaded(settings.device)?;
    let out = absolute(out)?;
    let outcome = runtime(default_threads())?.block_on(verger_engine::embed::embed(images, settings, &out))?;
    Ok(outcome)
}

/// The features of `images` (paths, `s3://` URIs or encoded bytes) as one record batch, a row each in input
/// order: `path` (null for bytes), `features` (1280 float32, null when the image failed), `error_stage` and
/// `error`. Computed exactly as in a run (features bit-identical), on `threads` threads; bad images become
/// rows with an error, never a failed call.
pub fn featurize(
    images: &[Image],
    settings: &FeaturizeSettings,
    threads: usize,
) -> Result<datafusion::arrow::array::RecordBatch, Error> {
    settings.store.check_transport()?;
    verger_model::runtime::ensure_loaded(settings.device)?;
    // Verified once here, so that a wrong model fails the call instead of every row.
    settings.featurizers()?;
    let runtime = runtime(1)?;
    let chunk = images.len().div_ceil(threads.max(1)).max(1);
    let batches = std::thread::scope(|scope| {
        let workers: Vec<_> = images
            .chunks(chunk)
            .map(|part| {
                scope.spawn(|| {
                    // For `s3://` images: reads block on this runtime.
                    let _entered = runtime.enter();
                    verger_engine::embed::table(part, settings)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| Error::Config("a featurize worker panicked".into()))?
                    .map_err(Error::from)
            })
            .collect::<Result<Vec<_>, Error>>()
    })?;
    match batches.first() {
        Some(first) => {
            Ok(datafusion::arrow::compute::concat_batches(&first.schema(), &batches).map_err(JobError::from)?)
        }
        None => Ok(verger_engine::embed::table(&[], settings)?),
    }
}

/// A table as record batches and their schema (which holds even when there are no batches).
pub type Batches = (
    datafusion::arrow::datatypes::SchemaRef,
    Vec<datafusion::arrow::array::RecordBatch>,
);

/// Every result row of the finished run `output` (path, label, features, pca_features), sorted by path.
pub fn read(output: &str, store: &StoreOptions) -> Result<Batches, Error> {
    store.check_transport()?;
    let output = absolute(output)?;
    let reading = async {
        let frame = verger_engine::classify::run_rows::result(&output, store).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let sorted = frame.sort(vec![datafusion::prelude::col("path").sort(true, false)]);
        let batches = sorted
            .map_err(ClassifyError::from)?
            .collect()
            .await
            .map_err(ClassifyError::from)?;
        Ok::<_, ClassifyError>((schema, batches))
    };
    Ok(runtime(default_threads())?.block_on(reading)?)
}

/// The PCA model the finished run `output` fitted (or was given), as saved in `pca/model.json`.
pub fn read_pca(output: &str, store: &StoreOptions) -> Result<SavedPca, Error> {
    store.check_transport()?;
    let output = absolute(output)?;
    let reading = verger_engine::classify::run_rows::pca_model(&output, store);
    Ok(runtime(1)?.block_on(reading)?.2)
}

/// Refuses, before anything is read or written, a command whose buckets lie outside the store options'
/// `allowed_regions` (nothing to check without them, or without buckets).
fn held_to_regions(locations: &[&str], store: &StoreOptions) -> Result<(), Error> {
    if store.allowed_regions.is_empty() || !locations.iter().any(|l| l.starts_with("s3://")) {
        return Ok(());
    }
    runtime(1)?.block_on(verger_engine::bucket_regions(locations, store))?;
    Ok(())
}

/// Trains a classifier on a finished run and writes its folder; returns how training went.
pub fn train(config: &TrainConfig) -> Result<TrainReport, Error> {
    held_to_regions(&[&config.run, &config.out], &config.store)?;
    let (_, report) = runtime(default_threads())?.block_on(verger_engine::classify::train(config))?;
    Ok(report)
}

/// Scores the classifier in folder `classifier` on the finished, labelled run `run`, and with `novelty` also on
/// its images without a near twin in another run; the scores are also saved in the classifier folder
/// (`evaluation.json`, `confusion.parquet`).
pub fn evaluate(
    classifier: &str,
    run: &str,
    novelty: Option<&Novelty>,
    store: &StoreOptions,
) -> Result<Evaluation, Error> {
    let mut locations = vec![classifier, run];
    locations.extend(novelty.map(|n| n.against.as_str()));
    held_to_regions(&locations, store)?;
    Ok(runtime(default_threads())?.block_on(verger_engine::classify::evaluate(classifier, run, novelty, store))?)
}

/// Checks a finished run's images as a dataset and writes what it found into the run (`quality/`, and a
/// section of its report).
pub fn quality(config: &QualityConfig) -> Result<QualitySummary, Error> {
    let mut locations = vec![config.run.as_str()];
    locations.extend(config.against.iter().map(String::as_str));
    held_to_regions(&locations, &config.store)?;
    Ok(runtime(default_threads())?.block_on(verger_engine::quality::check(config))?)
}

/// Loads and checks a classifier folder, once, for [`identify`].
pub fn load_classifier(folder: &str, store: &StoreOptions) -> Result<Classifier, Error> {
    held_to_regions(&[folder], store)?;
    Ok(runtime(1)?.block_on(Classifier::load(folder, store))?)
}

/// Identifies `photos` (paths or `s3://` URIs): the `top` most probable labels and the `neighbours` nearest
/// training images of each, or the reason a photo could not be read or decoded.
pub fn identify(
    classifier: &Classifier,
    photos: &[String],
    settings: &FeaturizeSettings,
    top: usize,
    neighbours: usize,
) -> Result<Vec<Identification>, Error> {
    let mut locations: Vec<&str> = photos.iter().map(String::as_str).collect();
    locations.push(&settings.model.location);
    held_to_regions(&locations, &settings.store)?;
    verger_model::runtime::ensure_loaded(settings.device)?;
    let identifying = verger_engine::classify::identify(classifier, photos, settings, top, neighbours);
    Ok(runtime(default_threads())?.block_on(identifying)?)
}

/// Serves `classifier` over HTTP until SIGTERM or Ctrl-C (requests in flight finish first); `ready` gets the
/// address once connections are accepted.
pub fn serve(
    classifier: Classifier,
    settings: FeaturizeSettings,
    config: ServeConfig,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), Error> {
    settings.store.check_transport()?;
    held_to_regions(&[&settings.model.location], &settings.store)?;
    verger_model::runtime::ensure_loaded(settings.device)?;
    let serving = verger_serve::serve(classifier, settings, config, ready, std::future::pending());
    Ok(runtime(default_threads())?.block_on(serving)?)
}

/// Writes `classifier` and the featurizer of `settings` as one ONNX file at `onnx` (a path or `s3://`), after
/// checking it against verger's own pipeline; returns its size, checksum and single-photo latency.
pub fn export(classifier: &Classifier, settings: &FeaturizeSettings, onnx: &str) -> Result<Exported, Error> {
    settings.store.check_transport()?;
    held_to_regions(&[onnx, &settings.model.location], &settings.store)?;
    verger_model::runtime::ensure_loaded(settings.device)?;
    let onnx = absolute(onnx)?;
    let exporting = verger_engine::classify::export(classifier, settings, &onnx);
    Ok(runtime(default_threads())?.block_on(exporting)?)
}

mod cluster;
pub use cluster::{cluster_init, executor, scheduler, ClusterGuard, ExecutorOptions, SECURITY_ENV};
