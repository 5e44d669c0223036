//! verger's functions in serialized plans (DataFusion's protobuf form, which Ballista ships from client to
//! scheduler to executors).
//!
//! A plan names its functions; the receiving side resolves names in its own registry. For functions with
//! state that is wrong without a codec: `pca_project` would run whatever model the receiver registered (or
//! none), silently. So the state travels with the plan: each function with state implements [`StatefulUdf`]
//! beside its code (`featurize` its settings, `pca_project` its fitted model bit for bit) and is listed once in
//! [`crate::context::STATEFUL`], which these codecs consult. Stateless functions (`pca_stats`) travel by name.
//!
//! verger's own plan nodes travel here too: [`OutputFileTable`] in logical plans, and its scan and sink in
//! physical plans, as the file's location, store options and schema (never a credential).

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::{exec_datafusion_err, not_impl_err, plan_err, Result};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF, ScalarUDFImpl};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::{DefaultLogicalExtensionCodec, LogicalExtensionCodec};
use datafusion_proto::physical_plan::{
    DefaultPhysicalExtensionCodec, PhysicalExtensionCodec, PhysicalProtoConverterExtension,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::io::output_file::{OutputFile, OutputFileScanExec, OutputFileSink, OutputFileTable};

/// A scalar function whose state must travel with plans. Implement it next to the function, and list the
/// function in [`crate::context::STATEFUL`]: the codecs then carry it, with no other change.
pub trait StatefulUdf: ScalarUDFImpl + Sized {
    /// The name plans call it by.
    const NAME: &'static str;
    fn encode_state(&self) -> Result<Vec<u8>>;
    fn decode_state(bytes: &[u8]) -> Result<Self>;
}

/// How the codecs carry one kind of stateful function (made by [`Stateful::of`]).
pub struct Stateful {
    name: &'static str,
    encode: fn(&ScalarUDF) -> Option<Result<Vec<u8>>>,
    decode: fn(&[u8]) -> Result<ScalarUDF>,
}

impl Stateful {
    pub const fn of<F: StatefulUdf + 'static>() -> Stateful {
        Stateful {
            name: F::NAME,
            encode: encode_as::<F>,
            decode: decode_as::<F>,
        }
    }
}

fn encode_as<F: StatefulUdf + 'static>(udf: &ScalarUDF) -> Option<Result<Vec<u8>>> {
    udf.inner().downcast_ref::<F>().map(F::encode_state)
}

fn decode_as<F: StatefulUdf + 'static>(bytes: &[u8]) -> Result<ScalarUDF> {
    F::decode_state(bytes).map(ScalarUDF::new_from_impl)
}

fn encode_udf(udf: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
    for function in crate::context::STATEFUL {
        if let Some(state) = (function.encode)(udf) {
            buf.extend_from_slice(&state?);
            return Ok(());
        }
    }
    Ok(())
}

fn decode_udf(name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
    if buf.is_empty() {
        return not_impl_err!("function {name} is unknown here: register it on every side of the plan");
    }
    match crate::context::STATEFUL.iter().find(|f| f.name == name) {
        Some(function) => (function.decode)(buf)
            .map(Arc::new)
            .map_err(|e| exec_datafusion_err!("decoding function {name}: {e}")),
        None => plan_err!("plan carries state for function {name}, which has none here"),
    }
}

/// verger's plan nodes as they travel, behind [`NODE_TAG`] so that they are told from the wrapped codec's.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Node {
    Table {
        file: OutputFile,
        schema: Vec<u8>,
    },
    Scan {
        file: OutputFile,
        schema: Vec<u8>,
        projection: Option<Vec<usize>>,
    },
    Sink {
        file: OutputFile,
    },
}

const NODE_TAG: &[u8] = b"verger-node:";

fn encode_node(node: &Node, buf: &mut Vec<u8>) -> Result<()> {
    buf.extend_from_slice(NODE_TAG);
    serde_json::to_writer(buf, node).map_err(|e| exec_datafusion_err!("encoding a verger plan node: {e}"))
}

/// The verger node in `buf`, or `None` when `buf` holds another codec's node.
fn decode_node(buf: &[u8]) -> Option<Result<Node>> {
    let json = buf.strip_prefix(NODE_TAG)?;
    Some(serde_json::from_slice(json).map_err(|e| exec_datafusion_err!("decoding a verger plan node: {e}")))
}

