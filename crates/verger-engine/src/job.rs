//! `verger run`: list → featurize → fit PCA → project and write, on an embedded DataFusion context.
//!
//! Featurized rows first go to a staging folder, one Parquet file per manifest partition, because PCA needs
//! two passes (fit on everything, then project). Every file is committed atomically, `_SUCCESS` last, on the
//! local disk and on object stores alike ([`OutputStore`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use datafusion::common::DataFusionError;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::execution::{FunctionRegistry, SendableRecordBatchStream};
use datafusion::functions::core::expr_ext::FieldAccessor;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::physical_plan::{execute_stream, ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{col, lit, Expr, ParquetReadOptions, SessionContext};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use verger_listing::{list_bucket, list_folder, ImageEntry, ListingError, Location, NameFilter, LIST_CONCURRENCY};
use verger_pca::{fit, Components, PcaError, PcaModel, PcaStats};

use crate::fault;
use crate::featurize::{field, result_type, FeaturizeSettings, FeaturizeUdf};
use crate::output::{part_name, OutputStore, ParquetObject};
use crate::output_file::OutputFileTable;
use crate::pca::{PcaProjectUdf, PcaStatsUdaf};
use crate::progress::Progress;
use crate::pseudonym::Pseudonymizer;
use crate::report::{Cost, Counts, PcaSummary, Report, Stopwatch, Usage, Versions};
use crate::store::{check_residency, BucketRegion, StoreOptions};

/// Everything `verger run` was asked to do; saved verbatim in the report.
#[derive(Debug, Clone, Serialize)]
pub struct JobConfig {
    /// A folder or `s3://bucket/prefix`.
    pub input: String,
    /// A folder or `s3://bucket/prefix`.
    pub output: String,
    pub globs: Vec<String>,
    pub components: Components,
    pub center: bool,
    pub threads: usize,
    /// Images per manifest partition: the unit of parallel work and of output files.
    pub partition_rows: usize,
    pub overwrite: bool,
    /// Continue an unfinished run in `output`, reusing every partition it committed.
    pub resume: bool,
    /// Stop as soon as more inputs than this have failed.
    pub max_errors: Option<ErrorBudget>,
    /// Region patterns every bucket the job touches must match (empty: no restriction).
    pub allowed_regions: Vec<String>,
    /// Key file for pseudonymized paths in the shared outputs (result, errors, manifest).
    pub pseudonymize_key: Option<PathBuf>,
    pub featurize: FeaturizeSettings,
    /// Hourly price of the machine, for the report's cost estimate.
    pub price_per_hour_usd: f64,
    /// The cluster (`df://host:port`) that featurizes and writes, if any.
    pub cluster: Option<String>,
    /// Cluster jobs kept in flight.
    pub cluster_jobs: usize,
}

/// How many bad inputs a run tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorBudget {
    Count(u64),
    /// A fraction of the listed images.
    Fraction(f64),
}

impl ErrorBudget {
    pub fn limit(&self, listed: u64) -> u64 {
        match *self {
            ErrorBudget::Count(n) => n,
            ErrorBudget::Fraction(f) => (f * listed as f64).floor() as u64,
        }
    }
}

