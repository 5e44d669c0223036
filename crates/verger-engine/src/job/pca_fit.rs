//! The PCA stage: statistics aggregated from staged partitions (while featurization goes on), merged in a
//! fixed order, and the model fitted from them and saved.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::SessionContext;
use verger_pca::{fit, Components, PcaModel, PcaStats};

use super::staging::{self, featurized};
use crate::error::JobError;
use crate::featurize::field;
use crate::io::output::OutputStore;
use crate::io::store::StoreOptions;
use crate::layout;
use crate::pca::PcaStatsUdaf;
use crate::saved_pca::SavedPca;

/// Consecutive partitions aggregated together into one partial of the PCA statistics: fewer, larger partials
/// save moving 13 MB states around; fixed groups keep the model independent of scheduling and `--threads`.
pub const GROUP: usize = 8;

/// Aggregates `pca_stats` over each group of [`GROUP`] consecutive staged partitions as soon as the whole
/// group is staged, one group at a time and in order, folding the partial statistics as they come: at most
/// one 13 MB partial besides the total. A single-partition context feeds rows in manifest order.
pub async fn aggregate_staged(
    sequential: SessionContext,
    staged_files: Vec<String>,
    mut staged: tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> Result<PcaStats, JobError> {
    let mut ready = vec![false; staged_files.len()];
    let mut total = PcaStats::new(verger_model::FEATURE_DIM);
    for (group, files) in staged_files.chunks(GROUP).enumerate() {
        let parts = group * GROUP..group * GROUP + files.len();
        while !ready[parts.clone()].iter().all(|&r| r) {
            let part = staged
                .recv()
                .await
                .ok_or_else(|| JobError::Task("featurization ended before every partition was staged".into()))?;
            ready[part] = true;
        }
        total.merge(&group_stats(&sequential, files.to_vec()).await?);
        crate::report::release_free_memory();
    }
    Ok(total)
}

/// The `pca_stats` aggregate over the featurized rows of some staged partitions.
async fn group_stats(sequential: &SessionContext, staged: Vec<String>) -> Result<PcaStats, JobError> {
    let pca_stats = sequential.udaf(PcaStatsUdaf::NAME)?;
    let batches = staging::read(sequential, staged)
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

/// Fits the model from the merged statistics and saves it, with the featurizer's sha256.
pub async fn fit_and_save(
    out: &OutputStore,
    stats: &PcaStats,
    components: Components,
    center: bool,
    featurizer_sha256: &str,
) -> Result<Arc<PcaModel>, JobError> {
    if stats.count() == 0 {
        return Err(JobError::NothingFeaturized(out.display().to_string()));
    }
    let saved = SavedPca {
        model: fit(stats, components, center)?,
        model_sha256: Some(featurizer_sha256.to_string()),
    };
    out.put(layout::PCA_MODEL, saved.to_json()).await?;
    tracing::info!(
        k = saved.model.k,
        explained_variance = saved.model.explained_variance(),
        "pca fitted"
    );
    Ok(Arc::new(saved.model))
}

/// A model fitted before (`--pca-model`), read and checked against the run's featurizer before any image is
/// read; returns it with its bytes as read, which the run saves unchanged.
pub fn load_given(
    location: &str,
    store: &StoreOptions,
    featurizer_sha256: &str,
) -> Result<(SavedPca, Vec<u8>), JobError> {
    let bytes = crate::io::source::read_location(location, store)?;
    let saved = SavedPca::from_json(&bytes, location).map_err(JobError::PcaModel)?;
    saved
        .check_fits(featurizer_sha256, location)
        .map_err(JobError::PcaModel)?;
    Ok((saved, bytes))
}

/// Saves the given model's bytes unchanged, so that runs projected with it share its exact text.
pub async fn save_given(out: &OutputStore, bytes: Vec<u8>) -> Result<(), JobError> {
    Ok(out.put(layout::PCA_MODEL, bytes).await?)
}

/// The principal angles between `saved`'s basis and one refit, with as many components, on `stats`; none
/// when the run's images cannot be fitted (fewer than two).
pub fn drift(saved: &PcaModel, stats: &PcaStats) -> Option<Vec<f64>> {
    let refit = fit(stats, Components::Count(saved.k), saved.center).ok()?;
    saved.principal_angles(&refit).ok()
}
