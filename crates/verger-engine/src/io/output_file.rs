//! One file of a job's output as a DataFusion table, so that cluster executors read and write the output
//! themselves instead of funnelling every row through the client: scanning reads the file, inserting writes
//! it in one atomic put. What travels in plans is the output's location and store options, never a
//! credential: each process opens the store with its own.
//!
//! Executors write under a name the driver chose for one submission; the driver commits the file by renaming
//! it ([`OutputStore::rename`]), so a retried task rewrites only its own attempt and a merely slow one can
//! never replace a committed file; with a [guard](OutputFile::guard) a late one writes nothing at all.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_datafusion_err, not_impl_err, DataFusionError, Result};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::Expr;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::output::OutputStore;
use super::store::StoreOptions;

/// A file of an output, as any process of the job reaches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFile {
    /// The output: a folder (shared by every process) or `s3://bucket/prefix`.
    pub output: String,
    pub store: StoreOptions,
    /// The file, relative to the output.
    pub name: String,
    /// Writers publish the file only while this file of the output exists: the driver removes it once it has
    /// committed or given up, so that a task it no longer waits for (on a stalled executor) writes nothing.
    pub guard: Option<String>,
    /// Key-value metadata of the written file (its Arrow schema's, which Parquet readers show).
    #[serde(default)]
    pub metadata: Vec<(String, String)>,
}

impl OutputFile {
    fn open(&self) -> Result<OutputStore> {
        OutputStore::open(&self.output, &self.store).map_err(|e| exec_datafusion_err!("{e}"))
    }
}

impl fmt::Display for OutputFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.output.trim_end_matches('/'), self.name)
    }
}

/// A Parquet file of the output with a known schema: scan it, or insert into it to write it whole.
#[derive(Debug)]
pub struct OutputFileTable {
    pub file: OutputFile,
    pub schema: SchemaRef,
}