#[derive(Debug, Error)]
pub enum JobError {
    #[error("output {0} already exists: --resume continues an unfinished run there, --overwrite replaces it")]
    OutputExists(String),
    #[error("output {0} is already complete (_SUCCESS present); nothing to resume")]
    AlreadyComplete(String),
    #[error("{failed} inputs failed, more than the {limit} that --max-errors allows; stopped")]
    TooManyErrors { failed: u64, limit: u64 },
    #[error("no file under {input} matches {globs:?}")]
    NoImages { input: String, globs: Vec<String> },
    #[error("no image could be featurized; see the errors output")]
    NothingFeaturized,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Listing(#[from] ListingError),
    #[error(transparent)]
    Pca(#[from] PcaError),
    #[error(transparent)]
    Model(#[from] verger_model::ModelError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("object store: {0}")]
    Store(String),
    #[error("data residency: {0}")]
    Residency(String),
    #[error("{0}")]
    Pseudonymize(String),
    #[error("worker task failed: {0}")]
    Task(String),
}

impl JobError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        JobError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub report: Report,
}

/// Consecutive partitions aggregated together into one partial of the PCA statistics: fewer, larger partials
/// save moving 13 MB states around; fixed groups keep the model independent of scheduling and `--threads`.
const PCA_GROUP: usize = 8;

/// Rows per record batch fed to `featurize` (the model batch, `--batch-size`, may be smaller).
const ROWS_PER_BATCH: usize = 32;

/// Names of the output's files, relative to the output folder.
mod layout {
    pub const RESULT: &str = "result";
    pub const ERRORS: &str = "errors";
    pub const PCA_MODEL: &str = "pca/model.json";
    pub const MANIFEST: &str = "manifest";
    /// The partitioning the manifest was cut with.
    pub const PLAN: &str = "manifest/_plan.json";
    pub const STAGING: &str = "_staging";
    /// Files written on a cluster, before the driver commits them to their names.
    pub const ATTEMPTS: &str = "_staging/attempts";
    /// With pseudonymized paths, the manifest of real paths, kept until the run succeeds.
    pub const REAL_MANIFEST: &str = "_staging/manifest.parquet";
    pub const REPORT: &str = "report.json";
    pub const SUCCESS: &str = "_SUCCESS";

    pub fn file(folder: &str, name: &str) -> String {
        format!("{folder}/{name}")
    }

    /// A folder of its own for one submission of a cluster job.
    pub fn attempt() -> String {
        format!("{ATTEMPTS}/{}", uuid::Uuid::new_v4())
    }

    /// Present in an attempt's folder while its submission is open.
    pub const OPEN: &str = "_OPEN";
}

/// Runs the whole job on an embedded DataFusion context; with `cluster` (a context connected to a cluster),
/// featurization runs there, one cluster job per partition, and the rest here.
///
/// Commit order: manifest, staged partitions, errors, PCA model, result partitions, report, `_SUCCESS`. Every
/// file is atomic, so a run killed anywhere resumes from what it committed, with the same partitions.
pub async fn run_job(
    config: &JobConfig,
    progress: Arc<dyn Progress>,
    cluster: Option<SessionContext>,
) -> Result<JobOutcome, JobError> {
    let residency = check_residency_first(config).await?;
    if config.featurize.store.encryption.is_some() && !config.output.starts_with("s3://") {
        return Err(JobError::Store(
            "server-side encryption applies to outputs in object stores; a local output is as encrypted as its disk"
                .into(),
        ));
    }
    // The model is fetched and verified before anything is written or any image is read.
    let settings = config.featurize.clone();
    tokio::task::spawn_blocking(move || settings.featurizers().map(drop))
        .await
        .map_err(|e| JobError::Task(e.to_string()))??;
    let out = OutputStore::open(&config.output, &config.featurize.store)?;
    prepare_output(&out, config).await?;
    let ctx = crate::new_context(config.threads, &config.featurize);
    out.register(&ctx);
    let pseudonymizer = match &config.pseudonymize_key {
        Some(key) => Some(Arc::new(Pseudonymizer::from_file(key).map_err(JobError::Pseudonymize)?)),
        None => None,
    };
    let mut clock = Stopwatch::start();

    let (entries, partition_rows) = clock
        .stage("list", manifest(config, &out, pseudonymizer.as_deref()))
        .await?;
    let listed = entries.len() as u64;
    let budget = Budget {
        failed: AtomicU64::new(0),
        limit: config.max_errors.map(|b| b.limit(listed)),
    };
    let parts = Partitions::new(&out, &entries, partition_rows);

    progress.begin("featurize", Some(listed));
    let staged = clock
        .stage(
            "featurize",
            featurize(
                &ctx,
                cluster.as_ref(),
                config,
                &parts,
                &featurize_input(&entries, pseudonymizer.as_deref())?,
                &budget,
                progress.clone(),
            ),
        )
        .await;
    progress.end("featurize");
    let stats = staged?;
    let failed = count_failed(&ctx, parts.all_staged()).await?;
    budget.check(failed)?;
    clock.stage("errors", write_errors(&ctx, &out, &parts)).await?;
    fault::checkpoint("errors");

    progress.begin("pca", None);
    let model = clock.stage("pca_fit", fit_pca(config, &out, &stats)).await;
    progress.end("pca");
    let model = model?;
    fault::checkpoint("pca");

    progress.begin("write", Some(parts.count() as u64));
    let written = clock.stage(
        "project_write",
        write_results(&ctx, cluster.as_ref(), config, &parts, &model, progress.clone()),
    );
    let featurized = written.await;
    progress.end("write");
    let featurized = featurized?;

    let mut report = build_report(config, &clock, listed, featurized, failed, &model);
    report.buckets = residency;
    report.encryption = config.featurize.store.encryption.as_ref().map(|e| e.describe());
    out.put(
        layout::REPORT,
        serde_json::to_vec_pretty(&report).expect("report serializes"),
    )
    .await?;
    fault::checkpoint("report");
    out.put(layout::SUCCESS, Vec::new()).await?;
    out.remove_all(layout::STAGING).await?;
    Ok(JobOutcome { report })
}

/// Finds the region of every bucket the job touches (input, output, model) and refuses the job, before any
/// byte moves, when one is outside `--allowed-regions`.
async fn check_residency_first(config: &JobConfig) -> Result<Vec<BucketRegion>, JobError> {
    let locations = [&config.input, &config.output, &config.featurize.model.location];
    bucket_regions(&locations, &config.featurize.store, &config.allowed_regions).await
}

/// The region of each bucket among `locations`, refusing any outside `allowed` (no restriction when empty).
pub async fn bucket_regions(
    locations: &[&String],
    store: &StoreOptions,
    allowed: &[String],
) -> Result<Vec<BucketRegion>, JobError> {
    let mut buckets: Vec<BucketRegion> = Vec::new();
    for location in locations {
        let Location::S3 { bucket, .. } = Location::parse(location) else {
            continue;
        };
        if buckets.iter().any(|b| b.bucket == bucket) {
            continue;
        }
        match store.bucket_region(&bucket).await {
            Ok(region) => buckets.push(region),
            // Without a restriction the region is only reported, so an unknown one does not stop the job.
            Err(e) if allowed.is_empty() => tracing::warn!("region of bucket {bucket} unknown: {e}"),
            Err(e) => return Err(JobError::Store(e)),
        }
    }
    if !allowed.is_empty() {
        check_residency(allowed, &buckets).map_err(JobError::Residency)?;
    }
    Ok(buckets)
}

async fn prepare_output(out: &OutputStore, config: &JobConfig) -> Result<(), JobError> {
    if !out.is_empty().await? {
        if config.resume {
            if out.exists(layout::SUCCESS).await? {
                return Err(JobError::AlreadyComplete(out.display().to_string()));
            }
        } else if config.overwrite {
            out.remove_all("").await?;
        } else {
            return Err(JobError::OutputExists(out.display().to_string()));
        }
    }
    out.remove_unfinished_files()
}

/// The partitioning a run commits to with its manifest, so that a resumed run cuts the same partitions.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    partition_rows: usize,
}

/// This run's manifest: read back when resuming one that committed it, else listed and committed.
async fn manifest(
    config: &JobConfig,
    out: &OutputStore,
    pseudonymizer: Option<&Pseudonymizer>,
) -> Result<(Vec<ImageEntry>, usize), JobError> {
    let public = layout::file(layout::MANIFEST, &part_name(0));
    // With pseudonyms, the real paths a resumed run needs stay in staging, which is removed on success.
    let real = match pseudonymizer {
        Some(_) => layout::REAL_MANIFEST.to_string(),
        None => public.clone(),
    };
    if config.resume && out.exists(&real).await? {
        let plan: Plan = serde_json::from_slice(&out.get(layout::PLAN).await?)
            .map_err(|e| JobError::Task(format!("{}: {e}", layout::PLAN)))?;
        let entries = read_manifest(out, &real).await?;
        tracing::info!(images = entries.len(), "resuming from the committed manifest");
        return Ok((entries, plan.partition_rows));
    }
    let entries = list(config).await?;
    fault::checkpoint("listed");
    let plan = Plan {
        partition_rows: config.partition_rows.max(1),
    };
    out.put(layout::PLAN, serde_json::to_vec(&plan).expect("plan serializes"))
        .await?;
    out.write_batches(&real, manifest_schema(), &[manifest_batch(&entries)?])
        .await?;
    if let Some(p) = pseudonymizer {
        let shared: Vec<ImageEntry> = entries
            .iter()
            .map(|e| ImageEntry {
                uri: p.pseudonym(&e.uri),
                ..e.clone()
            })
            .collect();
        out.write_batches(&public, manifest_schema(), &[manifest_batch(&shared)?])
            .await?;
    }
    fault::checkpoint("manifest");
    Ok((entries, plan.partition_rows))
}

async fn list(config: &JobConfig) -> Result<Vec<ImageEntry>, JobError> {
    let entries = list_images(&config.input, &config.globs, &config.featurize.store, LIST_CONCURRENCY).await?;
    if entries.is_empty() {
        return Err(JobError::NoImages {
            input: config.input.clone(),
            globs: config.globs.clone(),
        });
    }
    tracing::info!(images = entries.len(), "listed");
    Ok(entries)
}

/// The images under `input` (a folder or `s3://bucket/prefix`) whose names match `globs`, sorted by URI;
/// buckets are listed `concurrency` folders at a time.
pub async fn list_images(
    input: &str,
    globs: &[String],
    store: &StoreOptions,
    concurrency: usize,
) -> Result<Vec<ImageEntry>, JobError> {
    let filter = NameFilter::new(globs)?;
    Ok(match Location::parse(input) {
        Location::Local(path) => tokio::task::spawn_blocking(move || list_folder(&path, &filter))
            .await
            .map_err(|e| JobError::Task(e.to_string()))??,
        Location::S3 { bucket, prefix } => {
            let client = store.s3(&bucket).map_err(JobError::Store)?;
            list_bucket(client.as_ref(), &bucket, &prefix, &filter, concurrency).await?
        }
    })
}

fn manifest_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("modified_ms", DataType::Int64, false),
    ]))
}

