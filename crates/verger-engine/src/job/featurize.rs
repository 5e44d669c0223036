//! The featurize stage: every manifest partition not yet staged is read, decoded, resized and run through the
//! model (the `featurize` function), here or on a cluster, and staged; meanwhile the PCA statistics of the
//! staged partitions are aggregated, so that fitting overlaps inference.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::{interleave, take, take_record_batch};
use datafusion::arrow::datatypes::Float32Type;
use datafusion::datasource::MemTable;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinHandle;
use verger_listing::ImageList;
use verger_pca::PcaStats;

use super::cache::{self, FeatureCache, Found};
use super::manifest::ManifestRows;
use super::partitions::{self, Partitions};
use super::{cluster, pca_fit, staging};
use crate::error::JobError;
use crate::fault;
use crate::featurize::FeaturizeSettings;
use crate::io::StoreError;
use crate::layout;
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
#[derive(Clone, Copy)]
pub enum Where<'a> {
    /// On this machine's `threads` workers.
    Here { threads: usize },
    /// On a cluster, with `jobs` cluster jobs in flight.
    Cluster { remote: &'a SessionContext, jobs: usize },
}

impl Where<'_> {
    /// Partitions worked on at once: one per worker here; on a cluster, its jobs in flight.
    fn in_flight(&self) -> usize {
        match *self {
            Where::Here { threads } => threads.max(1),
            Where::Cluster { jobs, .. } => jobs.max(1),
        }
    }
}

/// Featurizes every partition not yet staged, and meanwhile aggregates the PCA statistics of each group of
/// staged partitions ([`pca_fit::GROUP`]). Returns the statistics of all featurized rows, merged in partition
/// order: the same bits however the work was scheduled or resumed (partitions staged by an earlier attempt
/// are aggregated from their files too).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: &SessionContext,
    place: Where<'_>,
    settings: &FeaturizeSettings,
    parts: &Partitions<'_>,
    manifest: &ManifestRows,
    cache: Option<Cached<'_>>,
    budget: &Budget,
    progress: Arc<dyn Progress>,
) -> Result<PcaStats, JobError> {
    let todo = parts.todo().await?;
    let done_rows: usize = (0..parts.count())
        .filter(|i| !todo.contains(i))
        .map(|i| parts.ranges[i].len())
        .sum();
    progress.advance(done_rows as u64);

    // With a cache, the statistics of the partitions to stage come from it ([`FeatureCache::plan_stats`]);
    // the aggregator sums those of the partitions staged before, read from their files.
    let done: Vec<usize> = (0..parts.count()).filter(|i| todo.binary_search(i).is_err()).collect();
    let (aggregated, done) = match (&cache, todo.is_empty()) {
        (Some(_), false) => (
            done.iter().map(|&i| parts.staged_url(i)).collect(),
            (0..done.len()).collect(),
        ),
        _ => (parts.all_staged(), done),
    };
    let (staged_tx, staged_rx) = tokio::sync::mpsc::unbounded_channel();
    for part in done {
        staged_tx.send(part).expect("receiver alive");
    }
    let sequential = crate::context::local(1, settings);
    parts.out.register(&sequential);
    let aggregating = pca_fit::aggregate_staged(sequential, aggregated, staged_rx);
    let aggregator = tokio::spawn(tracing::Instrument::in_current_span(aggregating));

    let featurized = match (todo.is_empty(), cache) {
        (true, _) => Ok(None),
        (false, Some(cache)) => {
            drop(staged_tx);
            // The cache's lookups take the listing whole, so its input is whole too.
            let input = manifest.input_of(cache.images)?;
            let todo = Todo {
                parts,
                input: &input,
                partitions: &todo,
            };
            stage_with_cache(ctx, place, settings, todo, cache, budget, progress)
                .await
                .map(Some)
        }
        (false, None) => {
            let source = source(place, settings, Rows::Manifest(manifest));
            stage_partitions(ctx, &source, parts, &todo, budget, progress, staged_tx)
                .await
                .map(|()| None)
        }
    };
    match featurized {
        Ok(from_cache) => {
            let mut stats = aggregator.await.map_err(JobError::task)??;
            if let Some(from_cache) = from_cache {
                stats.merge(&from_cache);
            }
            Ok(stats)
        }
        Err(e) => {
            aggregator.abort();
            Err(e)
        }
    }
}

