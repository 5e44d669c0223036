//! Parquet output: each file is written under a temporary name and renamed into place when complete, so a
//! reader (or a resumed run) never sees half a file.

use std::fs::File;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use futures::StreamExt;

use crate::job::JobError;

/// The name of partition `index`'s file: fixed, so retries and resumed runs write the same names.
pub fn part_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build()
}

/// An open Parquet file that becomes visible at `path` only on [`AtomicParquet::commit`].
pub struct AtomicParquet {
    path: PathBuf,
    temp: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
}

impl AtomicParquet {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self, JobError> {
        let temp = path.with_extension("parquet.tmp");
        let file = File::create(&temp).map_err(|e| JobError::io(&temp, e))?;
        let writer = ArrowWriter::try_new(file, schema, Some(properties()))?;
        Ok(AtomicParquet {
            path: path.to_path_buf(),
            temp,
            writer,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), JobError> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch)?;
        Ok(())
    }

    /// Finishes the file, syncs it and renames it into place. Returns the number of rows.
    pub fn commit(self) -> Result<u64, JobError> {
        let file = self.writer.into_inner()?;
        file.sync_all().map_err(|e| JobError::io(&self.temp, e))?;
        std::fs::rename(&self.temp, &self.path).map_err(|e| JobError::io(&self.path, e))?;
        Ok(self.rows)
    }
}

/// Writes a whole stream to `path` atomically.
pub async fn write_stream(
    path: &Path,
    mut stream: SendableRecordBatchStream,
) -> Result<u64, JobError> {
    let mut file = AtomicParquet::create(path, stream.schema())?;
    while let Some(batch) = stream.next().await {
        file.write(&batch?)?;
    }
    file.commit()
}

/// Writes batches already in memory to `path` atomically.
pub fn write_batches(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<u64, JobError> {
    let mut file = AtomicParquet::create(path, schema)?;
    for batch in batches {
        file.write(batch)?;
    }
    file.commit()
}
