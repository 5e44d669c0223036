//! `featurize(uri)`: the read → decode → resize → infer stage as a DataFusion scalar function, so the same
//! plan runs embedded or on a cluster. Each row yields either its features or the stage and reason it failed:
//! one bad image never fails its batch.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float32Builder, ListBuilder, StringArray, StringBuilder, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{exec_datafusion_err, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use serde::{Deserialize, Serialize};
use verger_image::preprocess::scale_extend;
use verger_image::Limits;
use verger_model::{
    Device, FeaturizerPool, ModelError, ModelInput, ModelSpec, Precision, VerifiedModel, FEATURE_DIM, INPUT_LEN,
};

use crate::io::source;
use crate::io::store::StoreOptions;

/// What every worker needs to featurize: which model, how many images per inference call, which limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FeaturizeSettings {
    pub model: ModelSpec,
    pub batch_size: usize,
    pub max_pixels: u64,
    /// How to reach images (and the model) in object stores.
    pub store: StoreOptions,
    /// Where inference runs (decoding and resizing stay on the CPU).
    #[serde(default)]
    pub device: Device,
    /// The arithmetic inference computes in: fp32 (the reference) or bf16 (opt-in, on the CPU).
    #[serde(default)]
    pub precision: Precision,
}

impl FeaturizeSettings {
    /// This process's sessions for the model, which is fetched (from disk or the store) and verified once.
    pub fn featurizers(&self) -> Result<Arc<FeaturizerPool>, ModelError> {
        FeaturizerPool::shared(&self.model, self.device, self.precision, &self.model_reader())
    }

    /// The model, fetched and verified (once per process), without a session.
    pub fn verified_model(&self) -> Result<Arc<VerifiedModel>, ModelError> {
        VerifiedModel::load(&self.model, &self.model_reader())
    }

    fn model_reader(&self) -> impl Fn(&str) -> Result<Vec<u8>, String> + Send + Sync + 'static {
        let store = self.store.clone();
        move |location| source::read_location(location, &store).map_err(|e| e.to_string())
    }
}

/// Names of the fields of `featurize`'s struct result.
pub mod field {
    pub const FEATURES: &str = "features";
    pub const ERROR_STAGE: &str = "error_stage";
    pub const ERROR_MESSAGE: &str = "error_message";
}

/// Stage names recorded in the errors output.
pub mod stage {
    pub const READ: &str = "read";
    pub const DECODE: &str = "decode";
    pub const INFER: &str = "infer";
}

pub fn features_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true)))
}

/// `featurize`'s result: a struct of [`field`]s.
pub fn result_type() -> DataType {
    DataType::Struct(result_fields())
}

fn result_fields() -> Fields {
    Fields::from(vec![
        Field::new(field::FEATURES, features_type(), true),
        Field::new(field::ERROR_STAGE, DataType::Utf8, true),
        Field::new(field::ERROR_MESSAGE, DataType::Utf8, true),
    ])
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FeaturizeUdf {
    signature: Signature,
    pub settings: FeaturizeSettings,
}

impl FeaturizeUdf {
    pub const NAME: &'static str = "featurize";

    pub fn new(settings: FeaturizeSettings) -> Self {
        FeaturizeUdf {
            signature: Signature::string(1, Volatility::Volatile),
            settings,
        }
    }
}

#[cfg(feature = "codec")]
impl crate::codec::StatefulUdf for FeaturizeUdf {
    const NAME: &'static str = FeaturizeUdf::NAME;

    /// The settings as JSON: model location and sha256, limits, store options; no secret among them.
    fn encode_state(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(&self.settings).map_err(|e| exec_datafusion_err!("encoding featurize: {e}"))
    }

    fn decode_state(bytes: &[u8]) -> Result<Self> {
        let settings = serde_json::from_slice(bytes).map_err(|e| exec_datafusion_err!("featurize settings: {e}"))?;
        Ok(FeaturizeUdf::new(settings))
    }
}

impl ScalarUDFImpl for FeaturizeUdf {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(result_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let uris = args.args[0].to_array(args.number_rows)?;
        let uris = cast(&uris, &DataType::Utf8)?;
        let uris = uris
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| exec_datafusion_err!("featurize expects strings"))?;
        let pool = self.settings.featurizers().map_err(|e| exec_datafusion_err!("{e}"))?;
        Ok(ColumnarValue::Array(featurize_column(uris, &self.settings, &pool)?))
    }
}

/// `featurize` on one batch of rows, as every run calls it: read, decode, resize and batch each image, hand
/// each batch to `infer`, and build the result column. `infer` is the pool's sessions in a run; the
/// host-pipeline benchmark (`benches/feed.rs`) passes a sink, to measure everything but inference.
pub fn featurize_column(uris: &StringArray, settings: &FeaturizeSettings, infer: &dyn Infer) -> Result<ArrayRef> {
    Ok(outcomes_to_array(featurize_uris(uris, settings, infer)?))
}