#[async_trait]
impl TableProvider for OutputFileTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(OutputFileScanExec::new(
            self.file.clone(),
            self.schema.clone(),
            projection.cloned(),
        )?))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return not_impl_err!("{} is written whole, by one insert", self.file);
        }
        let sink = OutputFileSink {
            file: self.file.clone(),
            schema: input.schema(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// Reads one Parquet file of the output, in one partition.
#[derive(Debug)]
pub struct OutputFileScanExec {
    pub file: OutputFile,
    /// The file's schema, before `projection`.
    pub file_schema: SchemaRef,
    pub projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl OutputFileScanExec {
    pub fn new(file: OutputFile, file_schema: SchemaRef, projection: Option<Vec<usize>>) -> Result<Self> {
        let schema = match &projection {
            Some(columns) => Arc::new(file_schema.project(columns)?),
            None => file_schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(OutputFileScanExec {
            file,
            file_schema,
            projection,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for OutputFileScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "OutputFileScanExec: {}", self.file)
    }
}

impl ExecutionPlan for OutputFileScanExec {
    fn name(&self) -> &str {
        "OutputFileScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(exec_datafusion_err!("OutputFileScanExec has no children"))
        }
    }

    fn execute(&self, _partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let (file, projection, schema) = (self.file.clone(), self.projection.clone(), self.schema());
        let batch_schema = schema.clone();
        let batches = futures::stream::once(async move {
            // Files of an output are one partition each (a few MB): read whole, then decoded.
            let bytes = file
                .open()?
                .get(&file.name)
                .await
                .map_err(|e| exec_datafusion_err!("{e}"))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
            let mask = match projection {
                Some(columns) => ProjectionMask::roots(builder.parquet_schema(), columns),
                None => ProjectionMask::all(),
            };
            let batches = builder.with_projection(mask).build()?.map(move |batch| {
                // The declared schema, whatever nullability the writer recorded.
                Ok::<_, DataFusionError>(RecordBatch::try_new(batch_schema.clone(), batch?.columns().to_vec())?)
            });
            Ok::<_, DataFusionError>(futures::stream::iter(batches))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// Writes everything inserted into an [`OutputFileTable`] as one Parquet file, published atomically.
#[derive(Debug)]
pub struct OutputFileSink {
    pub file: OutputFile,
    pub schema: SchemaRef,
}

impl DisplayAs for OutputFileSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "OutputFileSink: {}", self.file)
    }
}

#[async_trait]
impl DataSink for OutputFileSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(&self, data: SendableRecordBatchStream, _context: &Arc<TaskContext>) -> Result<u64> {
        let written = self.write(data).await;
        match &written {
            Ok(rows) => tracing::info!(file = %self.file, rows, "written"),
            Err(e) => tracing::warn!(file = %self.file, "not written: {e}"),
        }
        written
    }
}

impl OutputFileSink {
    async fn write(&self, mut data: SendableRecordBatchStream) -> Result<u64> {
        let failed = |e: super::StoreError| exec_datafusion_err!("writing {}: {e}", self.file);
        let out = self.file.open()?;
        let schema = super::output::with_metadata(&data.schema(), &self.file.metadata);
        let mut file = out.parquet(&self.file.name, schema.clone()).map_err(failed)?;
        while let Some(batch) = data.next().await {
            file.write(&batch?.with_schema(schema.clone())?).await.map_err(failed)?;
        }
        crate::fault::stall_point("publish");
        if let Some(guard) = &self.file.guard {
            if !out.exists(guard).await.map_err(failed)? {
                return Err(exec_datafusion_err!(
                    "not writing {}: the job that asked for it has moved on",
                    self.file
                ));
            }
        }
        file.commit().await.map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int32Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, UInt64Type};
    use datafusion::datasource::provider_as_source;
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::prelude::{col, SessionContext};

    use super::*;

    fn table(dir: &std::path::Path, name: &str, schema: SchemaRef, guard: Option<&str>) -> Arc<OutputFileTable> {
        Arc::new(OutputFileTable {
            file: OutputFile {
                output: dir.to_str().unwrap().into(),
                store: StoreOptions::default(),
                name: name.into(),
                guard: guard.map(String::from),
                metadata: Vec::new(),
            },
            schema,
        })
    }

    async fn insert(ctx: &SessionContext, rows: &RecordBatch, target: Arc<OutputFileTable>) -> Result<u64> {
        let rows = ctx.read_batch(rows.clone())?.into_unoptimized_plan();
        let insert =
            LogicalPlanBuilder::insert_into(rows, "t", provider_as_source(target), InsertOp::Append)?.build()?;
        let counts = ctx.execute_logical_plan(insert).await?.collect().await?;
        Ok(counts[0].column(0).as_primitive::<UInt64Type>().value(0))
    }

    #[tokio::test]
    async fn inserted_rows_are_written_whole_and_scanned_back() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, false),
            Field::new("b", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(Int32Array::from(vec![10, 20, 30])),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        let target = table(dir.path(), "x/part.parquet", schema.clone(), None);
        assert_eq!(insert(&ctx, &batch, target.clone()).await.unwrap(), 3);
        assert!(dir.path().join("x/part.parquet").is_file());

        // With a guard, the file is published only while the guard exists.
        let guarded = table(dir.path(), "y/part.parquet", schema.clone(), Some("y/_OPEN"));
        let refused = insert(&ctx, &batch, guarded.clone()).await.unwrap_err();
        assert!(refused.to_string().contains("has moved on"), "{refused}");
        assert!(!dir.path().join("y/part.parquet").exists());
        std::fs::create_dir_all(dir.path().join("y")).unwrap();
        std::fs::write(dir.path().join("y/_OPEN"), b"").unwrap();
        assert_eq!(insert(&ctx, &batch, guarded).await.unwrap(), 3);
        assert!(dir.path().join("y/part.parquet").is_file());

        // A projected scan reads the chosen column only.
        let read = ctx.read_table(target).unwrap().select(vec![col("b")]).unwrap();
        let batches = read.collect().await.unwrap();
        assert_eq!(batches[0].num_columns(), 1);
        let values: Vec<i32> = batches[0].column(0).as_primitive::<Int32Type>().values().to_vec();
        assert_eq!(values, vec![10, 20, 30]);
    }
}
