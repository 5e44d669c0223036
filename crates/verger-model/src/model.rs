use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// Where the model lives and what its bytes must hash to. Cheap to clone and to send to other processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelSpec {
    pub path: PathBuf,
    pub sha256: String,
}

/// Model bytes that matched their expected sha256. Shared by every session of the process.
#[derive(Debug)]
pub struct VerifiedModel {
    pub spec: ModelSpec,
    pub bytes: Vec<u8>,
}

impl VerifiedModel {
    /// Reads and verifies the model once per process; later calls with the same spec share the bytes.
    pub fn load(spec: &ModelSpec) -> Result<Arc<VerifiedModel>, ModelError> {
        static LOADED: PerSpec<VerifiedModel> = OnceLock::new();
        per_spec(&LOADED, spec, || Self::read(spec))
    }

    fn read(spec: &ModelSpec) -> Result<VerifiedModel, ModelError> {
        let bytes = std::fs::read(&spec.path).map_err(|source| ModelError::Read {
            path: spec.path.clone(),
            source,
        })?;
        verify(&spec.path, &bytes, &spec.sha256)?;
        tracing::info!(path = %spec.path.display(), sha256 = %spec.sha256, "model verified");
        Ok(VerifiedModel {
            spec: spec.clone(),
            bytes,
        })
    }
}

/// A process-wide cache of one value per model: the original pipeline's "broadcast once per worker".
pub(crate) type PerSpec<V> = OnceLock<Mutex<HashMap<ModelSpec, Arc<V>>>>;

/// The cached value for `spec`, made by `make` on first use.
pub(crate) fn per_spec<V>(
    cache: &PerSpec<V>,
    spec: &ModelSpec,
    make: impl FnOnce() -> Result<V, ModelError>,
) -> Result<Arc<V>, ModelError> {
    let mut values = cache
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(value) = values.get(spec) {
        return Ok(value.clone());
    }
    let value = Arc::new(make()?);
    values.insert(spec.clone(), value.clone());
    Ok(value)
}

/// Checks `bytes` against the expected hex sha256.
pub fn verify(path: &Path, bytes: &[u8], expected: &str) -> Result<(), ModelError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}