fn manifest_batch(entries: &[ImageEntry]) -> Result<RecordBatch, JobError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.uri.as_str()))),
        Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.label.as_str()))),
        Arc::new(UInt64Array::from_iter_values(entries.iter().map(|e| e.size))),
        Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| e.modified_ms))),
    ];
    Ok(RecordBatch::try_new(manifest_schema(), columns)?)
}

/// The rows featurization starts from: each image's `path`, `label` and `shared_path`, the path as the shared
/// outputs show it (pseudonymized here, so that the key never enters a plan).
fn featurize_input(entries: &[ImageEntry], pseudonymizer: Option<&Pseudonymizer>) -> Result<RecordBatch, JobError> {
    let shared = entries.iter().map(|e| match pseudonymizer {
        Some(p) => p.pseudonym(&e.uri),
        None => e.uri.clone(),
    });
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.uri.as_str()))),
        Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.label.as_str()))),
        Arc::new(StringArray::from_iter_values(shared)),
    ];
    Ok(RecordBatch::try_new(featurize_input_schema(), columns)?)
}

fn featurize_input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("shared_path", DataType::Utf8, false),
    ]))
}

async fn read_manifest(out: &OutputStore, name: &str) -> Result<Vec<ImageEntry>, JobError> {
    let ctx = SessionContext::new();
    out.register(&ctx);
    let batches = ctx.read_parquet(out.url(name), ParquetReadOptions::default()).await?;
    let mut entries = Vec::new();
    for batch in batches.collect().await? {
        let text = |i: usize| cast(batch.column(i), &DataType::Utf8);
        let (paths, labels) = (text(0)?, text(1)?);
        let (paths, labels) = (paths.as_string::<i32>(), labels.as_string::<i32>());
        let sizes = batch.column(2).as_primitive::<UInt64Type>();
        let modified = batch.column(3).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            entries.push(ImageEntry {
                uri: paths.value(i).to_string(),
                label: labels.value(i).to_string(),
                size: sizes.value(i),
                modified_ms: modified.value(i),
            });
        }
    }
    Ok(entries)
}