/// A schema in DataFusion's own protobuf form.
fn schema_bytes(schema: &Schema) -> Result<Vec<u8>> {
    let proto = datafusion_proto::protobuf::Schema::try_from(schema)?;
    Ok(proto.encode_to_vec())
}

fn schema_from_bytes(bytes: &[u8]) -> Result<SchemaRef> {
    let proto = datafusion_proto::protobuf::Schema::decode(bytes)
        .map_err(|e| exec_datafusion_err!("decoding a schema: {e}"))?;
    Ok(Arc::new(Schema::try_from(&proto)?))
}

/// Logical plans: verger's function state; everything else as the codec it wraps (DataFusion's default, or
/// Ballista's for a cluster) does it.
#[derive(Debug)]
pub struct VergerLogicalCodec {
    inner: Arc<dyn LogicalExtensionCodec>,
}

impl VergerLogicalCodec {
    pub fn wrapping(inner: Arc<dyn LogicalExtensionCodec>) -> Self {
        VergerLogicalCodec { inner }
    }
}

impl Default for VergerLogicalCodec {
    fn default() -> Self {
        Self::wrapping(Arc::new(DefaultLogicalExtensionCodec {}))
    }
}

impl LogicalExtensionCodec for VergerLogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &datafusion::common::TableReference,
        schema: datafusion::arrow::datatypes::SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
        match decode_node(buf) {
            Some(node) => match node? {
                Node::Table { file, schema } => Ok(Arc::new(OutputFileTable {
                    file,
                    schema: schema_from_bytes(&schema)?,
                })),
                _ => plan_err!("a verger plan node where a table was expected"),
            },
            None => self.inner.try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &datafusion::common::TableReference,
        node: Arc<dyn datafusion::catalog::TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        match node.downcast_ref::<OutputFileTable>() {
            Some(table) => encode_node(
                &Node::Table {
                    file: table.file.clone(),
                    schema: schema_bytes(&table.schema)?,
                },
                buf,
            ),
            None => self.inner.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        encode_udf(node, buf)
    }
}

/// Physical plans: verger's function state; everything else as the codec it wraps does it.
#[derive(Debug)]
pub struct VergerPhysicalCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
}

impl VergerPhysicalCodec {
    pub fn wrapping(inner: Arc<dyn PhysicalExtensionCodec>) -> Self {
        VergerPhysicalCodec { inner }
    }
}

impl Default for VergerPhysicalCodec {
    fn default() -> Self {
        Self::wrapping(Arc::new(DefaultPhysicalExtensionCodec {}))
    }
}

