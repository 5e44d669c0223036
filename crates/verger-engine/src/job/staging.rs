//! The staging format: featurized rows wait in `_staging/part-N.parquet` (one file per manifest partition)
//! between featurization and the PCA projection, since PCA needs two passes. Every stage that reads or writes
//! staged rows goes through here.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::dataframe::DataFrame;
use datafusion::execution::{FunctionRegistry, SendableRecordBatchStream};
use datafusion::functions::core::expr_ext::FieldAccessor;
use datafusion::prelude::{col, Expr, ParquetReadOptions, SessionContext};
use futures::{StreamExt, TryStreamExt};
use verger_listing::ImageList;

use crate::error::JobError;
use crate::featurize::{field, result_type, FeaturizeUdf};
use crate::io::output::{OutputStore, ParquetObject};
use crate::progress::Progress;
use crate::pseudonym::Pseudonymizer;

/// The staged column holding `featurize`'s result.
pub const FEATURIZED: &str = "featurized";

/// Staged rows: `path` (as shared), `label`, and `featurize`'s result as is.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new(FEATURIZED, result_type(), true),
    ]))
}

/// Field `name` of a staged row's featurization result.
pub fn featurized(name: &str) -> Expr {
    col(FEATURIZED).field(name)
}

/// The rows featurization starts from: each image's `path`, `label` and `shared_path`, the path as the shared
/// outputs show it (pseudonymized here, so that the key never enters a plan). The manifest's own columns, not
/// copies of them.
pub fn input(images: &ImageList, pseudonymizer: Option<&Pseudonymizer>) -> Result<RecordBatch, JobError> {
    let manifest = images.batch();
    let shared = match pseudonymizer {
        Some(p) => super::manifest::pseudonyms(images, p),
        None => manifest.column(0).clone(),
    };
    let columns: Vec<ArrayRef> = vec![manifest.column(0).clone(), manifest.column(1).clone(), shared];
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("shared_path", DataType::Utf8, false),
    ]));
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The rows staging files are made of ([`schema`]). The struct stays whole: taking it apart here would have
/// DataFusion inline `featurize` into each field's expression, and featurize every image thrice.
pub fn staged_rows(images: DataFrame, ctx: &SessionContext) -> Result<DataFrame, JobError> {
    let featurize = ctx.udf(FeaturizeUdf::NAME)?;
    Ok(images.select(vec![
        col("shared_path").alias("path"),
        col("label"),
        featurize.call(vec![col("path")]).alias(FEATURIZED),
    ])?)
}

/// Writes staged rows and commits them; returns the failed rows.
pub async fn write(
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
        file.write(&RecordBatch::try_new(schema(), batch.columns().to_vec())?)
            .await?;
        progress.advance(batch.num_rows() as u64);
    }
    file.commit().await?;
    Ok(failed)
}

/// Staged file `name` of `out`, read whole.
pub async fn read_file(out: &OutputStore, name: &str) -> Result<RecordBatch, JobError> {
    Ok(out.read_batch(name).await?)
}

pub async fn read(ctx: &SessionContext, files: Vec<String>) -> Result<DataFrame, JobError> {
    Ok(ctx.read_parquet(files, ParquetReadOptions::default()).await?)
}

/// The rows of `staged` that could not be featurized.
pub async fn count_failed(ctx: &SessionContext, staged: Vec<String>) -> Result<u64, JobError> {
    let failed = crate::context::grouped(&staged, |group| async move {
        Ok(read(ctx, group)
            .await?
            .filter(featurized(field::ERROR_STAGE).is_not_null())?
            .select(vec![col("path")])?)
    });
    failed
        .try_fold(0, |n, batch| async move { Ok(n + batch.num_rows() as u64) })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::featurize::FeaturizeSettings;
    use datafusion::physical_plan::displayable;

    #[tokio::test]
    async fn staged_rows_featurize_each_image_once() {
        let mut settings = FeaturizeSettings::new("model.onnx");
        settings.max_pixels = 1;
        let ctx = crate::context::local(2, &settings);
        let listed = ImageList::from_iter([verger_listing::ImageEntry {
            uri: "file:///a/b.jpg",
            label: "b",
            size: 1,
            modified_ms: 0,
            etag: None,
        }]);
        let images = ctx.read_batch(input(&listed, None).unwrap()).unwrap();
        let plan = staged_rows(images, &ctx).unwrap().create_physical_plan().await.unwrap();
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        assert_eq!(shown.matches("featurize(").count(), 1, "{shown}");
        assert_eq!(plan.schema().fields().len(), schema().fields().len());
    }
}
