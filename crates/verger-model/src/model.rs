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
        static LOADED: OnceLock<Mutex<HashMap<ModelSpec, Arc<VerifiedModel>>>> = OnceLock::new();
        let mut loaded = LOADED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(model) = loaded.get(spec) {
            return Ok(model.clone());
        }
        let model = Arc::new(Self::read(spec)?);
        loaded.insert(spec.clone(), model.clone());
        Ok(model)
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