impl PhysicalExtensionCodec for VergerPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match decode_node(buf) {
            Some(node) => match (node?, inputs) {
                (
                    Node::Scan {
                        file,
                        schema,
                        projection,
                    },
                    [],
                ) => Ok(Arc::new(OutputFileScanExec::new(
                    file,
                    schema_from_bytes(&schema)?,
                    projection,
                )?)),
                (Node::Sink { file }, [input]) => {
                    let sink = OutputFileSink {
                        file,
                        schema: input.schema(),
                    };
                    Ok(Arc::new(DataSinkExec::new(input.clone(), Arc::new(sink), None)))
                }
                _ => plan_err!("a verger plan node with the wrong inputs"),
            },
            None => self.inner.try_decode(buf, inputs, ctx, converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(scan) = node.downcast_ref::<OutputFileScanExec>() {
            let scan = Node::Scan {
                file: scan.file.clone(),
                schema: schema_bytes(&scan.file_schema)?,
                projection: scan.projection.clone(),
            };
            return encode_node(&scan, buf);
        }
        let sink = node
            .downcast_ref::<DataSinkExec>()
            .and_then(|exec| exec.sink().downcast_ref::<OutputFileSink>());
        match sink {
            Some(sink) => encode_node(
                &Node::Sink {
                    file: sink.file.clone(),
                },
                buf,
            ),
            None => self.inner.try_encode(node, buf, converter),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        encode_udf(node, buf)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::datasource::provider_as_source;
    use datafusion::execution::FunctionRegistry;
    use datafusion::logical_expr::dml::InsertOp;
    use datafusion::logical_expr::{col, lit, Expr, LogicalPlanBuilder};
    use datafusion::physical_expr::ScalarFunctionExpr;
    use datafusion::physical_plan::projection::ProjectionExec;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::bytes::{
        logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };
    use verger_model::{ModelSpec, FEATURE_DIM};
    use verger_pca::{fit, Components, PcaModel, PcaStats};

    use crate::featurize::{FeaturizeSettings, FeaturizeUdf};
    use crate::pca::PcaProjectUdf;

    use super::*;

    fn settings(model: &str) -> FeaturizeSettings {
        FeaturizeSettings {
            model: ModelSpec {
                location: model.into(),
                sha256: "ab".repeat(32),
            },
            batch_size: 1,
            max_pixels: 1000,
            store: Default::default(),
            device: Default::default(),
            precision: Default::default(),
        }
    }

    fn model(seed: u32) -> Arc<PcaModel> {
        let rows: Vec<f32> = (0..5 * FEATURE_DIM as u32)
            .map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 / 1000.0)
            .collect();
        let mut stats = PcaStats::new(FEATURE_DIM);
        stats.add_rows(&rows);
        Arc::new(fit(&stats, Components::Count(2), false).unwrap())
    }

    /// A context with verger's functions over `model` and `settings`, as the sender or a receiver has them.
    fn context(settings: &FeaturizeSettings, model: Arc<PcaModel>) -> SessionContext {
        let ctx = crate::context::local(1, settings);
        crate::context::register_model(&ctx, model);
        ctx
    }

    fn plan(ctx: &SessionContext) -> LogicalPlan {
        let featurize = ctx.udf(FeaturizeUdf::NAME).unwrap();
        let project = ctx.udf(PcaProjectUdf::NAME).unwrap();
        LogicalPlanBuilder::values(vec![vec![lit("file:///photos/a.jpg")]])
            .unwrap()
            .project(vec![
                featurize.call(vec![col("column1")]).alias("f"),
                project.call(vec![col("column1")]).alias("p"),
            ])
            .unwrap()
            .build()
            .unwrap()
    }

    /// The instances of verger's functions a logical plan holds.
    fn functions(plan: &LogicalPlan) -> (FeaturizeSettings, Arc<PcaModel>) {
        let (mut settings, mut model) = (None, None);
        plan.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if let Some(featurize) = f.func.inner().downcast_ref::<FeaturizeUdf>() {
                        settings = Some(featurize.settings.clone());
                    }
                    if let Some(project) = f.func.inner().downcast_ref::<PcaProjectUdf>() {
                        model = Some(project.model.clone());
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
        .unwrap();
        (settings.unwrap(), model.unwrap())
    }

    #[test]
    fn logical_plans_carry_the_model_and_settings_of_the_sender() {
        let sender = context(&settings("s3://models/a.onnx"), model(1));
        let receiver = context(&settings("/receiver/b.onnx"), model(2));
        let bytes = logical_plan_to_bytes_with_extension_codec(&plan(&sender), &VergerLogicalCodec::default()).unwrap();
        let decoded =
            logical_plan_from_bytes_with_extension_codec(&bytes, &receiver.task_ctx(), &VergerLogicalCodec::default())
                .unwrap();
        let (settings_seen, model_seen) = functions(&decoded);
        assert_eq!(settings_seen, settings("s3://models/a.onnx"));
        assert_eq!(*model_seen, *model(1));

        // The hazard the codec removes: by name alone, the receiver runs its own model, silently.
        let by_name = DefaultLogicalExtensionCodec {};
        let bytes = logical_plan_to_bytes_with_extension_codec(&plan(&sender), &by_name).unwrap();
        let decoded = logical_plan_from_bytes_with_extension_codec(&bytes, &receiver.task_ctx(), &by_name).unwrap();
        assert_eq!(*functions(&decoded).1, *model(2));
        // And a receiver without verger's functions fails loudly.
        let bare = SessionContext::new();
        let bytes = logical_plan_to_bytes_with_extension_codec(&plan(&sender), &by_name).unwrap();
        assert!(logical_plan_from_bytes_with_extension_codec(&bytes, &bare.task_ctx(), &by_name).is_err());
    }

    #[tokio::test]
    async fn physical_plans_carry_the_model_of_the_sender() {
        let sender = context(&settings("/models/a.onnx"), model(1));
        let receiver = context(&settings("/models/b.onnx"), model(2));
        let physical = sender.state().create_physical_plan(&plan(&sender)).await.unwrap();
        let bytes = physical_plan_to_bytes_with_extension_codec(physical, &VergerPhysicalCodec::default()).unwrap();
        let decoded = physical_plan_from_bytes_with_extension_codec(
            &bytes,
            &receiver.task_ctx(),
            &VergerPhysicalCodec::default(),
        )
        .unwrap();
        let projection = decoded.downcast_ref::<ProjectionExec>().expect("a projection");
        let models: Vec<Arc<PcaModel>> = projection
            .expr()
            .iter()
            .filter_map(|e| e.expr.downcast_ref::<ScalarFunctionExpr>())
            .filter_map(|f| f.fun().inner().downcast_ref::<PcaProjectUdf>().map(|p| p.model.clone()))
            .collect();
        assert_eq!(models.len(), 1);
        assert_eq!(*models[0], *model(1));
    }

    /// A plan reading one output file and inserting into another, as verger's cluster jobs do.
    fn copy_plan(ctx: &SessionContext, from: &OutputFileTable, to: &OutputFileTable) -> LogicalPlan {
        let source = Arc::new(OutputFileTable {
            file: from.file.clone(),
            schema: from.schema.clone(),
        });
        let target = Arc::new(OutputFileTable {
            file: to.file.clone(),
            schema: to.schema.clone(),
        });
        let rows = ctx
            .read_table(source)
            .unwrap()
            .select(vec![col("b")])
            .unwrap()
            .into_unoptimized_plan();
        LogicalPlanBuilder::insert_into(rows, "t", provider_as_source(target), InsertOp::Append)
            .unwrap()
            .build()
            .unwrap()
    }

    fn output_table(name: &str, guard: Option<&str>, columns: &[&str]) -> OutputFileTable {
        let fields: Vec<Field> = columns.iter().map(|c| Field::new(*c, DataType::Utf8, true)).collect();
        OutputFileTable {
            file: OutputFile {
                output: "s3://bucket/out".into(),
                store: Default::default(),
                name: name.into(),
                guard: guard.map(String::from),
                metadata: vec![("verger.precision".into(), "bf16".into())],
            },
            schema: Arc::new(Schema::new(fields)),
        }
    }

    #[tokio::test]
    async fn output_files_travel_as_their_location_and_schema() {
        let from = output_table("_staging/part-00001.parquet", None, &["a", "b"]);
        let to = output_table(
            "_staging/attempts/x/result/part-00001.parquet",
            Some("_staging/attempts/x/_OPEN"),
            &["b"],
        );
        let ctx = SessionContext::new();
        let plan = copy_plan(&ctx, &from, &to);

        let bytes = logical_plan_to_bytes_with_extension_codec(&plan, &VergerLogicalCodec::default()).unwrap();
        let decoded =
            logical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &VergerLogicalCodec::default())
                .unwrap();
        let LogicalPlan::Dml(dml) = &decoded else {
            panic!("an insert: {decoded}")
        };
        let target = datafusion::datasource::source_as_provider(&dml.target).unwrap();
        let target = target.downcast_ref::<OutputFileTable>().expect("the output file table");
        assert_eq!(target.file, to.file);
        assert_eq!(target.schema, to.schema);

        let physical = ctx.state().create_physical_plan(&plan).await.unwrap();
        let bytes = physical_plan_to_bytes_with_extension_codec(physical, &VergerPhysicalCodec::default()).unwrap();
        let decoded =
            physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &VergerPhysicalCodec::default())
                .unwrap();
        let sink = decoded.downcast_ref::<DataSinkExec>().expect("a sink");
        let sink = sink
            .sink()
            .downcast_ref::<OutputFileSink>()
            .expect("the output file sink");
        assert_eq!(sink.file, to.file);
        let mut scans = Vec::new();
        decoded
            .apply(|node| {
                if let Some(scan) = node.downcast_ref::<OutputFileScanExec>() {
                    scans.push((scan.file.clone(), scan.file_schema.clone(), scan.projection.clone()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        assert_eq!(scans, vec![(from.file.clone(), from.schema.clone(), Some(vec![1]))]);
    }
}