/// Counts failed inputs as they are staged and stops the run once they exceed `--max-errors`.
struct Budget {
    failed: AtomicU64,
    limit: Option<u64>,
}

impl Budget {
    fn add(&self, failed: u64) -> Result<(), JobError> {
        let total = self.failed.fetch_add(failed, Ordering::Relaxed) + failed;
        self.check(total)
    }

    fn check(&self, failed: u64) -> Result<(), JobError> {
        match self.limit {
            Some(limit) if failed > limit => Err(JobError::TooManyErrors { failed, limit }),
            _ => Ok(()),
        }
    }
}

/// Cuts `n` rows into contiguous partitions of `rows`, except the last `TAPER * rows` rows, which are cut
/// `TAPER` times finer: workers take partitions in order, so the run ends with at most a small partition on one
/// worker while the others are idle. Depends on nothing but `n` and `rows`, so a resumed run cuts the same.
fn partition_ranges(n: usize, rows: usize) -> Vec<std::ops::Range<usize>> {
    const TAPER: usize = 4;
    let rows = rows.max(1);
    let fine = rows.div_ceil(TAPER);
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < n {
        let size = if n - start > TAPER * rows { rows } else { fine };
        ranges.push(start..(start + size).min(n));
        start += size;
    }
    ranges
}

/// The manifest cut into contiguous partitions; partition i is staged at `_staging/part-i.parquet`.
struct Partitions<'a> {
    ranges: Vec<std::ops::Range<usize>>,
    out: &'a OutputStore,
}

impl<'a> Partitions<'a> {
    fn new(out: &'a OutputStore, entries: &[ImageEntry], rows: usize) -> Self {
        Partitions {
            ranges: partition_ranges(entries.len(), rows),
            out,
        }
    }

    fn count(&self) -> usize {
        self.ranges.len()
    }

    fn staged(&self, i: usize) -> String {
        layout::file(layout::STAGING, &part_name(i))
    }

    fn staged_url(&self, i: usize) -> String {
        self.out.url(&self.staged(i))
    }

    fn all_staged(&self) -> Vec<String> {
        (0..self.count()).map(|i| self.staged_url(i)).collect()
    }

    /// Partitions a previous attempt has not staged yet.
    async fn todo(&self) -> Result<Vec<usize>, JobError> {
        let mut todo = Vec::new();
        for i in 0..self.count() {
            if !self.out.exists(&self.staged(i)).await? {
                todo.push(i);
            }
        }
        Ok(todo)
    }
}

