use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// Where the model lives and what its bytes must hash to. Cheap to clone and to send to other processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelSpec {
    /// A local path, or any URI the caller's [`ModelReader`] understands (such as `s3://bucket/key`).
    pub location: String,
    pub sha256: String,
}

/// Fetches a model's bytes from its location. This crate reads local files ([`read_local`]); callers that
/// know object stores pass their own reader, so model I/O stays out of the numeric code.
pub type ModelReader = dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync;

/// The reader for models on the local disk.
pub fn read_local(location: &str) -> Result<Vec<u8>, String> {
    std::fs::read(location).map_err(|e| e.to_string())
}

/// Model bytes that matched their expected sha256. Shared by every session of the process.
#[derive(Debug)]
pub struct VerifiedModel {
    pub spec: ModelSpec,
    pub bytes: Vec<u8>,
}

impl VerifiedModel {
    /// Reads and verifies the model once per process; later calls with the same spec share the bytes.
    pub fn load(spec: &ModelSpec, read: &ModelReader) -> Result<Arc<VerifiedModel>, ModelError> {
        static LOADED: PerSpec<ModelSpec, VerifiedModel> = OnceLock::new();
        per_spec(&LOADED, spec, || Self::read(spec, read))
    }

    fn read(spec: &ModelSpec, read: &ModelReader) -> Result<VerifiedModel, ModelError> {
        let bytes = read(&spec.location).map_err(|message| ModelError::Read {
            location: spec.location.clone(),
            message,
        })?;
        verify(&spec.location, &bytes, &spec.sha256)?;
        tracing::info!(location = %spec.location, sha256 = %spec.sha256, "model verified");
        Ok(VerifiedModel {
            spec: spec.clone(),
            bytes,
        })
    }
}

/// A process-wide cache of one value per model (and whatever else `K` holds): the original pipeline's
/// "broadcast once per worker".
pub(crate) type PerSpec<K, V> = OnceLock<Mutex<HashMap<K, Arc<V>>>>;

/// The cached value for `key`, made by `make` on first use.
pub(crate) fn per_spec<K: Clone + Eq + std::hash::Hash, V>(
    cache: &PerSpec<K, V>,
    key: &K,
    make: impl FnOnce() -> Result<V, ModelError>,
) -> Result<Arc<V>, ModelError> {
    let mut values = cache
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(value) = values.get(key) {
        return Ok(value.clone());
    }
    let value = Arc::new(make()?);
    values.insert(key.clone(), value.clone());
    Ok(value)
}

/// Checks `bytes` against the expected hex sha256.
pub fn verify(location: &str, bytes: &[u8], expected: &str) -> Result<(), ModelError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::Checksum {
            location: location.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}
