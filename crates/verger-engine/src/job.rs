//! `verger run`: list → featurize → fit PCA → project and write, on an embedded DataFusion context.
//!
//! Featurized rows first go to a staging folder, one Parquet file per manifest partition, because PCA needs
//! two passes (fit on everything, then project). Every file is committed atomically, `_SUCCESS` last.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DataFusionError;
use datafusion::datasource::MemTable;
use datafusion::execution::{FunctionRegistry, SendableRecordBatchStream};
use datafusion::physical_plan::{execute_stream, ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{col, ParquetReadOptions, SessionContext};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use thiserror::Error;
use verger_listing::{list_folder, ImageEntry, ListingError, NameFilter};
use verger_pca::{fit, Components, PcaError, PcaModel, PcaStats};

use crate::featurize::{features_type, field, FeaturizeSettings, FeaturizeUdf};
use crate::output::{part_name, write_batches, write_stream, AtomicParquet};
use crate::pca::{PcaProjectUdf, PcaStatsUdaf};
use crate::progress::Progress;
use crate::report::{Cost, Counts, PcaSummary, Report, Stopwatch, Usage, Versions};

/// Everything `verger run` was asked to do; saved verbatim in the report.
#[derive(Debug, Clone, Serialize)]
pub struct JobConfig {
    pub input: PathBuf,
    pub output: PathBuf,
    pub globs: Vec<String>,
    pub components: Components,
    pub center: bool,
    pub threads: usize,
    /// Images per manifest partition: the unit of parallel work and of output files.
    pub partition_rows: usize,
    pub overwrite: bool,
    pub featurize: FeaturizeSettings,
    /// Hourly price of the machine, for the report's cost estimate.
    pub price_per_hour_usd: f64,
}

#[derive(Debug, Error)]
pub enum JobError {
    #[error("output {0} already exists (use --overwrite to replace it)")]
    OutputExists(PathBuf),
    #[error("no file under {input} matches {globs:?}")]
    NoImages { input: PathBuf, globs: Vec<String> },
    #[error("no image could be featurized ({failed} failed); see the errors output")]
    NothingFeaturized { failed: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Listing(#[from] ListingError),
    #[error(transparent)]
    Pca(#[from] PcaError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
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

/// The output folder's layout.
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn result(&self) -> PathBuf {
        self.root.join("result")
    }
    pub fn errors(&self) -> PathBuf {
        self.root.join("errors")
    }
    pub fn pca(&self) -> PathBuf {
        self.root.join("pca")
    }
    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest")
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join("_staging")
    }
    pub fn report(&self) -> PathBuf {
        self.root.join("report.json")
    }
    pub fn success(&self) -> PathBuf {
        self.root.join("_SUCCESS")
    }
}

/// Runs the whole job on an embedded DataFusion context.
pub async fn run_job(
    config: &JobConfig,
    progress: Arc<dyn Progress>,
) -> Result<JobOutcome, JobError> {
    let layout = Layout {
        root: config.output.clone(),
    };
    prepare_output(&layout, config.overwrite)?;
    let ctx = crate::new_context(config.threads, &config.featurize);
    let mut clock = Stopwatch::start();

    let entries = clock.stage("list", list(config)).await?;
    write_manifest(&layout, &entries)?;

    progress.begin("featurize", Some(entries.len() as u64));
    let staged = clock
        .stage(
            "featurize",
            featurize(&ctx, config, &layout, &entries, progress.clone()),
        )
        .await;
    progress.end("featurize");
    let partitions = staged?;

    progress.begin("pca", None);
    let model = clock.stage("pca_fit", fit_pca(&ctx, config, &layout)).await;
    progress.end("pca");
    let model = model?;

    progress.begin("write", Some(partitions as u64));
    let written = clock
        .stage(
            "project_write",
            write_results(&ctx, config, &layout, partitions, &model, progress.clone()),
        )
        .await;
    progress.end("write");
    let featurized = written?;
    let failed = clock.stage("errors", write_errors(&ctx, &layout)).await?;
    std::fs::remove_dir_all(layout.staging()).map_err(|e| JobError::io(&layout.staging(), e))?;

    let report = build_report(
        config,
        &clock,
        entries.len() as u64,
        featurized,
        failed,
        &model,
    );
    let json = serde_json::to_vec_pretty(&report).expect("report serializes");
    write_atomically(&layout.report(), &json)?;
    write_atomically(&layout.success(), b"")?;
    Ok(JobOutcome { report })
}

fn prepare_output(layout: &Layout, overwrite: bool) -> Result<(), JobError> {
    if layout.root.exists() {
        if !overwrite {
            return Err(JobError::OutputExists(layout.root.clone()));
        }
        std::fs::remove_dir_all(&layout.root).map_err(|e| JobError::io(&layout.root, e))?;
    }
    for dir in [
        layout.result(),
        layout.errors(),
        layout.pca(),
        layout.manifest(),
        layout.staging(),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| JobError::io(&dir, e))?;
    }
    Ok(())
}

async fn list(config: &JobConfig) -> Result<Vec<ImageEntry>, JobError> {
    let filter = NameFilter::new(&config.globs)?;
    let input = config.input.clone();
    let entries = tokio::task::spawn_blocking(move || list_folder(&input, &filter))
        .await
        .map_err(|e| JobError::Task(e.to_string()))??;
    if entries.is_empty() {
        return Err(JobError::NoImages {
            input: config.input.clone(),
            globs: config.globs.clone(),
        });
    }
    tracing::info!(images = entries.len(), "listed");
    Ok(entries)
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
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.uri.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.label.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            entries.iter().map(|e| e.size),
        )),
        Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|e| e.modified_ms),
        )),
    ];
    Ok(RecordBatch::try_new(manifest_schema(), columns)?)
}

