//! Reading image bytes by URI: `file://` from the local disk, `s3://bucket/key` from the object store. The
//! error text is what users see in `errors/`.

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use verger_listing::{local_path, Location};

use crate::store::StoreOptions;

/// Reads the whole object behind `uri`.
pub fn read(uri: &str, store: &StoreOptions) -> Result<Vec<u8>, String> {
    if let Some(path) = local_path(uri) {
        return std::fs::read(path).map_err(|e| e.to_string());
    }
    let Location::S3 { bucket, prefix: key } = Location::parse(uri) else {
        return Err(format!("unsupported URI scheme in {uri}"));
    };
    let client = store.s3(&bucket)?;
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|_| "object stores need the job's runtime".to_string())?;
    // Featurization is synchronous CPU work on a runtime worker; the fetch borrows that worker meanwhile.
    tokio::task::block_in_place(|| {
        runtime.block_on(async {
            let object = client
                .get(&ObjectPath::from(key.as_str()))
                .await
                .map_err(|e| e.to_string())?;
            object.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string())
        })
    })
}
