//! Features outside a job: `verger embed` writes the 1280-d features of a few images (local paths or `s3://`
//! URIs) into one Parquet file (local or `s3://`), written atomically through the output layer; [`table`]
//! returns them as one record batch for library callers (the Python package, Spark executors), for files or
//! for images already in memory. No listing, no PCA.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Float32Builder, ListBuilder, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::error::JobError;
use crate::featurize::{features_type, featurize_files, featurize_images, outcomes_to_array, FeaturizeSettings, Image};
use crate::io::output::{split_file, OutputStore};
use crate::io::source;

/// A file that could not be featurized.
#[derive(Debug, Clone)]
pub struct Failure {
    pub uri: String,
    pub stage: &'static str,
    pub message: String,
}

/// What `embed` wrote.
#[derive(Debug, Clone)]
pub struct EmbedOutcome {
    pub rows: u64,
    pub failures: Vec<Failure>,
}

/// Writes `path`, `features` for each image that could be featurized to the Parquet file `out`; returns the
/// rows written and the failures. Must run inside a multi-threaded Tokio runtime (for `s3://` images).
pub async fn embed(images: &[String], settings: &FeaturizeSettings, out: &str) -> Result<EmbedOutcome, JobError> {
    let uris: Vec<String> = images.iter().map(|l| source::uri(l)).collect::<Result<_, _>>()?;
    let featurize = {
        let settings = settings.clone();
        let uris = uris.clone();
        // Featurization is synchronous CPU work; reads from a bucket borrow this runtime meanwhile.
        tokio::task::spawn_blocking(move || featurize_files(&uris, &settings))
    };
    let outcomes = featurize.await.map_err(JobError::task)??;

    let mut paths = Vec::new();
    let mut features =
        ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new_list_field(DataType::Float32, true)));
    let mut failures = Vec::new();
    for (uri, outcome) in outcomes {
        match outcome {
            Ok(f) => {
                features.values().append_slice(&f);
                features.append(true);
                paths.push(uri);
            }
            Err((stage, message)) => failures.push(Failure { uri, stage, message }),
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("features", features_type(), true),
    ]));
    let columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(paths)), Arc::new(features.finish())];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let (folder, name) = split_file(out);
    let store = OutputStore::open(&folder, &settings.store)?;
    let rows = store.write_batches(&name, schema, &[batch]).await?;
    Ok(EmbedOutcome { rows, failures })
}

/// The features of `images`, one row each in input order: `path` (null for bytes held in memory), `features`
/// (null when the image could not be featurized), and then `error_stage` and `error` saying why. One bad image
/// never fails the others. Synchronous CPU work: call it off async threads (it reads `s3://` images through a
/// Tokio runtime it expects to find).
pub fn table(images: &[Image], settings: &FeaturizeSettings) -> Result<RecordBatch, JobError> {
    let outcomes = featurize_images(images, settings)?;
    let paths: StringArray = images
        .iter()
        .map(|image| match image {
            Image::Location(location) => Some(location.as_str()),
            Image::Encoded(_) => None,
        })
        .collect();
    // The run's own result column (features, error_stage, error_message), taken apart.
    let result = outcomes_to_array(outcomes);
    let result = result.as_struct();
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, true),
        Field::new("features", features_type(), true),
        Field::new("error_stage", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ]));
    let mut columns: Vec<ArrayRef> = vec![Arc::new(paths)];
    columns.extend(result.columns().iter().cloned());
    Ok(RecordBatch::try_new(schema, columns)?)
}
