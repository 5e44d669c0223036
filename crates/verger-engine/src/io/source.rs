//! Reading bytes by location: `file://` URIs and plain paths from the local disk, `s3://bucket/key` from the
//! object store. The error text is what users see in `errors/`.

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use verger_listing::{local_path, Location};

use super::store::StoreOptions;
use super::StoreError;

/// Reads the image behind `uri` (`file://` or `s3://`, as the listing wrote it).
pub fn read(uri: &str, store: &StoreOptions) -> Result<Vec<u8>, StoreError> {
    if let Some(path) = local_path(uri) {
        return std::fs::read(path).map_err(unreadable);
    }
    match Location::parse(uri) {
        Location::S3 { bucket, prefix: key } => read_object(&bucket, &key, store),
        Location::Local(_) => Err(StoreError::Unreadable(format!("unsupported URI scheme in {uri}"))),
    }
}

/// The URI featurization reads a file named by the user by: `s3://` as given, a local path as an absolute
/// `file://` URI.
pub fn uri(location: &str) -> Result<String, StoreError> {
    match Location::parse(location) {
        Location::S3 { .. } => Ok(location.to_string()),
        Location::Local(path) => std::path::absolute(&path)
            .map(|a| format!("file://{}", a.display()))
            .map_err(|e| StoreError::io(path, e)),
    }
}

/// Reads a file named by the user: a local path or `s3://bucket/key`.
pub fn read_location(location: &str, store: &StoreOptions) -> Result<Vec<u8>, StoreError> {
    match Location::parse(location) {
        Location::S3 { bucket, prefix: key } => read_object(&bucket, &key, store),
        Location::Local(path) => std::fs::read(&path).map_err(|e| StoreError::io(path, e)),
    }
}

fn unreadable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unreadable(e.to_string())
}

/// The cause of a failed read without the object's name: the error row already names the object (by its
/// pseudonym in a pseudonymised run, where the message must not undo it), and object_store's messages carry
/// the key as written and percent-encoded.
fn unreadable_object(e: impl std::fmt::Display, bucket: &str, key: &str) -> StoreError {
    let mut message = e.to_string();
    let encoded = ObjectPath::from(key).as_ref().to_string();
    let url_encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
    for form in [format!("s3://{bucket}/{key}"), encoded, url_encoded, key.to_string()] {
        if !form.is_empty() {
            message = message.replace(&form, "<object>");
        }
    }
    StoreError::Unreadable(message)
}

fn read_object(bucket: &str, key: &str, store: &StoreOptions) -> Result<Vec<u8>, StoreError> {
    let client = store.s3(bucket)?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| StoreError::Client("object stores need the job's runtime".into()))?;
    // Featurization is synchronous CPU work on a runtime worker; the fetch borrows that worker meanwhile.
    tokio::task::block_in_place(|| {
        runtime.block_on(async {
            // As listed: `Path::from` would percent-encode `%`, `#`, `~`, `[`… and ask for another key.
            let unreadable = |e: object_store::Error| unreadable_object(e, bucket, key);
            let path = ObjectPath::parse(key).map_err(|e| unreadable(e.into()))?;
            let object = client.get(&path).await.map_err(unreadable)?;
            object.bytes().await.map(|b| b.to_vec()).map_err(unreadable)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 41, point 7: an unreadable object's message names its cause, not the object, in none of the forms
    /// object_store writes a key in (as listed, percent-encoded, as a URL).
    #[test]
    fn unreadable_objects_are_not_named_in_their_message() {
        let key = "alice/holiday #1/50% off.jpg";
        let encoded = ObjectPath::from(key).as_ref().to_string();
        for path in [key.to_string(), encoded, format!("s3://photos/{key}")] {
            let e = object_store::Error::NotFound {
                path: path.clone(),
                source: format!("GET http://store/photos/{path}: 404").into(),
            };
            let message = unreadable_object(e, "photos", key).to_string();
            assert!(!message.contains("alice") && !message.contains("holiday"), "{message}");
            assert!(message.contains("<object>") && message.contains("404"), "{message}");
        }
    }
}
