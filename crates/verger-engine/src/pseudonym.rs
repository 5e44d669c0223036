//! `--pseudonymize-paths KEYFILE`: every path in the shared outputs becomes HMAC-SHA256(key, path) in hex, so
//! results can leave the organisation without the user names or ids that photo paths often contain, while
//! whoever holds the key can still match rows to their own files. Labels are kept. Pseudonyms are computed by the
//! job's driver, before featurization: the key never enters a plan, so it never reaches a cluster.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The shortest key accepted: 32 bytes, HMAC-SHA256's own security level.
pub const MIN_KEY_BYTES: usize = 32;

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
    /// Reads the key file (its bytes, a trailing newline removed): at least [`MIN_KEY_BYTES`], in a file only
    /// its owner can read or write (mode 0600), since whoever holds the key can test a guessed path.
    pub fn from_file(path: &Path) -> Result<Pseudonymizer, String> {
        let mut key = crate::io::read_private(path).map_err(|e| format!("key file {e}"))?;
        while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            key.pop();
        }
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "key file {} holds {} bytes; use at least {MIN_KEY_BYTES} random ones (openssl rand -hex 32 > KEY)",
                path.display(),
                key.len()
            ));
        }
        Ok(Pseudonymizer { key })
    }

    /// A short fingerprint of the key (an HMAC of a fixed text under it): tells keys apart, reveals nothing of
    /// the key or of any path.
    pub fn fingerprint(&self) -> String {
        self.pseudonym("verger: the key's fingerprint")[..16].to_string()
    }

    /// Hex HMAC-SHA256 of `path` under the key.
    pub fn pseudonym(&self, path: &str) -> String {
        hex::encode(self.keyed_hash(path.as_bytes()))
    }

    /// HMAC-SHA256 of `bytes` under the key: what a pseudonymised run's feature cache knows an image's bytes
    /// by, so that the cache fingerprints no photo for anyone without the key.
    pub fn keyed_hash(&self, bytes: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_hmacs_and_the_key_stays_hidden() {
        let dir = std::env::temp_dir().join(format!("verger-key-{}", std::process::id()));
        std::fs::write(&dir, b"0123456789abcdef-0123456789abcdef-secret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Pseudonymizer::from_file(&dir).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o600)).unwrap();
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