/// A feature cache for the run, with the manifest's images (their listings are the cache's keys).
pub struct Cached<'a> {
    pub cache: &'a mut FeatureCache,
    pub images: &'a ImageList,
    /// Images read and hashed at once.
    pub threads: usize,
}

/// The partitions to stage, of `input` cut by `parts`.
struct Todo<'a> {
    parts: &'a Partitions<'a>,
    input: &'a RecordBatch,
    partitions: &'a [usize],
}

/// Stages the partitions in `todo` with a feature cache: their images are hashed (or known from their
/// listing), those the cache lacks are featurized once per content (staged in [`layout::FRESH`] and added to
/// the cache as each fresh partition is staged, so an interrupted run keeps them), then each partition is
/// assembled from the cache and the fresh rows, in manifest order: the rows a run without the cache stages.
/// Returns the PCA statistics of the staged rows, merged from those the cache stores.
async fn stage_with_cache(
    ctx: &SessionContext,
    place: Where<'_>,
    settings: &FeaturizeSettings,
    todo: Todo<'_>,
    cached: Cached<'_>,
    budget: &Budget,
    progress: Arc<dyn Progress>,
) -> Result<PcaStats, JobError> {
    let Cached { cache, images, threads } = cached;
    let Todo {
        parts,
        input,
        partitions,
    } = todo;
    let rows: Vec<usize> = partitions.iter().flat_map(|&p| parts.ranges[p].clone()).collect();
    let hashes = cache.hashes(images, &rows, &settings.store, threads).await?;
    let (found, fresh) = cache.resolve(&hashes);

    // The images the cache lacks, featurized as a run without the cache would, into partitions of their own.
    let out = parts.out;
    out.remove_all(layout::FRESH).await?;
    let fresh_rows = UInt64Array::from_iter_values(fresh.iter().map(|&at| rows[at] as u64));
    let fresh_input = take_record_batch(input, &fresh_rows)?;
    let fresh_ranges = partitions::fresh_ranges(fresh.len(), parts.partition_rows(), place.in_flight());
    let fresh_parts = Partitions::in_folder(out, layout::FRESH, fresh_ranges);
    let fresh_todo: Vec<usize> = (0..fresh_parts.count()).collect();
    let (fresh_tx, mut fresh_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let featurizing = async {
        if fresh.is_empty() {
            return Ok(());
        }
        let source = source(place, settings, Rows::Batch(&fresh_input));
        stage_partitions(
            ctx,
            &source,
            &fresh_parts,
            &fresh_todo,
            budget,
            progress.clone(),
            fresh_tx,
        )
        .await
    };
    // Each fresh partition goes to the cache as soon as it is staged; the rows the cache does not take
    // (failed, or without a content hash) are kept from its result, the others are read back from the cache.
    let caching = async {
        let mut staged = vec![false; fresh_parts.count()];
        let mut kept: Vec<ArrayRef> = Vec::new();
        let mut kept_at: HashMap<usize, (usize, usize)> = HashMap::new();
        while let Some(part) = fresh_rx.recv().await {
            let file = staging::read_file(out, &fresh_parts.staged(part)).await?;
            let result = file.column(2).as_struct().clone();
            let range = fresh_parts.ranges[part].clone();
            let cached_rows = range.clone().filter_map(|f| {
                let at = fresh[f];
                hashes[at].map(|hash| (images.get(rows[at]), hash, Some((&result, f - range.start))))
            });
            cache.add(cached_rows).await?;
            let uncached: Vec<usize> = range
                .clone()
                .filter(|&n| hashes[fresh[n]].and_then(|h| cache.position(&h)).is_none())
                .collect();
            if !uncached.is_empty() {
                let indices = UInt64Array::from_iter_values(uncached.iter().map(|&n| (n - range.start) as u64));
                for (i, &n) in uncached.iter().enumerate() {
                    kept_at.insert(n, (kept.len(), i));
                }
                kept.push(take(&result, &indices, None)?);
            }
            staged[part] = true;
        }
        Ok::<_, JobError>((staged, kept, kept_at))
    };
    let (featurized, caching) = tokio::join!(featurizing, caching);
    featurized?;
    let (staged, kept, kept_at) = caching?;
    if !staged.iter().all(|&s| s) {
        return Err(JobError::Task("a fresh partition was not staged".into()));
    }
    if !fresh.is_empty() {
        let per_image = started.elapsed().as_secs_f64() / fresh.len() as f64;
        cache.summary.saved_s = Some(per_image * cache.summary.hits as f64);
    }

    // Every partition assembled from the cache and the kept rows, each partition's cache parts read as it
    // comes (a few at a time: the cache's features are never all in memory).
    let located: Vec<Row> = found
        .iter()
        .map(|f| match *f {
            Found::Cached(part, row) => Row::Cache(part, row),
            Found::Fresh(n) => match hashes[fresh[n]].and_then(|h| cache.position(&h)) {
                Some((part, row)) => Row::Cache(part, row),
                None => {
                    let (k, i) = kept_at[&n];
                    Row::Kept(k, i)
                }
            },
        })
        .collect();
    // The staged rows by where the cache holds their features; rows that failed are not in the statistics,
    // and those the cache could not take (no content hash) are summarised from their results.
    let mut uses: HashMap<(usize, usize), u64> = HashMap::new();
    let mut extra: Vec<f32> = Vec::new();
    for row in &located {
        match *row {
            Row::Cache(part, row) => *uses.entry((part, row)).or_default() += 1,
            Row::Kept(k, i) => {
                if let Some(values) = cache::featurized(kept[k].as_struct(), i) {
                    extra.extend_from_slice(values.as_primitive::<Float32Type>().values());
                }
            }
        }
    }
    // Their statistics take the rows they need from the cache parts as the partitions read them.
    let mut stats = cache.plan_stats(
        verger_model::FEATURE_DIM,
        &uses,
        extra.len() / verger_model::FEATURE_DIM,
    );
    // Each assembled partition is written by a task of its own while the next one is read and assembled,
    // `in_flight` at most; each counts as staged (progress, fault points) once committed, in order.
    let in_flight = place.in_flight();
    let mut writing: VecDeque<(JoinHandle<Result<u64, StoreError>>, usize)> = VecDeque::new();
    let progress = progress.as_ref();
    let committed = |(task, rows): (JoinHandle<Result<u64, StoreError>>, usize)| async move {
        task.await.map_err(JobError::task)??;
        fault::checkpoint("featurize");
        progress.advance(rows as u64);
        Ok::<(), JobError>(())
    };
    let mut at = 0;
    for &part in partitions {
        let range = parts.ranges[part].clone();
        let here = &located[at..at + range.len()];
        let mut sources: Vec<ArrayRef> = Vec::new();
        let mut source_of: HashMap<usize, usize> = HashMap::new();
        for row in here {
            if let Row::Cache(p, _) = *row {
                if let std::collections::hash_map::Entry::Vacant(slot) = source_of.entry(p) {
                    slot.insert(sources.len());
                    let features = cache.part(p).await?;
                    stats.collect(p, &features);
                    sources.push(features);
                }
            }
        }
        let first_kept = sources.len();
        sources.extend(kept.iter().cloned());
        let indices: Vec<(usize, usize)> = here
            .iter()
            .map(|row| match *row {
                Row::Cache(p, r) => (source_of[&p], r),
                Row::Kept(k, i) => (first_kept + k, i),
            })
            .collect();
        let refs: Vec<&dyn Array> = sources.iter().map(|a| a.as_ref()).collect();
        let featurized = interleave(&refs, &indices)?;
        drop(sources);
        let images = input.slice(range.start, range.len());
        let batch = RecordBatch::try_new(
            staging::schema(),
            vec![images.column(2).clone(), images.column(1).clone(), featurized],
        )?;
        let mut file = out.staging_parquet(&parts.staged(part), staging::schema())?;
        let write = async move {
            file.write(&batch).await?;
            file.commit().await
        };
        // Fresh rows were counted as they were featurized.
        let fresh_here = found[at..at + range.len()]
            .iter()
            .enumerate()
            .filter(|(i, f)| matches!(f, Found::Fresh(n) if fresh[*n] == at + i))
            .count();
        let task = tokio::spawn(tracing::Instrument::in_current_span(write));
        writing.push_back((task, range.len() - fresh_here));
        if writing.len() >= in_flight {
            committed(writing.pop_front().expect("in flight")).await?;
        }
        // No trim here: each partition frees what the next one needs again (a part's features), and
        // handing those pages back only to fault them in again cost more than the assembly itself.
        at += range.len();
    }
    while let Some(write) = writing.pop_front() {
        committed(write).await?;
    }
    // Listings new to the cache whose bytes it holds (moved, touched or duplicated images).
    let aliases = found.iter().zip(&hashes).enumerate().filter_map(|(at, (f, hash))| {
        let is_first = matches!(f, Found::Fresh(n) if fresh[*n] == at);
        (!is_first).then_some(())?;
        hash.map(|h| (images.get(rows[at]), h, None))
    });
    cache.add(aliases).await?;

    cache.finish_stats(stats, &extra).await
}

/// Where a staged row's features are: (part, row) in the cache, or (array, row) of the fresh rows it did not
/// take.
#[derive(Clone, Copy)]
enum Row {
    Cache(usize, usize),
    Kept(usize, usize),
}

/// The rows partitions are cut from.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// The committed manifest, read a partition at a time.
    Manifest(&'a ManifestRows),
    /// Rows already in memory (the images a feature cache lacks).
    Batch(&'a RecordBatch),
}

impl Rows<'_> {
    async fn get(&self, range: Range<usize>) -> Result<RecordBatch, JobError> {
        match *self {
            Rows::Manifest(manifest) => manifest.input(range).await,
            Rows::Batch(batch) => Ok(batch.slice(range.start, range.len())),
        }
    }
}

/// Where partitions are featurized, and the rows they are cut from.
struct Source<'a> {
    place: Where<'a>,
    rows: Rows<'a>,
    /// Rows per record batch fed to `featurize` here.
    per_batch: usize,
}

