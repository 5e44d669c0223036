//! Object stores: one client per bucket and process, configured from the job's options and the standard AWS
//! credential sources (environment, web identity, container and instance metadata). Credentials never enter
//! the options, the plans, the logs or the report.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

/// One object-store client per (options, bucket) and process.
type Clients = HashMap<(StoreOptions, String), Arc<dyn ObjectStore>>;

/// How to reach S3 or an S3-compatible store. Safe to log and to ship to workers: it holds no secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoreOptions {
    /// The AWS region (also where a store that reports none is taken to be).
    pub region: Option<String>,
    /// An S3-compatible endpoint, e.g. `http://127.0.0.1:8333`.
    pub endpoint: Option<String>,
    /// Allow plain HTTP to a non-loopback endpoint.
    pub allow_http: bool,
}

impl StoreOptions {
    /// Refuses plain HTTP to anything but this machine unless `allow_http` says so.
    pub fn check_transport(&self) -> Result<(), String> {
        let Some(endpoint) = &self.endpoint else { return Ok(()) };
        let Some(rest) = endpoint.strip_prefix("http://") else {
            return Ok(());
        };
        let host = rest.split(['/', '?']).next().unwrap_or("");
        let host = host
            .rsplit_once(':')
            .map_or(host, |(h, port)| if port.parse::<u16>().is_ok() { h } else { host });
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback || self.allow_http {
            Ok(())
        } else {
            Err(format!(
                "endpoint {endpoint} is plain HTTP to another machine; use https or pass --allow-http"
            ))
        }
    }

    /// The client for `bucket`, made once per process.
    pub fn s3(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
        static CLIENTS: OnceLock<Mutex<Clients>> = OnceLock::new();
        let mut clients = CLIENTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (self.clone(), bucket.to_string());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        self.check_transport()?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let client: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| e.to_string())?);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Where a bucket is, and how verger knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketRegion {
    pub bucket: String,
    pub region: String,
    /// `reported` by the store (`x-amz-bucket-region`), or `configured` (`--region`) for stores that report none.
    pub source: &'static str,
}

impl StoreOptions {
    /// Asks the store where `bucket` is with an unsigned HeadBucket: AWS answers `x-amz-bucket-region` even
    /// when the request itself is refused. Stores that report nothing are taken to be in `--region`.
    pub async fn bucket_region(&self, bucket: &str) -> Result<BucketRegion, String> {
        self.check_transport()?;
        let url = match &self.endpoint {
            Some(endpoint) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            None => format!("https://{bucket}.s3.amazonaws.com"),
        };
        let response = reqwest::Client::new()
            .head(&url)
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| format!("cannot reach bucket {bucket}: {e}"))?;
        let reported = response
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok());
        match (reported, &self.region) {
            (Some(region), _) => Ok(BucketRegion {
                bucket: bucket.into(),
                region: region.into(),
                source: "reported",
            }),
            (None, Some(region)) => Ok(BucketRegion {
                bucket: bucket.into(),
                region: region.clone(),
                source: "configured",
            }),
            (None, None) => Err(format!(
                "the store does not report the region of bucket {bucket}; pass --region"
            )),
        }
    }
}

/// Refuses any bucket whose region matches none of `allowed` (globs such as `eu-*`).
pub fn check_residency(allowed: &[String], buckets: &[BucketRegion]) -> Result<(), String> {
    let mut patterns = globset::GlobSetBuilder::new();
    for pattern in allowed {
        patterns.add(globset::Glob::new(pattern).map_err(|e| format!("--allowed-regions {pattern:?}: {e}"))?);
    }
    let patterns = patterns.build().map_err(|e| e.to_string())?;
    match buckets.iter().find(|b| !patterns.is_match(&b.region)) {
        Some(b) => Err(format!(
            "bucket {} is in region {} ({}), outside --allowed-regions {}",
            b.bucket,
            b.region,
            b.source,
            allowed.join(",")
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str, allow_http: bool) -> StoreOptions {
        StoreOptions {
            region: None,
            endpoint: Some(url.into()),
            allow_http,
        }
    }

    #[test]
    fn residency_by_region_patterns() {
        let bucket = |region: &str| BucketRegion {
            bucket: "b".into(),
            region: region.into(),
            source: "reported",
        };
        let eu = ["eu-*".to_string()];
        assert!(check_residency(&eu, &[bucket("eu-west-1"), bucket("eu-central-2")]).is_ok());
        let refused = check_residency(&eu, &[bucket("eu-west-1"), bucket("us-east-1")]).unwrap_err();
        assert!(refused.contains("bucket b is in region us-east-1"), "{refused}");
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        assert!(endpoint("http://127.0.0.1:8333", false).check_transport().is_ok());
        assert!(endpoint("http://localhost:8333", false).check_transport().is_ok());
        assert!(endpoint("http://[::1]:8333", false).check_transport().is_ok());
        assert!(endpoint("https://s3.eu-west-1.amazonaws.com", false)
            .check_transport()
            .is_ok());
        assert!(endpoint("http://minio.internal:9000", false).check_transport().is_err());
        assert!(endpoint("http://minio.internal:9000", true).check_transport().is_ok());
    }
}