fn write_manifest(layout: &Layout, entries: &[ImageEntry]) -> Result<(), JobError> {
    write_batches(
        &layout.manifest().join(part_name(0)),
        manifest_schema(),
        &[manifest_batch(entries)?],
    )?;
    Ok(())
}

fn staging_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new(field::FEATURES, features_type(), true),
        Field::new(field::ERROR_STAGE, DataType::Utf8, true),
        Field::new(field::ERROR_MESSAGE, DataType::Utf8, true),
    ]))
}

/// Featurizes every manifest partition into `_staging/part-N.parquet`, `threads` partitions at a time.
async fn featurize(
    ctx: &SessionContext,
    config: &JobConfig,
    layout: &Layout,
    entries: &[ImageEntry],
    progress: Arc<dyn Progress>,
) -> Result<usize, JobError> {
    let manifest = manifest_batch(entries)?;
    let per_partition = config.partition_rows.max(1);
    let per_batch = config.featurize.batch_size.max(1);
    let partitions: Vec<Vec<RecordBatch>> = (0..entries.len())
        .step_by(per_partition)
        .map(|start| {
            let len = per_partition.min(entries.len() - start);
            (0..len)
                .step_by(per_batch)
                .map(|o| manifest.slice(start + o, per_batch.min(len - o)))
                .collect()
        })
        .collect();
    let count = partitions.len();
    ctx.register_table(
        "images",
        Arc::new(MemTable::try_new(manifest_schema(), partitions)?),
    )?;
    let featurize = ctx.udf(FeaturizeUdf::NAME)?;
    let plan = ctx
        .table("images")
        .await?
        .select(vec![
            col("path"),
            col("label"),
            featurize.call(vec![col("path")]).alias("f"),
        ])?
        .create_physical_plan()
        .await?;
    assert_eq!(
        plan.output_partitioning().partition_count(),
        count,
        "one plan partition per manifest partition"
    );

    let staging = layout.staging();
    futures::stream::iter(0..count)
        .map(|i| {
            let (plan, task_ctx, progress) = (plan.clone(), ctx.task_ctx(), progress.clone());
            let path = staging.join(part_name(i));
            tokio::spawn(async move {
                write_staging(&path, plan.execute(i, task_ctx)?, progress.as_ref()).await
            })
        })
        .buffer_unordered(config.threads.max(1))
        .map(|joined| joined.map_err(|e| JobError::Task(e.to_string()))?)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(count)
}

/// Unpacks `featurize`'s struct column into flat staging columns and writes them.
async fn write_staging(
    path: &Path,
    mut stream: SendableRecordBatchStream,
    progress: &dyn Progress,
) -> Result<(), JobError> {
    let mut file = AtomicParquet::create(path, staging_schema())?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let result = batch.column(2).as_struct();
        let columns = vec![batch.column(0).clone(), batch.column(1).clone()]
            .into_iter()
            .chain(result.columns().iter().cloned())
            .collect();
        file.write(&RecordBatch::try_new(staging_schema(), columns)?)?;
        progress.advance(batch.num_rows() as u64);
    }
    file.commit()?;
    Ok(())
}

