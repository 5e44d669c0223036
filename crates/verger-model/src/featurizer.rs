use std::sync::{Arc, Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::error::ModelError;
use crate::model::{per_spec, ModelReader, ModelSpec, PerSpec, VerifiedModel};
use crate::{runtime, FEATURE_DIM, INPUT_LEN};

/// One ONNX Runtime session: preprocessed NHWC images in, 1280-d features out.
pub struct Featurizer {
    session: Session,
}

impl Featurizer {
    /// A session over a verified model, tuned for one image stream per thread.
    pub fn new(model: &VerifiedModel) -> Result<Self, ModelError> {
        let session = Session::builder(runtime::environment()?)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(1)?
            .with_inter_threads(1)?
            .with_intra_op_spinning(false)?
            .with_inter_op_spinning(false)?
            .commit_from_memory(&model.bytes)?;
        Ok(Featurizer { session })
    }

    /// Features of `inputs.len() / INPUT_LEN` images, row-major `[n, 1280]`.
    pub fn embed(&mut self, inputs: &[f32]) -> Result<Vec<f32>, ModelError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        if !inputs.len().is_multiple_of(INPUT_LEN) {
            return Err(ModelError::InputShape { len: inputs.len() });
        }
        let n = inputs.len() / INPUT_LEN;
        let tensor = TensorRef::from_array_view(([n, 224, 224, 3], inputs))?;
        let outputs = self.session.run(ort::inputs!["input" => tensor])?;
        let (shape, features) = outputs["features"].try_extract_tensor::<f32>()?;
        if shape.num_elements() != n * FEATURE_DIM {
            return Err(ModelError::Ort(format!("unexpected output shape {shape:?}")));
        }
        Ok(features.to_vec())
    }
}

/// Sessions shared by the threads of one process, created on demand and reused: the model is read and
/// verified once, and a session's set-up cost is paid once per concurrent worker, not per batch.
pub struct FeaturizerPool {
    model: Arc<VerifiedModel>,
    idle: Mutex<Vec<Featurizer>>,
}

impl FeaturizerPool {
    /// The process-wide pool for `spec` (reading the model with `read` and verifying it on first use).
    pub fn shared(spec: &ModelSpec, read: &ModelReader) -> Result<Arc<FeaturizerPool>, ModelError> {
        static POOLS: PerSpec<FeaturizerPool> = OnceLock::new();
        per_spec(&POOLS, spec, || {
            Ok(FeaturizerPool {
                model: VerifiedModel::load(spec, read)?,
                idle: Mutex::new(Vec::new()),
            })
        })
    }

    /// The model the sessions run (its verified bytes).
    pub fn model(&self) -> &VerifiedModel {
        &self.model
    }

    /// A session for the caller's exclusive use; it returns to the pool when dropped.
    pub fn get(self: &Arc<Self>) -> Result<PooledFeaturizer, ModelError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let featurizer = match idle {
            Some(f) => f,
            None => Featurizer::new(&self.model)?,
        };
        Ok(PooledFeaturizer {
            pool: self.clone(),
            featurizer: Some(featurizer),
        })
    }
}

/// A [`Featurizer`] borrowed from a [`FeaturizerPool`].
pub struct PooledFeaturizer {
    pool: Arc<FeaturizerPool>,
    featurizer: Option<Featurizer>,
}

impl std::ops::Deref for PooledFeaturizer {
    type Target = Featurizer;
    fn deref(&self) -> &Featurizer {
        self.featurizer.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for PooledFeaturizer {
    fn deref_mut(&mut self) -> &mut Featurizer {
        self.featurizer.as_mut().expect("present until drop")
    }
}

impl Drop for PooledFeaturizer {
    fn drop(&mut self) {
        if let Some(f) = self.featurizer.take() {
            self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(f);
        }
    }
}
