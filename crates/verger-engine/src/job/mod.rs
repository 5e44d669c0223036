//! `verger run` as its stages: claim the output → list (manifest) → featurize (staging, with the PCA
//! statistics aggregated meanwhile) → errors → PCA fit → project and write → commit check → report →
//! `_SUCCESS`, on an embedded DataFusion context, or with featurization and writing on a cluster.
//!
//! Featurized rows first go to a staging folder, one Parquet file per manifest partition, because PCA needs
//! two passes (fit on everything, then project). Every file is committed atomically, `_SUCCESS` last, on the
//! local disk and on object stores alike ([`OutputStore`]), and only one run writes an output at a time
//! ([`OutputClaim`]).

pub mod cache;
mod cluster;
mod featurize;
mod manifest;
mod partitions;
mod pca_fit;
mod staging;
mod verify;
mod write;

use std::sync::Arc;

use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

pub use manifest::list_images;

use self::cache::{CacheSummary, FeatureCache, Identity};
use self::featurize::{Budget, Where};
use self::manifest::ListSettings;
use self::partitions::Partitions;
use crate::config::JobConfig;
use crate::error::JobError;
use crate::fault;
use crate::io::claim::OutputClaim;
use crate::io::output::{Admit, OutputStore};
use crate::io::store::{bucket_regions, BucketRegion};
use crate::io::StoreError;
use crate::layout;
use crate::progress::{Progress, Stop};
use crate::pseudonym::Pseudonymizer;
use crate::report::{page, Counts, PcaSummary, Pricing, Report, Stopwatch};
use crate::saved_pca::SavedPca;

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub report: Report,
}

/// Runs the whole job on an embedded DataFusion context; with `cluster` (a context connected to a cluster),
/// featurization and writing run there, one cluster job per partition, and the rest here.
///
/// Commit order: manifest, staged partitions, errors, PCA model, result partitions, report (JSON, then page),
/// `_SUCCESS`. Every file is atomic, so a run killed anywhere resumes from what it committed, with the same
/// partitions.
pub async fn run_job(
    config: &JobConfig,
    progress: Arc<dyn Progress>,
    cluster: Option<SessionContext>,
    stop: &Stop,
) -> Result<JobOutcome, JobError> {
    // An output that holds what the run reads would be cleaned or replaced under it.
    let mut reads = vec![
        ("the input", config.input.as_str()),
        ("the model", &config.featurize.model.location),
    ];
    reads.extend(config.cache.as_deref().map(|c| ("the cache", c)));
    reads.extend(config.pca_model.as_deref().map(|p| ("the PCA model", p)));
    crate::io::output::refuse_overlap(&config.output, &reads)?;
    // Where every bucket is, before any byte moves: every location the run reads or writes.
    let mut locations: Vec<&str> = reads.iter().map(|(_, location)| *location).collect();
    locations.push(&config.output);
    let residency = bucket_regions(&locations, &config.featurize.store).await?;
    if config.featurize.store.encryption.is_some() && !config.output.starts_with("s3://") {
        return Err(StoreError::Client(
            "server-side encryption applies to outputs in object stores; a local output is as encrypted as its disk"
                .into(),
        )
        .into());
    }
    // The models are fetched and verified before anything is written or any image is read.
    let given_pca = match &config.pca_model {
        Some(location) => Some(pca_fit::load_given(
            location,
            &config.featurize.store,
            &config.featurize.model.sha256,
        )?),
        None => None,
    };
    // Priced before anything runs: a price table that cannot price the run stops it here.
    let pricing = Pricing::new(&config.cost)?;
    let settings = config.featurize.clone();
    // On a cluster the executors run the model (on their devices): here it is only verified.
    let on_cluster = cluster.is_some();
    tokio::task::spawn_blocking(move || match on_cluster {
        true => settings.verified_model().map(drop),
        false => settings.featurizers().map(drop),
    })
    .await
    .map_err(JobError::task)??;
    let pseudonymizer = match &config.pseudonymize_key {
        Some(key) => Some(Arc::new(Pseudonymizer::from_file(key).map_err(JobError::Pseudonymize)?)),
        None => None,
    };
    // A folder that is not a cache is refused before the output is touched.
    let cache = match &config.cache {
        Some(location) => {
            let identity = Identity::of(&config.featurize)?;
            let (store, verify) = (&config.featurize.store, config.verify_cache);
            Some(FeatureCache::open(location, store, identity, verify, pseudonymizer.clone()).await?)
        }
        None => None,
    };
    let out = OutputStore::open(&config.output, &config.featurize.store)?;
    // Checked before the claim too, so a refused output (a user's folder) is not even claimed.
    out.admit(&layout::RUN, admit_mode(config)).await?;
    let claim = OutputClaim::take(&out, config.lease_ttl_s).await?;
    let run = run_claimed(
        config,
        &out,
        &claim,
        progress,
        cluster.as_ref(),
        Inputs {
            residency,
            given_pca,
            pricing,
            cache,
            pseudonymizer,
        },
    );
    // Dropping the run on a stop request cancels its tasks; the staged partitions are complete files (each
    // committed by rename), so a resumed run reuses them, and releasing the claim lets it start at once.
    // A run that lost its claim (its lease taken over or expired) stops at once: nothing more is written.
    let outcome = tokio::select! {
        outcome = run => outcome,
        () = stop.requested() => Err(JobError::Interrupted(out.display().to_string())),
        lost = claim.lost() => Err(lost.into()),
    };
    claim.release().await;
    outcome
}