/// One batch of model inputs as the sessions take them: scaled floats (the CPU), or the pixels themselves (a
/// GPU, which scales them in the graph); `FEATURE_DIM` features come back per image.
#[derive(Debug, Clone, Copy)]
pub enum Batch<'a> {
    Scaled(&'a [f32]),
    Pixels(&'a [u8]),
}

/// Why a batch got no features.
#[derive(Debug)]
pub enum InferFailure {
    /// No session could be had: the run fails, as it would for any image.
    NoSession(ModelError),
    /// The session failed on this batch: its images are error rows.
    Batch(ModelError),
}

/// Where batches of model inputs go.
pub trait Infer {
    /// The input the batches must be made of.
    fn input(&self) -> ModelInput;
    /// The batch's features, `FEATURE_DIM` per image.
    fn infer(&self, batch: Batch<'_>) -> std::result::Result<Vec<f32>, InferFailure>;
}

/// A session of the pool runs each batch.
impl Infer for Arc<FeaturizerPool> {
    fn input(&self) -> ModelInput {
        FeaturizerPool::input(self)
    }

    fn infer(&self, batch: Batch<'_>) -> std::result::Result<Vec<f32>, InferFailure> {
        let mut featurizer = self.get().map_err(InferFailure::NoSession)?;
        match batch {
            Batch::Scaled(floats) => featurizer.embed(floats),
            Batch::Pixels(pixels) => featurizer.embed_pixels(pixels),
        }
        .map_err(InferFailure::Batch)
    }
}

/// A row's result: features, or (stage, message).
pub type Outcome = std::result::Result<Vec<f32>, (&'static str, String)>;

/// An image to featurize outside a job: where it is (a path or `s3://` URI), or its encoded bytes.
#[derive(Debug, Clone)]
pub enum Image {
    Location(String),
    Encoded(Vec<u8>),
}

/// Reads, decodes and resizes each image, then runs the model in batches of `settings.batch_size`.
fn featurize_uris(uris: &StringArray, settings: &FeaturizeSettings, infer: &dyn Infer) -> Result<Vec<Outcome>> {
    featurize_each(uris.len(), settings, infer, |i| {
        if uris.is_null(i) {
            return Err((stage::READ, "missing path".to_string()));
        }
        // Spans at debug level: free unless asked for (`-vv` or RUST_LOG), then they time each image.
        tracing::debug_span!("read")
            .in_scope(|| source::read(uris.value(i), &settings.store))
            .map(std::borrow::Cow::Owned)
            .map_err(|e| (stage::READ, e.to_string()))
    })
}

/// [`featurize_uris`] for [`Image`]s: the same decode, resize and batched inference, so features of bytes held
/// in memory are bit-identical to those of the same file in a run.
pub fn featurize_images(images: &[Image], settings: &FeaturizeSettings) -> Result<Vec<Outcome>> {
    let pool = settings.featurizers().map_err(|e| exec_datafusion_err!("{e}"))?;
    featurize_each(images.len(), settings, &pool, |i| match &images[i] {
        Image::Encoded(bytes) => Ok(std::borrow::Cow::Borrowed(bytes.as_slice())),
        Image::Location(location) => tracing::debug_span!("read")
            .in_scope(|| source::read_location(location, &settings.store))
            .map(std::borrow::Cow::Owned)
            .map_err(|e| (stage::READ, e.to_string())),
    })
}

/// Featurizes `n` images whose encoded bytes `read` returns (or the stage and reason they are missing).
fn featurize_each<'a>(
    n: usize,
    settings: &FeaturizeSettings,
    infer: &dyn Infer,
    read: impl Fn(usize) -> std::result::Result<std::borrow::Cow<'a, [u8]>, (&'static str, String)>,
) -> Result<Vec<Outcome>> {
    let limits = Limits {
        max_pixels: settings.max_pixels,
    };
    let batch_size = settings.batch_size.max(1);
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(n);
    let mut pending: Vec<usize> = Vec::with_capacity(batch_size);
    let mut inputs = Inputs::new(infer.input(), batch_size);

    let flush = |pending: &mut Vec<usize>, inputs: &Inputs, outcomes: &mut Vec<Outcome>| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let embedded =
            tracing::debug_span!("infer", images = pending.len()).in_scope(|| infer.infer(inputs.batch(pending.len())));
        match embedded {
            Ok(features) => {
                for (row, f) in pending.iter().zip(features.chunks_exact(FEATURE_DIM)) {
                    outcomes[*row] = Ok(f.to_vec());
                }
            }
            Err(InferFailure::Batch(e)) => {
                for row in pending.iter() {
                    outcomes[*row] = Err((stage::INFER, e.to_string()));
                }
            }
            Err(InferFailure::NoSession(e)) => return Err(exec_datafusion_err!("{e}")),
        }
        pending.clear();
        Ok(())
    };

    for i in 0..n {
        let outcome = read(i).and_then(|bytes| decode(&bytes, &limits).map_err(|e| (stage::DECODE, e.to_string())));
        match outcome {
            Ok(rgb) => {
                inputs.put(pending.len(), &rgb);
                pending.push(i);
                outcomes.push(Ok(Vec::new()));
                if pending.len() == batch_size {
                    flush(&mut pending, &inputs, &mut outcomes)?;
                }
            }
            Err(failure) => outcomes.push(Err(failure)),
        }
    }
    flush(&mut pending, &inputs, &mut outcomes)?;
    Ok(outcomes)
}