/// Staged rows: `path` (as shared), `label`, and `featurize`'s result as is.
fn staging_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new(FEATURIZED, result_type(), true),
    ]))
}

/// The staged column holding `featurize`'s result.
const FEATURIZED: &str = "featurized";

/// Field `name` of a staged row's featurization result.
fn featurized(name: &str) -> Expr {
    col(FEATURIZED).field(name)
}

/// Featurizes every partition not yet staged, `threads` partitions at a time, and meanwhile aggregates the
/// PCA statistics of each group of staged partitions ([`PCA_GROUP`]), so that fitting overlaps inference.
/// Returns the statistics of all featurized rows, merged in partition order: the same bits however the work
/// was scheduled or resumed (partitions staged by an earlier attempt are aggregated from their files too).
async fn featurize(
    ctx: &SessionContext,
    cluster: Option<&SessionContext>,
    config: &JobConfig,
    parts: &Partitions<'_>,
    input: &RecordBatch,
    budget: &Budget,
    progress: Arc<dyn Progress>,
) -> Result<PcaStats, JobError> {
    let todo = parts.todo().await?;
    let done_rows: usize = (0..parts.count())
        .filter(|i| !todo.contains(i))
        .map(|i| parts.ranges[i].len())
        .sum();
    progress.advance(done_rows as u64);

    let (staged_tx, staged_rx) = tokio::sync::mpsc::unbounded_channel();
    for part in (0..parts.count()).filter(|i| todo.binary_search(i).is_err()) {
        staged_tx.send(part).expect("receiver alive");
    }
    let sequential = crate::new_context(1, &config.featurize);
    parts.out.register(&sequential);
    let aggregator = tokio::spawn(aggregate_staged(sequential, parts.all_staged(), staged_rx));

    let source = match (cluster, todo.is_empty()) {
        (_, true) => None,
        (Some(remote), false) => Some(Ok(Source::Cluster(remote.clone(), input.clone()))),
        (None, false) => Some(
            featurize_plan(ctx, config, parts, input, &todo)
                .await
                .map(Source::Local),
        ),
    };
    let featurized = match source {
        None => Ok(()),
        Some(Ok(source)) => stage_partitions(ctx, &source, config, parts, &todo, budget, progress, staged_tx).await,
        Some(Err(e)) => Err(e),
    };
    match featurized {
        Ok(()) => aggregator.await.map_err(|e| JobError::Task(e.to_string()))?,
        Err(e) => {
            aggregator.abort();
            Err(e)
        }
    }
}

/// The rows staging files are made of ([`staging_schema`]). The struct stays whole: taking it apart here
/// would have DataFusion inline `featurize` into each field's expression, and featurize every image thrice.
fn staged_rows(images: DataFrame, ctx: &SessionContext) -> Result<DataFrame, JobError> {
    let featurize = ctx.udf(FeaturizeUdf::NAME)?;
    Ok(images.select(vec![
        col("shared_path").alias("path"),
        col("label"),
        featurize.call(vec![col("path")]).alias(FEATURIZED),
    ])?)
}

/// Where partitions are featurized.
enum Source {
    /// One partition of this plan per partition to stage, in the order of `todo`.
    Local(Arc<dyn ExecutionPlan>),
    /// A context connected to a cluster and the featurization input: each partition is one cluster job.
    Cluster(SessionContext, RecordBatch),
}

impl Source {
    /// Partitions staged at once: one per worker here; on a cluster, enough jobs to keep every slot busy.
    fn in_flight(&self, config: &JobConfig) -> usize {
        match self {
            Source::Local(_) => config.threads.max(1),
            Source::Cluster(..) => config.cluster_jobs.max(1),
        }
    }

    /// Featurizes and stages partition `part` (the `todo_index`-th to do); returns its failed rows.
    async fn stage(
        &self,
        local: &SessionContext,
        parts: &Partitions<'_>,
        (todo_index, part): (usize, usize),
        progress: Arc<dyn Progress>,
    ) -> Result<u64, JobError> {
        let name = parts.staged(part);
        match self {
            Source::Local(plan) => {
                let stream = plan.execute(todo_index, local.task_ctx())?;
                let file = parts.out.staging_parquet(&name, staging_schema())?;
                // Featurization is CPU work: its own task, so that partitions run in parallel.
                tokio::spawn(async move { write_staging(file, stream, progress.as_ref()).await })
                    .await
                    .map_err(|e| JobError::Task(e.to_string()))?
            }
            Source::Cluster(remote, input) => {
                // The partition's rows travel inside the plan; the executors write the staged file.
                let range = parts.ranges[part].clone();
                let images = values(remote, &input.slice(range.start, range.len()))?;
                write_on_cluster(remote, parts.out, staged_rows(images, remote)?, &name).await?;
                progress.advance(range.len() as u64);
                count_failed(local, vec![parts.staged_url(part)]).await
            }
        }
    }
}

