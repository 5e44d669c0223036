//! Reading image bytes by URI. Local files for now; the error text is what users see in `errors/`.

use verger_listing::local_path;

/// Reads the whole object behind `uri`.
pub fn read(uri: &str) -> Result<Vec<u8>, String> {
    let path = local_path(uri).ok_or_else(|| format!("unsupported URI scheme in {uri}"))?;
    std::fs::read(path).map_err(|e| e.to_string())
}
