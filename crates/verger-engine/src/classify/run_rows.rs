//! The rows of a finished run, read for training, evaluation and neighbours.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, Float32Type, Float64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{col, ParquetReadOptions};

use super::ClassifyError;
use crate::io::output::OutputStore;
use crate::io::store::StoreOptions;
use crate::layout;
use crate::saved_pca::SavedPca;

/// A finished run's result rows, sorted by path.
pub struct RunRows {
    pub paths: Vec<String>,
    pub labels: Vec<String>,
    /// `k` values a row, row-major.
    pub pca: Vec<f64>,
    pub k: usize,
    /// 1280 values a row, when asked for.
    pub features: Option<Vec<f64>>,
    pub pca_model: SavedPca,
    /// `pca/model.json` as the run saved it.
    pub pca_bytes: Vec<u8>,
}

impl RunRows {
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The labels of the rows, sorted, each once: the classes a classifier tells apart.
    pub fn classes(&self) -> Vec<String> {
        let mut classes = self.labels.clone();
        classes.sort();
        classes.dedup();
        classes
    }

    /// Each row's label as its index in `classes` (which holds every label of the rows: [`RunRows::classes`]).
    pub fn label_indices(&self, classes: &[String]) -> Vec<usize> {
        self.labels
            .iter()
            .map(|l| classes.binary_search(l).expect("a class of the rows"))
            .collect()
    }
}

/// Reads the result of the finished run `run` (a folder or `s3://`), with the 1280-d features if `features`.
pub async fn read(run: &str, store: &StoreOptions, features: bool) -> Result<RunRows, ClassifyError> {
    let failed = |reason: String| ClassifyError::Run {
        run: run.to_string(),
        reason,
    };
    let (_, pca_bytes, pca_model) = pca_model(run, store).await?;
    let mut columns = vec![col("path"), col("label"), col("pca_features")];
    if features {
        columns.push(col("features"));
    }
    let batches = result(run, store)
        .await?
        .select(columns)?
        .sort(vec![col("path").sort(true, false)])?
        .collect()
        .await?;
    let mut rows = RunRows {
        paths: Vec::new(),
        labels: Vec::new(),
        pca: Vec::new(),
        k: pca_model.model.k,
        features: features.then(Vec::new),
        pca_model,
        pca_bytes,
    };
    for batch in &batches {
        rows.paths.extend(strings(batch, 0)?);
        rows.labels.extend(strings(batch, 1)?);
        extend_rows::<Float64Type>(batch, 2, rows.k, &mut rows.pca)
            .map_err(|e| failed(format!("pca_features: {e}")))?;
        if let Some(all) = rows.features.as_mut() {
            extend_rows::<Float32Type>(batch, 3, verger_model::FEATURE_DIM, all)
                .map_err(|e| failed(format!("features: {e}")))?;
        }
    }
    Ok(rows)
}

/// The finished run `run`'s output, its `pca/model.json` as saved and parsed.
pub async fn pca_model(run: &str, store: &StoreOptions) -> Result<(OutputStore, Vec<u8>, SavedPca), ClassifyError> {
    let out = finished(run, store).await?;
    let bytes = out.get(layout::PCA_MODEL).await?.to_vec();
    let model = SavedPca::from_json(&bytes, layout::PCA_MODEL).map_err(|reason| ClassifyError::Run {
        run: run.to_string(),
        reason,
    })?;
    Ok((out, bytes, model))
}

/// Every result row of the finished run `run` (all columns, in no particular order), to select from.
pub async fn result(run: &str, store: &StoreOptions) -> Result<DataFrame, ClassifyError> {
    let out = finished(run, store).await?;
    let files = out.parquet_urls(layout::RESULT).await?;
    if files.is_empty() {
        return Err(ClassifyError::Run {
            run: run.to_string(),
            reason: "no result files".into(),
        });
    }
    let ctx = crate::context::reader(1);
    out.register(&ctx);
    Ok(ctx.read_parquet(files, ParquetReadOptions::default()).await?)
}

/// `run`'s output, refused unless the run finished (`_SUCCESS`).
async fn finished(run: &str, store: &StoreOptions) -> Result<OutputStore, ClassifyError> {
    let out = OutputStore::open(run, store)?;
    if !out.exists(layout::SUCCESS).await? {
        return Err(ClassifyError::Run {
            run: run.to_string(),
            reason: "not a finished verger run (no _SUCCESS)".into(),
        });
    }
    Ok(out)
}

/// Column `i` of `batch` (any string type) as strings, nulls as empty.
pub(crate) fn strings(batch: &RecordBatch, i: usize) -> Result<Vec<String>, ArrowError> {
    let column = cast(batch.column(i), &DataType::Utf8)?;
    Ok(column
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

/// Appends list column `i` of `batch` to `out` as float64, row after row, each row exactly `len` values.
pub(super) fn extend_rows<T>(batch: &RecordBatch, i: usize, len: usize, out: &mut Vec<f64>) -> Result<(), String>
where
    T: ArrowPrimitiveType,
    T::Native: Into<f64>,
{
    let list = batch.column(i).as_list::<i32>();
    for row in 0..list.len() {
        let values = list.value(row);
        let values = values.as_primitive::<T>();
        if values.len() != len {
            return Err(format!("a row has {} values where {len} are expected", values.len()));
        }
        out.extend(values.values().iter().map(|&v| v.into()));
    }
    Ok(())
}
