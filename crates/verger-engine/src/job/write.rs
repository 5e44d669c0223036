//! The write stage: the errors file, then each staged partition projected with the fitted PCA model and
//! written as `result/part-N.parquet`, here or on the cluster's executors.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::dataframe::DataFrame;
use datafusion::execution::FunctionRegistry;
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::{col, SessionContext};
use futures::{StreamExt, TryStreamExt};
use verger_pca::PcaModel;

use super::cluster;
use super::featurize::Where;
use super::partitions::Partitions;
use super::staging::{self, featurized};
use crate::error::JobError;
use crate::fault;
use crate::featurize::{field, FeaturizeSettings};
use crate::io::output::OutputStore;
use crate::io::output_file::OutputFileTable;
use crate::layout;
use crate::pca::PcaProjectUdf;
use crate::progress::Progress;

/// Writes every failed row, sorted by path, to `errors/part-00000.parquet` (empty when none failed); returns
/// their number.
pub async fn errors(ctx: &SessionContext, out: &OutputStore, parts: &Partitions<'_>) -> Result<u64, JobError> {
    let failed = |group| async move {
        Ok(staging::read(ctx, group)
            .await?
            .filter(featurized(field::ERROR_STAGE).is_not_null())?
            .select(vec![
                col("path"),
                featurized(field::ERROR_STAGE).alias("stage"),
                featurized(field::ERROR_MESSAGE).alias("message"),
            ])?)
    };
    let staged = parts.all_staged();
    let schema = Arc::new(
        failed(staged.iter().take(1).cloned().collect())
            .await?
            .schema()
            .as_arrow()
            .clone(),
    );
    // Gathered a group of staged files at a time, then sorted together: only the failed rows are held.
    let rows: Vec<RecordBatch> = crate::context::grouped(&staged, failed).try_collect().await?;
    let batches = ctx
        .read_table(Arc::new(MemTable::try_new(schema.clone(), vec![rows])?))?
        .sort(vec![col("path").sort(true, false)])?
        .collect()
        .await?;
    Ok(out
        .write_batches(&layout::file(layout::ERRORS, &layout::part_name(0)), schema, &batches)
        .await?)
}

/// What the result files say of the features in their metadata: the precision and device they were computed
/// in, the model, and verger's version.
pub fn result_metadata(settings: &FeaturizeSettings) -> Vec<(String, String)> {
    [
        ("verger.precision", settings.precision.to_string()),
        ("verger.device", settings.device.to_string()),
        ("verger.model_sha256", settings.model.sha256.clone()),
        ("verger.version", env!("CARGO_PKG_VERSION").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Projects each staged partition and writes `result/part-N.parquet` with `metadata` ([`result_metadata`]),
/// here or on the cluster's executors; returns the number of rows written.
pub async fn results(
    ctx: &SessionContext,
    place: Where<'_>,
    parts: &Partitions<'_>,
    model: &Arc<PcaModel>,
    metadata: &[(String, String)],
    progress: Arc<dyn Progress>,
) -> Result<u64, JobError> {
    let (cluster, in_flight) = match place {
        // Two files per worker: one file's reading and planning overlap another's projection.
        Where::Here { threads } => (None, 2 * threads),
        Where::Cluster { remote, jobs } => (Some(remote), jobs),
    };
    for context in std::iter::once(ctx).chain(cluster) {
        crate::context::register_model(context, model.clone());
    }
    let rows: Vec<u64> = futures::stream::iter(0..parts.count())
        .map(|i| {
            let progress = progress.clone();
            let metadata = metadata.to_vec();
            async move {
                let name = parts.result(i);
                let rows = match cluster {
                    None => {
                        let plan = projected(ctx, staging::read(ctx, vec![parts.staged_url(i)]).await?)?
                            .create_physical_plan()
                            .await?;
                        let (task_ctx, out) = (ctx.task_ctx(), parts.out.clone());
                        let task = async move {
                            let stream = execute_stream(plan, task_ctx)?;
                            Ok::<u64, JobError>(out.write_stream_with(&name, stream, &metadata).await?)
                        };
                        tokio::spawn(tracing::Instrument::in_current_span(task))
                            .await
                            .map_err(JobError::task)??
                    }
                    Some(remote) => {
                        let staged = OutputFileTable {
                            file: parts.out.shared_file(&parts.staged(i), None),
                            schema: staging::schema(),
                        };
                        let rows = projected(remote, remote.read_table(Arc::new(staged))?)?;
                        cluster::write(remote, parts.out, rows, &name, &metadata).await?
                    }
                };
                progress.advance(1);
                Ok::<u64, JobError>(rows)
            }
        })
        .buffer_unordered(in_flight.max(1))
        .map(|rows| {
            crate::report::release_free_memory();
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