/// `rows` (string columns) as a VALUES plan with the same column names, so that they travel inside the plan.
fn values(ctx: &SessionContext, rows: &RecordBatch) -> Result<DataFrame, JobError> {
    let columns: Vec<&StringArray> = rows.columns().iter().map(|c| c.as_string::<i32>()).collect();
    let values = (0..rows.num_rows())
        .map(|r| columns.iter().map(|c| lit(c.value(r))).collect())
        .collect();
    let schema = rows.schema();
    let names = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| col(format!("column{}", i + 1)).alias(f.name()));
    let plan = LogicalPlanBuilder::values(values)?.project(names)?.build()?;
    Ok(DataFrame::new(ctx.state(), plan))
}

/// Runs `rows` on the cluster into the output file `name`; returns the rows written. Executors write an
/// attempt named for this submission only, and this driver commits it by renaming: a retried task rewrites
/// its own attempt, and a slow or lost one can never replace a committed file. Closing the submission
/// (removing its guard) stops late tasks from writing at all.
async fn write_on_cluster(
    remote: &SessionContext,
    out: &OutputStore,
    rows: DataFrame,
    name: &str,
) -> Result<u64, JobError> {
    let folder = layout::attempt();
    let (attempt, guard) = (layout::file(&folder, name), layout::file(&folder, layout::OPEN));
    out.put(&guard, Vec::new()).await?;
    let table = OutputFileTable {
        file: out.shared_file(&attempt, Some(guard)),
        schema: Arc::new(rows.schema().as_arrow().clone()),
    };
    let insert = LogicalPlanBuilder::insert_into(
        rows.into_unoptimized_plan(),
        "verger_output",
        provider_as_source(Arc::new(table)),
        InsertOp::Append,
    )?
    .build()?;
    let committed = match DataFrame::new(remote.state(), insert).collect().await {
        Ok(counts) => out.rename(&attempt, name).await.map(|()| {
            counts
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().iter().flatten())
                .sum()
        }),
        // A job can write its file and then fail to deliver the count (the executor holding it was lost
        // in between): a published attempt is whole, so it is the result.
        Err(e) => match out.exists(&attempt).await? {
            true => {
                tracing::warn!("{name}: committing the written file of a job that then failed: {e}");
                out.rename(&attempt, name).await?;
                out.parquet_rows(name).await
            }
            false => Err(e.into()),
        },
    };
    out.remove_all(&folder).await?;
    committed
}

