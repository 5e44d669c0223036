//! `verger embed`: features of a few files into one Parquet file, no PCA. For debugging and ad-hoc use.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float32Builder, ListBuilder, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::featurize::{features_type, featurize_files, FeaturizeSettings};
use crate::job::JobError;

/// A file that could not be featurized.
#[derive(Debug, Clone)]
pub struct Failure {
    pub uri: String,
    pub stage: &'static str,
    pub message: String,
}

/// Writes `path`, `features` for each file that could be featurized; returns the failures.
pub fn embed_files(files: &[&Path], settings: &FeaturizeSettings, out: &Path) -> Result<Vec<Failure>, JobError> {
    let uris: Vec<String> = files
        .iter()
        .map(|p| {
            std::path::absolute(p)
                .map(|a| format!("file://{}", a.display()))
                .map_err(|e| JobError::io(p, e))
        })
        .collect::<Result<_, _>>()?;
    let mut paths = Vec::new();
    let mut features =
        ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new_list_field(DataType::Float32, true)));
    let mut failures = Vec::new();
    for (uri, outcome) in featurize_files(&uris, settings)? {
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
    let file = std::fs::File::create(out).map_err(|e| JobError::io(out, e))?;
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)?;
    writer.write(&RecordBatch::try_new(schema, columns)?)?;
    writer.close()?;
    Ok(failures)
}
