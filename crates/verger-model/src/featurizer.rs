use std::sync::{Arc, Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::error::ModelError;
use crate::model::{per_spec, ModelReader, ModelSpec, PerSpec, VerifiedModel};
use crate::{runtime, Device, FEATURE_DIM, INPUT_LEN};

/// What a session is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelInput {
    /// Preprocessed float32 NHWC (`x / 127.5 − 1`, scaled by the caller): the CPU's input, the reference.
    Scaled,
    /// The 224×224 RGB pixels as uint8 NHWC, scaled inside the graph ([`crate::app_model::with_pixel_input`]):
    /// a quarter of the bytes to move to a GPU.
    Pixels,
}

impl ModelInput {
    /// The input a device is fed: pixels on a GPU, scaled floats on the CPU.
    pub fn on(device: Device) -> ModelInput {
        match device {
            Device::Cpu => ModelInput::Scaled,
            Device::Cuda(_) => ModelInput::Pixels,
        }
    }
}

/// One ONNX Runtime session: images in (as [`ModelInput`] says), 1280-d features out.
pub struct Featurizer {
    session: Session,
    input: ModelInput,
}

impl Featurizer {
    /// A session over a verified model on `device`, fed as [`ModelInput::on`] the device, tuned for one image
    /// stream per thread.
    pub fn new(model: &VerifiedModel, device: Device) -> Result<Self, ModelError> {
        Self::with_input(model, device, ModelInput::on(device))
    }

    /// [`Featurizer::new`], fed as `input` says.
    pub fn with_input(model: &VerifiedModel, device: Device, input: ModelInput) -> Result<Self, ModelError> {
        let mut builder = Session::builder(runtime::environment(device)?)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(1)?
            .with_inter_threads(1)?
            .with_intra_op_spinning(false)?
            .with_inter_op_spinning(false)?;
        if let Device::Cuda(index) = device {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(index as i32)
                // TF32 rounds convolution inputs to 10-bit mantissas: features would drift from the fp32
                // reference far beyond rounding.
                .with_tf32(false)
                .build()
                // Without this, ONNX Runtime quietly falls back to the CPU.
                .error_on_failure();
            builder = builder
                .with_execution_providers([cuda])
                .map_err(|e| ModelError::GpuUnavailable(format!("the CUDA execution provider on {device}: {e}")))?;
        }
        let session = match input {
            ModelInput::Scaled => builder.commit_from_memory(&model.bytes)?,
            ModelInput::Pixels => builder.commit_from_memory(&crate::app_model::with_pixel_input(&model.bytes)?)?,
        };
        Ok(Featurizer { session, input })
    }

    pub fn input(&self) -> ModelInput {
        self.input
    }

    /// Features of `inputs.len() / INPUT_LEN` scaled images, row-major `[n, 1280]`.
    pub fn embed(&mut self, inputs: &[f32]) -> Result<Vec<f32>, ModelError> {
        self.expect(ModelInput::Scaled)?;
        self.run(inputs, "input")
    }

    /// Features of `pixels.len() / INPUT_LEN` images given as their uint8 pixels, row-major `[n, 1280]`.
    pub fn embed_pixels(&mut self, pixels: &[u8]) -> Result<Vec<f32>, ModelError> {
        self.expect(ModelInput::Pixels)?;
        self.run(pixels, crate::app_model::APP_INPUT)
    }

    fn expect(&self, input: ModelInput) -> Result<(), ModelError> {
        match self.input == input {
            true => Ok(()),
            false => Err(ModelError::Ort(format!(
                "this session takes {:?} input, not {input:?}",
                self.input
            ))),
        }
    }

    fn run<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        &mut self,
        inputs: &[T],
        name: &str,
    ) -> Result<Vec<f32>, ModelError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        if !inputs.len().is_multiple_of(INPUT_LEN) {
            return Err(ModelError::InputShape { len: inputs.len() });
        }
        let n = inputs.len() / INPUT_LEN;
        let tensor = TensorRef::from_array_view(([n, 224, 224, 3], inputs))?;
        let outputs = self.session.run(ort::inputs![name => tensor])?;
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
    device: Device,
    idle: Mutex<Vec<Featurizer>>,
}

impl FeaturizerPool {
    /// The process-wide pool for `spec` on `device` (reading the model with `read` and verifying it on first
    /// use). The first session is made here, so that a device that cannot run the model fails the caller.
    pub fn shared(spec: &ModelSpec, device: Device, read: &ModelReader) -> Result<Arc<FeaturizerPool>, ModelError> {
        static POOLS: PerSpec<(ModelSpec, Device), FeaturizerPool> = OnceLock::new();
        per_spec(&POOLS, &(spec.clone(), device), || {
            let model = VerifiedModel::load(spec, read)?;
            let first = Featurizer::new(&model, device)?;
            Ok(FeaturizerPool {
                model,
                device,
                idle: Mutex::new(vec![first]),
            })
        })
    }

    /// The model the sessions run (its verified bytes).
    pub fn model(&self) -> &VerifiedModel {
        &self.model
    }

    /// What the pool's sessions are fed.
    pub fn input(&self) -> ModelInput {
        ModelInput::on(self.device)
    }

    /// A session for the caller's exclusive use; it returns to the pool when dropped.
    pub fn get(self: &Arc<Self>) -> Result<PooledFeaturizer, ModelError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let featurizer = match idle {
            Some(f) => f,
            None => Featurizer::new(&self.model, self.device)?,
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
