//! `--pseudonymize-paths KEYFILE`: every path in the shared outputs becomes HMAC-SHA256(key, path) in hex, so
//! results can leave the organisation without the user names or ids that photo paths often contain, while
//! whoever holds the key can still match rows to their own files. Labels are kept.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_datafusion_err, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A secret key for path pseudonyms. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pseudonymizer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer { key: <redacted> }")
    }
}

impl Pseudonymizer {
    /// Reads the key file (its bytes, a trailing newline removed); at least 16 bytes.
    pub fn from_file(path: &Path) -> Result<Pseudonymizer, String> {
        let mut key = std::fs::read(path).map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
        while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            key.pop();
        }
        if key.len() < 16 {
            return Err(format!(
                "key file {} holds {} bytes; use at least 16",
                path.display(),
                key.len()
            ));
        }
        Ok(Pseudonymizer { key })
    }

    /// Hex HMAC-SHA256 of `path` under the key.
    pub fn pseudonym(&self, path: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(path.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// `pseudonymize(path) -> string`.
#[derive(Debug)]
pub struct PseudonymizeUdf {
    signature: Signature,
    pseudonymizer: Arc<Pseudonymizer>,
}

impl PseudonymizeUdf {
    pub const NAME: &'static str = "pseudonymize";

    pub fn new(pseudonymizer: Arc<Pseudonymizer>) -> Self {
        PseudonymizeUdf {
            signature: Signature::string(1, Volatility::Immutable),
            pseudonymizer,
        }
    }
}

impl PartialEq for PseudonymizeUdf {
    fn eq(&self, other: &Self) -> bool {
        self.pseudonymizer == other.pseudonymizer
    }
}

impl Eq for PseudonymizeUdf {}

impl Hash for PseudonymizeUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pseudonymizer.hash(state);
    }
}

impl ScalarUDFImpl for PseudonymizeUdf {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let paths = cast(&args.args[0].to_array(args.number_rows)?, &DataType::Utf8)?;
        let paths = paths
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| exec_datafusion_err!("expected strings"))?;
        let pseudonyms: StringArray = paths
            .iter()
            .map(|p| p.map(|p| self.pseudonymizer.pseudonym(p)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(pseudonyms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_hmacs_and_the_key_stays_hidden() {
        let dir = std::env::temp_dir().join(format!("verger-key-{}", std::process::id()));
        std::fs::write(&dir, b"0123456789abcdef-secret\n").unwrap();
        let p = Pseudonymizer::from_file(&dir).unwrap();
        // RFC 4231-style check against an independent computation is done in the end-to-end test (Python hmac).
        assert_eq!(p.pseudonym("file:///a.jpg").len(), 64);
        assert_eq!(p.pseudonym("file:///a.jpg"), p.pseudonym("file:///a.jpg"));
        assert_ne!(p.pseudonym("file:///a.jpg"), p.pseudonym("file:///b.jpg"));
        assert!(!format!("{p:?}").contains("secret"));
        std::fs::write(&dir, b"short").unwrap();
        assert!(Pseudonymizer::from_file(&dir).is_err());
        std::fs::remove_file(dir).unwrap();
    }
}