/// A batch's inputs as the sessions take them: scaled floats (the CPU), or the pixels themselves (a GPU, which
/// scales them in the graph).
enum Inputs {
    Scaled(Vec<f32>),
    Pixels(Vec<u8>),
}

impl Inputs {
    /// Room for `batch_size` images, not zeroed: each image is written once, as it is put.
    fn new(input: ModelInput, batch_size: usize) -> Inputs {
        match input {
            ModelInput::Scaled => Inputs::Scaled(Vec::with_capacity(batch_size * INPUT_LEN)),
            ModelInput::Pixels => Inputs::Pixels(Vec::with_capacity(batch_size * INPUT_LEN)),
        }
    }

    /// Puts image `slot` of the batch: slots are put in order from 0 after each batch.
    fn put(&mut self, slot: usize, rgb: &[u8]) {
        match self {
            Inputs::Scaled(floats) => {
                floats.truncate(slot * INPUT_LEN);
                scale_extend(rgb, floats);
            }
            Inputs::Pixels(pixels) => {
                pixels.truncate(slot * INPUT_LEN);
                pixels.extend_from_slice(rgb);
            }
        }
    }

    /// The batch's first `n` images.
    fn batch(&self, n: usize) -> Batch<'_> {
        match self {
            Inputs::Scaled(floats) => Batch::Scaled(&floats[..n * INPUT_LEN]),
            Inputs::Pixels(pixels) => Batch::Pixels(&pixels[..n * INPUT_LEN]),
        }
    }
}

/// The model's 224×224 RGB pixels of one encoded image.
fn decode(bytes: &[u8], limits: &Limits) -> std::result::Result<Vec<u8>, verger_image::ImageError> {
    tracing::debug_span!("decode", bytes = bytes.len()).in_scope(|| verger_image::load_rgb224(bytes, limits))
}

/// Why an image held in memory was not featurized.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFailure {
    pub stage: &'static str,
    pub message: String,
    /// Its size exceeds `max_pixels` (a service answers 413, not 400).
    pub too_large: bool,
}

/// Features of one encoded image held in memory (an upload), on a session of this process's pool.
pub fn featurize_bytes(bytes: &[u8], settings: &FeaturizeSettings) -> std::result::Result<Vec<f32>, ImageFailure> {
    let limits = Limits {
        max_pixels: settings.max_pixels,
    };
    let rgb = decode(bytes, &limits).map_err(|e| ImageFailure {
        stage: stage::DECODE,
        too_large: matches!(e, verger_image::ImageError::TooLarge { .. }),
        message: e.to_string(),
    })?;
    let infer_failed = |e: ModelError| ImageFailure {
        stage: stage::INFER,
        message: e.to_string(),
        too_large: false,
    };
    let pool = settings.featurizers().map_err(infer_failed)?;
    let mut input = Inputs::new(pool.input(), 1);
    input.put(0, &rgb);
    tracing::debug_span!("infer", images = 1).in_scope(|| match pool.infer(input.batch(1)) {
        Ok(features) => Ok(features),
        Err(InferFailure::NoSession(e) | InferFailure::Batch(e)) => Err(infer_failed(e)),
    })
}

/// `featurize`'s result column for `outcomes`: a struct of [`field`]s, a row each.
pub(crate) fn outcomes_to_array(outcomes: Vec<Outcome>) -> ArrayRef {
    let n = outcomes.len();
    let mut features = ListBuilder::with_capacity(Float32Builder::with_capacity(n * FEATURE_DIM), n)
        .with_field(Arc::new(Field::new_list_field(DataType::Float32, true)));
    let mut stages = StringBuilder::new();
    let mut messages = StringBuilder::new();
    for outcome in outcomes {
        match outcome {
            Ok(f) => {
                features.values().append_slice(&f);
                features.append(true);
                stages.append_null();
                messages.append_null();
            }
            Err((stage, message)) => {
                features.append_null();
                stages.append_value(stage);
                messages.append_value(message);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(features.finish()),
        Arc::new(stages.finish()),
        Arc::new(messages.finish()),
    ];
    Arc::new(StructArray::new(result_fields(), columns, None))
}

/// Features of individual files, outside any job: `(uri, features or failure)` in input order.
pub fn featurize_files(uris: &[String], settings: &FeaturizeSettings) -> Result<Vec<(String, Outcome)>> {
    let array = StringArray::from_iter_values(uris.iter());
    let pool = settings.featurizers().map_err(|e| exec_datafusion_err!("{e}"))?;
    let outcomes = featurize_uris(&array, settings, &pool)?;
    Ok(uris.iter().cloned().zip(outcomes).collect())
}