async fn staged(
    ctx: &SessionContext,
    path: &Path,
) -> Result<datafusion::dataframe::DataFrame, JobError> {
    let path = path
        .to_str()
        .ok_or_else(|| JobError::Task(format!("non-UTF-8 path {}", path.display())))?;
    Ok(ctx
        .read_parquet(path, ParquetReadOptions::default())
        .await?)
}

/// Aggregates `pca_stats` over every featurized row, fits the model and saves it.
async fn fit_pca(
    ctx: &SessionContext,
    config: &JobConfig,
    layout: &Layout,
) -> Result<Arc<PcaModel>, JobError> {
    let pca_stats = ctx.udaf(PcaStatsUdaf::NAME)?;
    let batches = staged(ctx, &layout.staging())
        .await?
        .filter(col(field::ERROR_STAGE).is_null())?
        .aggregate(
            vec![],
            vec![pca_stats.call(vec![col(field::FEATURES)]).alias("stats")],
        )?
        .collect()
        .await?;
    let bytes = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_binary_opt::<i32>()
                .filter(|a| !a.is_empty() && a.is_valid(0))
                .map(|a| a.value(0).to_vec())
        })
        .ok_or_else(|| JobError::Task("pca_stats returned no row".into()))?;
    let stats = PcaStats::from_bytes(&bytes)
        .ok_or_else(|| JobError::Task("corrupt pca_stats result".into()))?;
    if stats.count() == 0 {
        return Err(JobError::NothingFeaturized { failed: 0 });
    }
    let model = fit(&stats, config.components, config.center)?;
    let json = serde_json::to_vec(&model).expect("model serializes");
    write_atomically(&layout.pca().join("model.json"), &json)?;
    tracing::info!(
        k = model.k,
        explained_variance = model.explained_variance(),
        "pca fitted"
    );
    Ok(Arc::new(model))
}

/// Projects each staged partition and writes `result/part-N.parquet`; returns the number of rows written.
async fn write_results(
    ctx: &SessionContext,
    config: &JobConfig,
    layout: &Layout,
    partitions: usize,
    model: &Arc<PcaModel>,
    progress: Arc<dyn Progress>,
) -> Result<u64, JobError> {
    crate::register_model(ctx, model.clone());
    let project = ctx.udf(PcaProjectUdf::NAME)?;
    let mut plans: Vec<Arc<dyn ExecutionPlan>> = Vec::with_capacity(partitions);
    for i in 0..partitions {
        let plan = staged(ctx, &layout.staging().join(part_name(i)))
            .await?
            .filter(col(field::ERROR_STAGE).is_null())?
            .select(vec![
                col("path"),
                col("label"),
                col(field::FEATURES),
                project
                    .call(vec![col(field::FEATURES)])
                    .alias("pca_features"),
            ])?
            .create_physical_plan()
            .await?;
        plans.push(plan);
    }
    let result = layout.result();
    let rows: Vec<u64> = futures::stream::iter(plans.into_iter().enumerate())
        .map(|(i, plan)| {
            let (task_ctx, path, progress) =
                (ctx.task_ctx(), result.join(part_name(i)), progress.clone());
            tokio::spawn(async move {
                let rows = write_stream(&path, execute_stream(plan, task_ctx)?).await?;
                progress.advance(1);
                Ok::<u64, JobError>(rows)
            })
        })
        .buffer_unordered(config.threads.max(1))
        .map(|joined| joined.map_err(|e| JobError::Task(e.to_string()))?)
        .try_collect()
        .await?;
    Ok(rows.iter().sum())
}

/// Writes every failed row, sorted by path, to `errors/part-00000.parquet` (empty when none failed).
async fn write_errors(ctx: &SessionContext, layout: &Layout) -> Result<u64, JobError> {
    let df = staged(ctx, &layout.staging())
        .await?
        .filter(col(field::ERROR_STAGE).is_not_null())?
        .select(vec![
            col("path"),
            col(field::ERROR_STAGE).alias("stage"),
            col(field::ERROR_MESSAGE).alias("message"),
        ])?
        .sort(vec![col("path").sort(true, false)])?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    Ok(write_batches(
        &layout.errors().join(part_name(0)),
        schema,
        &batches,
    )?)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), JobError> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes).map_err(|e| JobError::io(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| JobError::io(path, e))
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
        config: serde_json::to_value(config).expect("config serializes"),
    }
}
