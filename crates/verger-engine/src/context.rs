//! DataFusion sessions with verger's functions: the one place a local context, a cluster client and the
//! cluster's own processes get their configuration and their functions from.

use std::future::Future;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{Stream, StreamExt, TryStreamExt};

#[cfg(feature = "codec")]
use crate::codec::Stateful;
use crate::error::JobError;
use crate::featurize::{FeaturizeSettings, FeaturizeUdf};
use crate::pca::{PcaProjectUdf, PcaStatsUdaf};

/// The bytes read from a Parquet file's end in the hope of getting its footer in one request: verger's
/// footers are a few KB (the manifest's: 12 KB at 300,000 images). DataFusion's 512 KiB default, fetched
/// for 32 files at once when a query opens a run's result files, was most of that query's heap and, freed
/// across threads' arenas, resident memory that grew with the number of files (bench/README.md).
const FOOTER_HINT_BYTES: usize = 64 << 10;

/// verger's settings on top of `config`: plain Utf8 columns (so that the Parquet written carries `string`,
/// which every reader knows), one file per partition, no information schema, footers read with a small
/// hint, and no per-file statistics gathered at planning (verger's queries read every row they plan; the
/// statistics were held for every file of the scan).
pub fn configure(config: SessionConfig, threads: usize) -> SessionConfig {
    config
        .with_target_partitions(threads.max(1))
        .with_repartition_file_scans(false)
        .with_information_schema(false)
        .with_collect_statistics(false)
        .set_bool("datafusion.execution.parquet.schema_force_view_types", false)
        .set_usize("datafusion.execution.parquet.metadata_size_hint", FOOTER_HINT_BYTES)
}

/// The bytes of Parquet footers a context keeps: enough for the manifest, which featurization reads a
/// partition at a time, far below DataFusion's 50 MiB default.
const FOOTER_CACHE_BYTES: usize = 4 << 20;

/// A runtime whose file caches do not fill with the run. A run reads each staged and result file once or
/// twice, so DataFusion's default caches (per runtime: 50 MiB of decoded Parquet footers, 20 MiB of file
/// statistics) only filled with a large run's files, memory that grew with the run up to their limits
/// (bench/README.md, 2026-12-04).
pub fn runtime() -> Arc<RuntimeEnv> {
    let caches = CacheManagerConfig::default()
        .with_metadata_cache_limit(FOOTER_CACHE_BYTES)
        .with_file_statistics_cache_limit(0);
    RuntimeEnvBuilder::new()
        .with_cache_manager(caches)
        .build_arc()
        .expect("a runtime without a memory pool or disk manager settings builds")
}

/// A DataFusion context with verger's settings for `threads` workers and [`runtime`]'s small caches, no
/// functions: for reading outputs.
pub fn reader(threads: usize) -> SessionContext {
    SessionContext::new_with_config_rt(configure(SessionConfig::new(), threads), runtime())
}

/// The files one plan reads at most when a query goes over all of a run's files. DataFusion keeps each opened
/// Parquet file's metrics (about 10 KB) until its plan is dropped, so one plan over every file of a
/// million-image run (~4,000 files) held ~40 MB at its end (bench/README.md, 2026-12-04).
pub const FILES_PER_PLAN: usize = 64;

/// The batches of `query` over `files`, planned and run [`FILES_PER_PLAN`] files at a time, group after
/// group: with a single-partition context, in the files' order. For queries whose result is a union of
/// per-file rows (filters, projections), not for sorts or aggregates across files.
pub fn grouped<'a, F, Fut>(files: &[String], query: F) -> impl Stream<Item = Result<RecordBatch, JobError>> + 'a
where
    F: Fn(Vec<String>) -> Fut + 'a,
    Fut: Future<Output = Result<DataFrame, JobError>> + 'a,
{
    let groups: Vec<Vec<String>> = files.chunks(FILES_PER_PLAN).map(<[String]>::to_vec).collect();
    futures::stream::iter(groups)
        .then(move |group| {
            let planned = query(group);
            async move { Ok::<_, JobError>(planned.await?.execute_stream().await?.map_err(JobError::from)) }
        })
        .try_flatten()
}

/// A DataFusion context for `threads` workers with verger's functions registered.
pub fn local(threads: usize, settings: &FeaturizeSettings) -> SessionContext {
    let ctx = reader(threads);
    register_functions(&ctx, settings);
    ctx
}

/// Registers `featurize` and `pca_stats` (`pca_project` is registered once a model is fitted).
pub fn register_functions(ctx: &SessionContext, settings: &FeaturizeSettings) {
    ctx.register_udf(ScalarUDF::new_from_impl(FeaturizeUdf::new(settings.clone())));
    ctx.register_udaf(AggregateUDF::new_from_impl(PcaStatsUdaf::new()));
}

/// Registers `pca_project` for a fitted model.
pub fn register_model(ctx: &SessionContext, model: Arc<verger_pca::PcaModel>) {
    ctx.register_udf(ScalarUDF::new_from_impl(PcaProjectUdf::new(model)));
}

/// The functions whose state travels with plans (`codec::StatefulUdf`): a new stateful function is one more
/// line here.
#[cfg(feature = "codec")]
pub static STATEFUL: &[Stateful] = &[Stateful::of::<FeaturizeUdf>(), Stateful::of::<PcaProjectUdf>()];

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::prelude::{col, lit, ParquetReadOptions};

    use super::*;

    #[tokio::test]
    async fn grouped_queries_return_every_files_rows_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        // More than two groups, the last one partial; two rows per file.
        let files: Vec<String> = (0..2 * FILES_PER_PLAN as i64 + 5)
            .map(|i| {
                let path = dir.path().join(format!("part-{i:05}.parquet"));
                let batch =
                    RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![2 * i, 2 * i + 1]))])
                        .unwrap();
                let mut writer =
                    ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema.clone(), None).unwrap();
                writer.write(&batch).unwrap();
                writer.close().unwrap();
                path.to_str().unwrap().to_string()
            })
            .collect();
        let ctx = reader(1);
        let ctx = &ctx;
        let query = |group| async move {
            Ok(ctx
                .read_parquet(group, ParquetReadOptions::default())
                .await?
                .filter(col("n").not_eq(lit(7i64)))?)
        };
        let batches: Vec<RecordBatch> = grouped(&files, query).try_collect().await.unwrap();
        let seen: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        let expected: Vec<i64> = (0..2 * files.len() as i64).filter(|&n| n != 7).collect();
        assert_eq!(seen, expected);

        // A failing group's error ends the stream.
        let damaged = dir.path().join("damaged.parquet");
        std::fs::write(&damaged, b"not parquet").unwrap();
        let mut with_damaged = files.clone();
        with_damaged.insert(FILES_PER_PLAN + 1, damaged.to_str().unwrap().into());
        let failed: Result<Vec<RecordBatch>, JobError> = grouped(&with_damaged, query).try_collect().await;
        assert!(failed.is_err());
    }
}
