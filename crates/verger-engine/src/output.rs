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

/// Where `path` is written before it is renamed into place: hidden (a leading dot), so that pyarrow, Spark
/// and pandas skip it when reading the folder.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes a small file atomically: temporary name, sync, rename.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), JobError> {
    let temp = temp_path(path);
    let mut file = File::create(&temp).map_err(|e| JobError::io(&temp, e))?;
    std::io::Write::write_all(&mut file, bytes).map_err(|e| JobError::io(&temp, e))?;
    file.sync_all().map_err(|e| JobError::io(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| JobError::io(path, e))
}

/// Removes temporary files a killed run left in `dir`.
pub fn remove_temp_files(dir: &Path) -> Result<(), JobError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            std::fs::remove_file(entry.path()).map_err(|e| JobError::io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// The name of partition `index`'s file: fixed, so retries and resumed runs write the same names.
pub fn part_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

fn properties() -> WriterProperties {
    WriterProperties::builder().set_compression(Compression::SNAPPY).build()
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
        let temp = temp_path(path);
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
pub async fn write_stream(path: &Path, mut stream: SendableRecordBatchStream) -> Result<u64, JobError> {
    let mut file = AtomicParquet::create(path, stream.schema())?;
    while let Some(batch) = stream.next().await {
        file.write(&batch?)?;
    }
    file.commit()
}

/// Writes batches already in memory to `path` atomically.
pub fn write_batches(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<u64, JobError> {
    let mut file = AtomicParquet::create(path, schema)?;
    for batch in batches {
        file.write(batch)?;
    }
    file.commit()
}