fn source<'a>(place: Where<'a>, settings: &FeaturizeSettings, rows: Rows<'a>) -> Source<'a> {
    // Enough rows per batch to amortise per-batch overhead, and whole model batches.
    let per_batch = settings.batch_size.max(ROWS_PER_BATCH);
    Source { place, rows, per_batch }
}

impl Source<'_> {
    /// Featurizes and stages partition `part`; returns its failed rows.
    async fn stage(
        &self,
        local: &SessionContext,
        parts: &Partitions<'_>,
        part: usize,
        progress: Arc<dyn Progress>,
    ) -> Result<u64, JobError> {
        let name = parts.staged(part);
        let range = parts.ranges[part].clone();
        let input = self.rows.get(range.clone()).await?;
        match self.place {
            Where::Here { .. } => {
                let plan = local_plan(local, &input, self.per_batch).await?;
                let stream = plan.execute(0, local.task_ctx())?;
                let file = parts.out.staging_parquet(&name, staging::schema())?;
                // Featurization is CPU work: its own task, so that partitions run in parallel.
                let task = async move { staging::write(file, stream, progress.as_ref()).await };
                tokio::spawn(tracing::Instrument::in_current_span(task))
                    .await
                    .map_err(JobError::task)?
            }
            Where::Cluster { remote, .. } => {
                // The partition's rows travel inside the plan; the executors write the staged file.
                let images = cluster::values(remote, &input)?;
                cluster::write(remote, parts.out, staging::staged_rows(images, remote)?, &name, &[]).await?;
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
    futures::stream::iter(todo.iter().copied())
        .map(|part| {
            let progress = progress.clone();
            async move {
                let failed = source.stage(ctx, parts, part, progress).await?;
                Ok::<_, JobError>((part, failed))
            }
        })
        .buffer_unordered(source.place.in_flight())
        .map(|done| {
            let (part, failed) = done?;
            budget.add(failed)?;
            crate::report::release_free_memory();
            fault::checkpoint("featurize");
            // The aggregator only stops early when the job is failing anyway.
            let _ = staged.send(part);
            Ok::<(), JobError>(())
        })
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The plan that featurizes one partition's `input` into staged rows, `per_batch` rows per record batch.
async fn local_plan(
    ctx: &SessionContext,
    input: &RecordBatch,
    per_batch: usize,
) -> Result<Arc<dyn ExecutionPlan>, JobError> {
    let batches: Vec<RecordBatch> = (0..input.num_rows())
        .step_by(per_batch)
        .map(|s| input.slice(s, per_batch.min(input.num_rows() - s)))
        .collect();
    let table = MemTable::try_new(input.schema(), vec![batches])?;
    let plan = staging::staged_rows(ctx.read_table(Arc::new(table))?, ctx)?
        .create_physical_plan()
        .await?;
    assert_eq!(
        plan.output_partitioning().partition_count(),
        1,
        "one manifest partition, one plan partition"
    );
    Ok(plan)
}
