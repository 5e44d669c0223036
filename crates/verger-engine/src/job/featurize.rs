//! The featurize stage: every manifest partition not yet staged is read, decoded, resized and run through the
//! model (the `featurize` function), here or on a cluster, and staged; meanwhile the PCA statistics of the
//! staged partitions are aggregated, so that fitting overlaps inference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use verger_pca::PcaStats;

use super::partitions::Partitions;
use super::{cluster, pca_fit, staging};
use crate::error::JobError;
use crate::fault;
use crate::featurize::FeaturizeSettings;
use crate::progress::Progress;

/// Rows per record batch fed to `featurize` (the model batch, `--batch-size`, may be smaller).
const ROWS_PER_BATCH: usize = 32;

/// Counts failed inputs as they are staged and stops the run once they exceed `--max-errors`.
pub struct Budget {
    failed: AtomicU64,
    limit: Option<u64>,
}

impl Budget {
    pub fn new(limit: Option<u64>) -> Self {
        Budget {
            failed: AtomicU64::new(0),
            limit,
        }
    }

    fn add(&self, failed: u64) -> Result<(), JobError> {
        let total = self.failed.fetch_add(failed, Ordering::Relaxed) + failed;
        self.check(total)
    }

    pub fn check(&self, failed: u64) -> Result<(), JobError> {
        match self.limit {
            Some(limit) if failed > limit => Err(JobError::TooManyErrors { failed, limit }),
            _ => Ok(()),
        }
    }
}

/// Where partitions are featurized, and how many at once.
pub enum Where<'a> {
    /// On this machine's `threads` workers.
    Here { threads: usize },
    /// On a cluster, with `jobs` cluster jobs in flight.
    Cluster { remote: &'a SessionContext, jobs: usize },
}

/// Featurizes every partition not yet staged, and meanwhile aggregates the PCA statistics of each group of
/// staged partitions ([`pca_fit::GROUP`]). Returns the statistics of all featurized rows, merged in partition
/// order: the same bits however the work was scheduled or resumed (partitions staged by an earlier attempt
/// are aggregated from their files too).
pub async fn run(
    ctx: &SessionContext,
    place: Where<'_>,
    settings: &FeaturizeSettings,
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
    let sequential = crate::context::local(1, settings);
    parts.out.register(&sequential);
    let aggregating = pca_fit::aggregate_staged(sequential, parts.all_staged(), staged_rx);
    let aggregator = tokio::spawn(tracing::Instrument::in_current_span(aggregating));

    let featurized = match todo.is_empty() {
        true => Ok(()),
        false => match source(ctx, place, settings, parts, input, &todo).await {
            Ok(source) => stage_partitions(ctx, &source, parts, &todo, budget, progress, staged_tx).await,
            Err(e) => Err(e),
        },
    };
    match featurized {
        Ok(()) => aggregator.await.map_err(JobError::task)?,
        Err(e) => {
            aggregator.abort();
            Err(e)
        }
    }
}

/// Where the partitions in `todo` are featurized.
enum Source<'a> {
    /// One partition of this plan per partition to stage, in the order of `todo`.
    Local {
        plan: Arc<dyn ExecutionPlan>,
        threads: usize,
    },
    /// A context connected to a cluster and the featurization input: each partition is one cluster job.
    Cluster {
        remote: &'a SessionContext,
        input: RecordBatch,
        jobs: usize,
    },
}

async fn source<'a>(
    ctx: &SessionContext,
    place: Where<'a>,
    settings: &FeaturizeSettings,
    parts: &Partitions<'_>,
    input: &RecordBatch,
    todo: &[usize],
) -> Result<Source<'a>, JobError> {
    Ok(match place {
        Where::Here { threads } => Source::Local {
            plan: local_plan(ctx, settings, parts, input, todo).await?,
            threads: threads.max(1),
        },
        Where::Cluster { remote, jobs } => Source::Cluster {
            remote,
            input: input.clone(),
            jobs: jobs.max(1),
        },
    })
}

impl Source<'_> {
    /// Partitions staged at once: one per worker here; on a cluster, enough jobs to keep every slot busy.
    fn in_flight(&self) -> usize {
        match self {
            Source::Local { threads, .. } => *threads,
            Source::Cluster { jobs, .. } => *jobs,
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
            Source::Local { plan, .. } => {
                let stream = plan.execute(todo_index, local.task_ctx())?;
                let file = parts.out.staging_parquet(&name, staging::schema())?;
                // Featurization is CPU work: its own task, so that partitions run in parallel.
                let task = async move { staging::write(file, stream, progress.as_ref()).await };
                tokio::spawn(tracing::Instrument::in_current_span(task))
                    .await
                    .map_err(JobError::task)?
            }
            Source::Cluster { remote, input, .. } => {
                // The partition's rows travel inside the plan; the executors write the staged file.
                let range = parts.ranges[part].clone();
                let images = cluster::values(remote, &input.slice(range.start, range.len()))?;
                cluster::write(remote, parts.out, staging::staged_rows(images, remote)?, &name).await?;
                progress.advance(range.len() as u64);
                staging::count_failed(local, vec![parts.staged_url(part)]).await
            }
        }
    }
}

/// Featurizes and stages the partitions in `todo`, reporting each staged partition on `staged`.
async fn stage_partitions(
    ctx: &SessionContext,
    source: &Source<'_>,
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
        .buffer_unordered(source.in_flight())
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

/// One plan partition per manifest partition in `todo`: the staged rows of its images.
async fn local_plan(
    ctx: &SessionContext,
    settings: &FeaturizeSettings,
    parts: &Partitions<'_>,
    input: &RecordBatch,
    todo: &[usize],
) -> Result<Arc<dyn ExecutionPlan>, JobError> {
    // Rows per record batch: enough to amortise per-batch overhead, and whole model batches.
    let per_batch = settings.batch_size.max(ROWS_PER_BATCH);
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
    let plan = staging::staged_rows(ctx.table("images").await?, ctx)?
        .create_physical_plan()
        .await?;
    assert_eq!(
        plan.output_partitioning().partition_count(),
        todo.len(),
        "one plan partition per manifest partition"
    );
    Ok(plan)
}