/// Featurizes and stages the partitions in `todo`, reporting each staged partition on `staged`.
#[allow(clippy::too_many_arguments)]
async fn stage_partitions(
    ctx: &SessionContext,
    source: &Source,
    config: &JobConfig,
    parts: &Partitions<'_>,
    todo: &[usize],
    budget: &Budget,
    progress: Arc<dyn Progress>,
    staged: tokio::sync::mpsc::UnboundedSender<usize>,
) -> Result<(), JobError> {
    futures::stream::iter(todo.iter().copied().enumerate())
        .map(|(todo_index, part)| {
            let progress = progress.clone();
            async move {
                let failed = source.stage(ctx, parts, (todo_index, part), progress).await?;
                Ok::<_, JobError>((part, failed))
            }
        })
        .buffer_unordered(source.in_flight(config))
        .map(|done| {
            let (part, failed) = done?;
            budget.add(failed)?;
            fault::checkpoint("featurize");
            // The aggregator only stops early when the job is failing anyway.
            let _ = staged.send(part);
            Ok::<(), JobError>(())
        })
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Aggregates `pca_stats` over each group of [`PCA_GROUP`] consecutive staged partitions as soon as the whole
/// group is staged, one group at a time and in order, folding the partial statistics as they come: at most
/// one 13 MB partial besides the total. A single-partition context feeds rows in manifest order.
async fn aggregate_staged(
    sequential: SessionContext,
    staged_files: Vec<String>,
    mut staged: tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> Result<PcaStats, JobError> {
    let mut ready = vec![false; staged_files.len()];
    let mut total = PcaStats::new(verger_model::FEATURE_DIM);
    for (group, files) in staged_files.chunks(PCA_GROUP).enumerate() {
        let parts = group * PCA_GROUP..group * PCA_GROUP + files.len();
        while !ready[parts.clone()].iter().all(|&r| r) {
            let part = staged
                .recv()
                .await
                .ok_or_else(|| JobError::Task("featurization ended before every partition was staged".into()))?;
            ready[part] = true;
        }
        total.merge(&group_stats(&sequential, files.to_vec()).await?);
    }
    Ok(total)
}

/// The `pca_stats` aggregate over the featurized rows of some staged partitions.
async fn group_stats(sequential: &SessionContext, staged: Vec<String>) -> Result<PcaStats, JobError> {
    let pca_stats = sequential.udaf(PcaStatsUdaf::NAME)?;
    let batches = read_staged(sequential, staged)
        .await?
        .filter(featurized(field::ERROR_STAGE).is_null())?
        .aggregate(
            vec![],
            vec![pca_stats.call(vec![featurized(field::FEATURES)]).alias("stats")],
        )?
        .collect()
        .await?;
    partial_stats(&batches)
}

/// One plan partition per manifest partition in `todo`: the staged rows of its images.
async fn featurize_plan(
    ctx: &SessionContext,
    config: &JobConfig,
    parts: &Partitions<'_>,
    input: &RecordBatch,
    todo: &[usize],
) -> Result<Arc<dyn ExecutionPlan>, JobError> {
    // Rows per record batch: enough to amortise per-batch overhead, and whole model batches.
    let per_batch = config.featurize.batch_size.max(ROWS_PER_BATCH);
    let tables: Vec<Vec<RecordBatch>> = todo
        .iter()
        .map(|&i| {
            let range = parts.ranges[i].clone();
            range
                .clone()
                .step_by(per_batch)
                .map(|s| input.slice(s, per_batch.min(range.end - s)))
                .collect()
        })
        .collect();
    ctx.register_table("images", Arc::new(MemTable::try_new(input.schema(), tables)?))?;
    let plan = staged_rows(ctx.table("images").await?, ctx)?
        .create_physical_plan()
        .await?;
    assert_eq!(
        plan.output_partitioning().partition_count(),
        todo.len(),
        "one plan partition per manifest partition"
    );
    Ok(plan)
}

/// Writes staged rows and commits them; returns the failed rows.
async fn write_staging(
    mut file: ParquetObject,
    mut stream: SendableRecordBatchStream,
    progress: &dyn Progress,
) -> Result<u64, JobError> {
    let mut failed = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let error_stage = batch.column(2).as_struct().column(1);
        failed += (error_stage.len() - error_stage.null_count()) as u64;
        // The staging schema, whatever nullability the plan inferred.
        file.write(&RecordBatch::try_new(staging_schema(), batch.columns().to_vec())?)
            .await?;
        progress.advance(batch.num_rows() as u64);
    }
    file.commit().await?;
    Ok(failed)
}

async fn read_staged(ctx: &SessionContext, files: Vec<String>) -> Result<DataFrame, JobError> {
    Ok(ctx.read_parquet(files, ParquetReadOptions::default()).await?)
}

async fn count_failed(ctx: &SessionContext, staged: Vec<String>) -> Result<u64, JobError> {
    let failed = read_staged(ctx, staged)
        .await?
        .filter(featurized(field::ERROR_STAGE).is_not_null())?;
    Ok(failed.count().await? as u64)
}

/// Fits the model from the merged statistics and saves it.
async fn fit_pca(config: &JobConfig, out: &OutputStore, stats: &PcaStats) -> Result<Arc<PcaModel>, JobError> {
    if stats.count() == 0 {
        return Err(JobError::NothingFeaturized);
    }
    let model = fit(stats, config.components, config.center)?;
    out.put(layout::PCA_MODEL, serde_json::to_vec(&model).expect("model serializes"))
        .await?;
    tracing::info!(
        k = model.k,
        explained_variance = model.explained_variance(),
        "pca fitted"
    );
    Ok(Arc::new(model))
}

/// The `pca_stats` value of a one-row aggregate result.
fn partial_stats(batches: &[RecordBatch]) -> Result<PcaStats, JobError> {
    let bytes = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_binary_opt::<i32>()
                .filter(|a| !a.is_empty() && a.is_valid(0))
                .map(|a| a.value(0))
        })
        .ok_or_else(|| JobError::Task("pca_stats returned no row".into()))?;
    PcaStats::from_bytes(bytes).ok_or_else(|| JobError::Task("corrupt pca_stats result".into()))
}

