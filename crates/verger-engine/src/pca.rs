//! PCA as DataFusion functions: `pca_stats(features)` aggregates mergeable statistics (partial states are
//! the compact [`PcaStats`] encoding), and `pca_project(features)` applies a fitted model.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder, ListBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{exec_datafusion_err, exec_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use verger_model::FEATURE_DIM;
use verger_pca::{PcaModel, PcaStats};

pub fn pca_features_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

/// Rows of a list<float32> column as one contiguous row-major slice; all rows must be present and `dim` long.
fn rows_of(array: &ArrayRef, dim: usize) -> Result<Vec<f32>> {
    let list = array
        .as_list_opt::<i32>()
        .ok_or_else(|| exec_datafusion_err!("expected list<float32>, got {}", array.data_type()))?;
    let mut out = Vec::with_capacity(list.len() * dim);
    for i in 0..list.len() {
        if list.is_null(i) {
            return exec_err!("null feature vector at row {i}");
        }
        let row = list.value(i);
        let values = row
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| exec_datafusion_err!("expected float32 values"))?;
        if values.len() != dim {
            return exec_err!("feature vector of length {} at row {i}, expected {dim}", values.len());
        }
        out.extend_from_slice(values.values());
    }
    Ok(out)
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PcaStatsUdaf {
    signature: Signature,
}

impl PcaStatsUdaf {
    pub const NAME: &'static str = "pca_stats";

    pub fn new() -> Self {
        PcaStatsUdaf {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl Default for PcaStatsUdaf {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for PcaStatsUdaf {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(PcaStatsAccumulator {
            stats: PcaStats::new(FEATURE_DIM),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[stats]", args.name),
            DataType::Binary,
            true,
        ))])
    }
}

#[derive(Debug)]
struct PcaStatsAccumulator {
    stats: PcaStats,
}

impl Accumulator for PcaStatsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.stats.add_rows(&rows_of(&values[0], self.stats.dim())?);
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.stats.to_bytes())))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.stats.dim() * (self.stats.dim() + 1) * size_of::<f64>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states = states[0]
            .as_binary_opt::<i32>()
            .ok_or_else(|| exec_datafusion_err!("pca_stats state must be binary"))?;
        for bytes in states.iter().flatten() {
            let other = PcaStats::from_bytes(bytes).ok_or_else(|| exec_datafusion_err!("corrupt pca_stats state"))?;
            self.stats.merge(&other);
        }
        Ok(())
    }
}

/// `pca_project(features) -> list<float64>` with a fitted model.
#[derive(Debug)]
pub struct PcaProjectUdf {
    signature: Signature,
    pub model: Arc<PcaModel>,
}

impl PcaProjectUdf {
    pub const NAME: &'static str = "pca_project";

    pub fn new(model: Arc<PcaModel>) -> Self {
        PcaProjectUdf {
            signature: Signature::any(1, Volatility::Immutable),
            model,
        }
    }
}

#[cfg(feature = "codec")]
impl crate::codec::StatefulUdf for PcaProjectUdf {
    const NAME: &'static str = PcaProjectUdf::NAME;

    /// The fitted model bit for bit (about 1.5 MB for k = 50, far below gRPC's 16 MiB).
    fn encode_state(&self) -> Result<Vec<u8>> {
        Ok(self.model.to_exact_bytes())
    }

    fn decode_state(bytes: &[u8]) -> Result<Self> {
        let model = PcaModel::from_exact_bytes(bytes).ok_or_else(|| exec_datafusion_err!("not an exact PCA model"))?;
        Ok(PcaProjectUdf::new(Arc::new(model)))
    }
}

// Two instances are the same function only if they carry the same model.
impl PartialEq for PcaProjectUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.model, &other.model) || self.model == other.model
    }
}

impl Eq for PcaProjectUdf {}

impl Hash for PcaProjectUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.model.k.hash(state);
        self.model.count.hash(state);
        self.model.eigenvalues.first().map(|v| v.to_bits()).hash(state);
    }
}

impl ScalarUDFImpl for PcaProjectUdf {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(pca_features_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let features = args.args[0].to_array(args.number_rows)?;
        let rows = rows_of(&features, self.model.dim)?;
        let n = rows.len() / self.model.dim;
        let mut out = ListBuilder::with_capacity(Float64Builder::with_capacity(n * self.model.k), n)
            .with_field(Arc::new(Field::new_list_field(DataType::Float64, true)));
        for row in rows.chunks_exact(self.model.dim) {
            out.values().append_slice(&self.model.project(row));
            out.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