/// What a run found out before claiming its output.
struct Inputs {
    residency: Vec<BucketRegion>,
    given_pca: Option<(SavedPca, Vec<u8>)>,
    pricing: Pricing,
    cache: Option<FeatureCache>,
    pseudonymizer: Option<Arc<Pseudonymizer>>,
}

async fn run_claimed(
    config: &JobConfig,
    out: &OutputStore,
    claim: &OutputClaim,
    progress: Arc<dyn Progress>,
    cluster: Option<&SessionContext>,
    inputs: Inputs,
) -> Result<JobOutcome, JobError> {
    let Inputs {
        residency,
        given_pca,
        pricing,
        mut cache,
        pseudonymizer,
    } = inputs;
    prepare_output(out, config).await?;
    let ctx = crate::context::local(config.threads, &config.featurize);
    out.register(&ctx);
    let place = || match cluster {
        Some(remote) => Where::Cluster {
            remote,
            jobs: config.cluster_jobs,
        },
        None => Where::Here {
            threads: config.threads,
        },
    };
    let mut clock = Stopwatch::start(progress);

    let listing = ListSettings {
        input: &config.input,
        globs: &config.globs,
        store: &config.featurize.store,
        partition_rows: config.partition_rows,
        resume: config.resume,
        identity: manifest::RunIdentity::of(
            &config.input,
            &config.globs,
            &config.featurize,
            pseudonymizer.as_deref(),
        ),
        keep_images: cache.is_some(),
    };
    let manifest = clock
        .stage("list", None, manifest::load_or_list(&listing, out, pseudonymizer))
        .await?;
    // Without a cache the listing lives on in the committed manifest only, read a partition at a time.
    crate::report::release_free_memory_now();
    let listed = manifest.rows.count() as u64;
    let parts = Partitions::new(out, manifest.rows.count(), manifest.partition_rows);
    if let Some(cache) = cache.as_mut() {
        clock.stage("cache_load", None, cache.load(config.threads)).await?;
    }

    let budget = Budget::new(config.max_errors.map(|b| b.limit(listed)));
    let cached = match (cache.as_mut(), &manifest.images) {
        (Some(cache), Some(images)) => Some(featurize::Cached {
            cache,
            images,
            threads: config.threads,
        }),
        _ => None,
    };
    let featurizing = featurize::run(
        &ctx,
        place(),
        &config.featurize,
        &parts,
        &manifest.rows,
        cached,
        &budget,
        clock.progress(),
    );
    let stats = clock.stage("featurize", Some(listed), featurizing).await?;
    drop(manifest);
    crate::report::release_free_memory_now();
    fault::pause_point("featurized").await;
    verify::staged(&parts).await?;
    let failed = staging::count_failed(&ctx, parts.all_staged()).await?;
    budget.check(failed)?;
    clock.stage("errors", None, write::errors(&ctx, out, &parts)).await?;
    fault::checkpoint("errors");
    // The fit's matrices then start from a trimmed heap, not on top of the errors query's freed buffers.
    crate::report::release_free_memory_now();

    let given = given_pca.is_some();
    let mut drift = None;
    let model = match given_pca {
        // Projected into an existing basis, saved as given; the statistics tell how far a refit would turn it.
        Some((saved, bytes)) => {
            pca_fit::save_given(out, bytes).await?;
            drift = pca_fit::drift(&saved.model, &stats);
            Arc::new(saved.model)
        }
        None => {
            let sha256 = &config.featurize.model.sha256;
            let fitting = pca_fit::fit_and_save(out, &stats, config.components, config.center, sha256);
            match clock.stage("pca_fit", None, fitting).await {
                Ok(model) => model,
                Err(e @ JobError::NothingFeaturized(_)) => {
                    // Nothing to fit or write: the report still says what happened, and the run fails.
                    let counts = Counts {
                        listed,
                        featurized: 0,
                        failed,
                    };
                    let mut report = Report::new(config, &clock, counts, None, &pricing);
                    report.buckets = residency;
                    report.cache = finish(cache).await?;
                    write_report(out, &report).await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    };
    drop(stats);
    fault::checkpoint("pca");

    let metadata = write::result_metadata(&config.featurize);
    let writing = write::results(&ctx, place(), &parts, &model, &metadata, clock.progress());
    let featurized = clock
        .stage("project_write", Some(parts.count() as u64), writing)
        .await?;
    fault::pause_point("written").await;
    // The commit check and the report page then start from a trimmed heap, not on top of the last written
    // partitions' freed buffers (the late peak of large runs was per-file costs: see `context::grouped`).
    crate::report::release_free_memory_now();

    let counts = Counts {
        listed,
        featurized,
        failed,
    };
    clock
        .stage("commit_check", None, verify::committed(&ctx, &parts, &counts))
        .await?;
    crate::report::release_free_memory_now();
    let mut summary = PcaSummary::of(&model, given);
    summary.drift_degrees = drift;
    let mut report = Report::new(config, &clock, counts, Some(summary), &pricing);
    report.buckets = residency;
    report.cache = finish(cache).await?;
    report.versions.pca_model_sha256 = Some(hex::encode(Sha256::digest(out.get(layout::PCA_MODEL).await?)));
    write_report(out, &report).await?;
    fault::checkpoint("report");
    claim.confirm().await?;
    out.put(layout::SUCCESS, Vec::new()).await?;
    out.remove_all(layout::STAGING).await?;
    Ok(JobOutcome { report })
}

/// What the run did with its cache, if it has one, once the cache's own writes are done.
async fn finish(cache: Option<FeatureCache>) -> Result<Option<CacheSummary>, JobError> {
    match cache {
        Some(cache) => Ok(Some(cache.finish().await?)),
        None => Ok(None),
    }
}

/// Writes `report.json`, then the page from it.
async fn write_report(out: &OutputStore, report: &Report) -> Result<(), JobError> {
    out.put(layout::REPORT, report.to_json()).await?;
    page::write(out, report).await
}

/// What the run may do with an output that holds files.
fn admit_mode(config: &JobConfig) -> Admit {
    match (config.resume, config.overwrite) {
        (true, _) => Admit::Resume,
        (false, true) => Admit::Replace,
        (false, false) => Admit::Empty,
    }
}

/// Refuses an output that holds something, unless resuming an unfinished run there or replacing a run's.
async fn prepare_output(out: &OutputStore, config: &JobConfig) -> Result<(), JobError> {
    match admit_mode(config) {
        Admit::Replace => out.replace(&layout::RUN).await?,
        mode => {
            out.admit(&layout::RUN, mode).await?;
            if mode == Admit::Resume && out.exists(layout::SUCCESS).await? {
                return Err(JobError::AlreadyComplete(out.display().to_string()));
            }
        }
    }
    Ok(out.remove_unfinished_files()?)
}