/// Projects each staged partition and writes `result/part-N.parquet`, here or on the cluster's executors;
/// returns the number of rows written.
async fn write_results(
    ctx: &SessionContext,
    cluster: Option<&SessionContext>,
    config: &JobConfig,
    parts: &Partitions<'_>,
    model: &Arc<PcaModel>,
    progress: Arc<dyn Progress>,
) -> Result<u64, JobError> {
    for context in std::iter::once(ctx).chain(cluster) {
        crate::register_model(context, model.clone());
    }
    let rows: Vec<u64> = futures::stream::iter(0..parts.count())
        .map(|i| {
            let progress = progress.clone();
            async move {
                let name = layout::file(layout::RESULT, &part_name(i));
                let rows = match cluster {
                    None => {
                        let plan = projected(ctx, read_staged(ctx, vec![parts.staged_url(i)]).await?)?
                            .create_physical_plan()
                            .await?;
                        let (task_ctx, out) = (ctx.task_ctx(), parts.out.clone());
                        tokio::spawn(async move { out.write_stream(&name, execute_stream(plan, task_ctx)?).await })
                            .await
                            .map_err(|e| JobError::Task(e.to_string()))??
                    }
                    Some(remote) => {
                        let staged = OutputFileTable {
                            file: parts.out.shared_file(&parts.staged(i), None),
                            schema: staging_schema(),
                        };
                        let rows = projected(remote, remote.read_table(Arc::new(staged))?)?;
                        write_on_cluster(remote, parts.out, rows, &name).await?
                    }
                };
                progress.advance(1);
                Ok::<u64, JobError>(rows)
            }
        })
        .buffer_unordered(
            if cluster.is_some() {
                config.cluster_jobs
            } else {
                // Two files per worker: one file's reading and planning overlap another's projection.
                2 * config.threads
            }
            .max(1),
        )
        .map(|rows| {
            fault::checkpoint("write");
            rows
        })
        .try_collect()
        .await?;
    Ok(rows.iter().sum())
}

/// The result rows of `staged`: the featurized ones with their PCA projection.
fn projected(ctx: &SessionContext, staged: DataFrame) -> Result<DataFrame, JobError> {
    let project = ctx.udf(PcaProjectUdf::NAME)?;
    Ok(staged.filter(featurized(field::ERROR_STAGE).is_null())?.select(vec![
        col("path"),
        col("label"),
        featurized(field::FEATURES).alias(field::FEATURES),
        project.call(vec![featurized(field::FEATURES)]).alias("pca_features"),
    ])?)
}

/// Writes every failed row, sorted by path, to `errors/part-00000.parquet` (empty when none failed).
async fn write_errors(ctx: &SessionContext, out: &OutputStore, parts: &Partitions<'_>) -> Result<u64, JobError> {
    let df = read_staged(ctx, parts.all_staged())
        .await?
        .filter(featurized(field::ERROR_STAGE).is_not_null())?
        .select(vec![
            col("path"),
            featurized(field::ERROR_STAGE).alias("stage"),
            featurized(field::ERROR_MESSAGE).alias("message"),
        ])?
        .sort(vec![col("path").sort(true, false)])?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    out.write_batches(&layout::file(layout::ERRORS, &part_name(0)), schema, &batches)
        .await
}

fn build_report(
    config: &JobConfig,
    clock: &Stopwatch,
    listed: u64,
    featurized: u64,
    failed: u64,
    model: &PcaModel,
) -> Report {
    let wall_s = clock.total_wall_s();
    let cpu_s = clock.total_cpu_s();
    let processed = (featurized + failed).max(1) as f64;
    Report {
        counts: Counts {
            listed,
            featurized,
            failed,
        },
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
        encryption: None,
        config: serde_json::to_value(config).expect("config serializes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::displayable;

    #[tokio::test]
    async fn staged_rows_featurize_each_image_once() {
        let settings = FeaturizeSettings {
            model: verger_model::ModelSpec {
                location: "model.onnx".into(),
                sha256: String::new(),
            },
            batch_size: 1,
            max_pixels: 1,
            store: StoreOptions::default(),
        };
        let ctx = crate::new_context(2, &settings);
        let entries = vec![ImageEntry {
            uri: "file:///a/b.jpg".into(),
            label: "b".into(),
            size: 1,
            modified_ms: 0,
        }];
        let images = ctx.read_batch(featurize_input(&entries, None).unwrap()).unwrap();
        let plan = staged_rows(images, &ctx).unwrap().create_physical_plan().await.unwrap();
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        assert_eq!(shown.matches("featurize(").count(), 1, "{shown}");
        assert_eq!(plan.schema().fields().len(), staging_schema().fields().len());
    }

    #[test]
    fn partitions_cover_every_row_once_and_taper_at_the_end() {
        for (n, rows) in [
            (7392, 256),
            (1, 256),
            (1024, 256),
            (1025, 256),
            (26, 6),
            (10, 1),
            (0, 8),
        ] {
            let ranges = partition_ranges(n, rows);
            let covered: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(covered, (0..n).collect::<Vec<_>>(), "n={n} rows={rows}");
            assert!(ranges.iter().all(|r| !r.is_empty() && r.len() <= rows));
            if let Some(last) = ranges.last() {
                assert!(last.len() <= rows.div_ceil(4), "n={n} rows={rows}: tail {}", last.len());
            }
        }
        let sizes: Vec<usize> = partition_ranges(7392, 256).iter().map(|r| r.len()).collect();
        assert_eq!(sizes.iter().filter(|&&s| s == 256).count(), 25);
        assert_eq!(sizes.len(), 25 + 16);
    }
}
