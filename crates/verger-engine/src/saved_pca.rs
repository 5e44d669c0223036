//! `pca/model.json` as it is saved: the fitted [`PcaModel`] and the sha256 of the featurizer whose features it
//! was fitted on, so that a model is applied only to features of that same featurizer (`--pca-model`,
//! classifiers).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use verger_pca::PcaModel;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedPca {
    #[serde(flatten)]
    pub model: PcaModel,
    /// Absent in models saved before verger recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
}

impl SavedPca {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a PCA model serializes")
    }

    /// Parses a saved model, naming `location` in the error.
    pub fn from_json(bytes: &[u8], location: &str) -> Result<SavedPca, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("{location} is not a verger PCA model: {e}"))
    }

    /// Refuses a model that cannot project the features of `featurizer_sha256` (`location` names it).
    pub fn check_fits(&self, featurizer_sha256: &str, location: &str) -> Result<(), String> {
        let m = &self.model;
        if m.dim != verger_model::FEATURE_DIM {
            return Err(format!(
                "{location} projects {}-d vectors, the featurizer gives {}-d features",
                m.dim,
                verger_model::FEATURE_DIM
            ));
        }
        if m.k == 0 || m.k > m.dim || m.components.len() != m.k || m.components.iter().any(|c| c.len() != m.dim) {
            return Err(format!(
                "{location} is inconsistent: k = {} but {} components",
                m.k,
                m.components.len()
            ));
        }
        match &self.model_sha256 {
            Some(sha) if sha.eq_ignore_ascii_case(featurizer_sha256) => Ok(()),
            Some(sha) => Err(format!(
                "{location} was fitted on the features of model sha256 {sha}, this run's model is {featurizer_sha256}"
            )),
            None => Err(format!(
                "{location} does not record which model's features it was fitted on (saved by an older verger): \
                 refit it"
            )),
        }
    }
}

/// sha256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
