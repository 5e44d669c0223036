//! Object stores: one client per bucket and process, configured from the job's options and the standard AWS
//! credential sources (environment, the shared profile files, web identity, container and instance metadata).
//! Credentials never enter the options, the plans, the logs or the report.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};
use verger_listing::Location;

use super::StoreError;

/// Waits between attempts: random, from 1 s growing up to 2.5x the previous wait, at most 15 s. Ten retries
/// wait at least 10 s in all and typically about a minute: enough to ride out a store restarting.
const BACKOFF: BackoffConfig = BackoffConfig {
    init_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(15),
    base: 2.5,
};

/// One object-store client per (options, bucket) and process.
type Clients = HashMap<(StoreOptions, String), Arc<dyn ObjectStore>>;

/// How to reach S3 or an S3-compatible store. Safe to log and to ship to workers: it holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoreOptions {
    /// The AWS region (also where a store that reports none is taken to be).
    pub region: Option<String>,
    /// An S3-compatible endpoint, e.g. `http://127.0.0.1:8333`.
    pub endpoint: Option<String>,
    /// Allow plain HTTP to a non-loopback endpoint.
    pub allow_http: bool,
    /// Server-side encryption requested for every object written.
    pub encryption: Option<Encryption>,
    /// Attempts after the first for a request that failed transiently (connection refused or reset, timeout,
    /// 5xx, throttling), with exponential backoff ([`BACKOFF`]).
    pub max_retries: usize,
    /// Seconds one request attempt may take.
    pub timeout_s: u64,
    /// Region patterns (`eu-*`) every bucket a command touches must match (empty: no restriction), checked by
    /// [`bucket_regions`] before any byte moves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_regions: Vec<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            region: None,
            endpoint: None,
            allow_http: false,
            encryption: None,
            max_retries: 10,
            timeout_s: 60,
            allowed_regions: Vec::new(),
        }
    }
}

/// Server-side encryption of written objects (`x-amz-server-side-encryption`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// SSE-S3: keys managed by the store.
    Aes256,
    /// SSE-KMS with this key.
    Kms { key_id: String },
}

impl Encryption {
    /// The header value S3 uses, and the key where there is one, as the report shows it.
    pub fn describe(&self) -> String {
        match self {
            Encryption::Aes256 => "AES256".into(),
            Encryption::Kms { key_id } => format!("aws:kms (key {key_id})"),
        }
    }
}

impl StoreOptions {
    /// Refuses plain HTTP to anything but this machine unless `allow_http` says so.
    pub fn check_transport(&self) -> Result<(), StoreError> {
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
            Err(StoreError::Client(format!(
                "endpoint {endpoint} is plain HTTP to another machine; use https or pass --allow-http"
            )))
        }
    }

    /// The client for `bucket`, made once per process.
    pub fn s3(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
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
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(RetryConfig {
                backoff: BACKOFF,
                max_retries: self.max_retries,
                retry_timeout: Duration::from_secs(self.timeout_s.max(1) * (self.max_retries as u64 + 1)),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(self.timeout_s.max(1)))
                    .with_connect_timeout(Duration::from_secs(self.timeout_s.clamp(1, 10))),
            );
        // Environment keys win; without them the shared profile files come next, as in the AWS chain.
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            if let Some(profile) = SharedProfile::load()? {
                builder = profile.apply(builder, self.region.is_none());
            }
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        builder = match &self.encryption {
            None => builder,
            Some(Encryption::Aes256) => builder.with_config(
                "aws_server_side_encryption"
                    .parse::<AmazonS3ConfigKey>()
                    .expect("a known key"),
                "AES256",
            ),
            Some(Encryption::Kms { key_id }) => builder.with_sse_kms_encryption(key_id),
        };
        let client: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| StoreError::Client(e.to_string()))?);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Credentials and region of one profile in the AWS shared files (`~/.aws/credentials`, `~/.aws/config`,
/// or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`; profile `AWS_PROFILE`, else `default`).
struct SharedProfile {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    region: Option<String>,
}

impl SharedProfile {
    fn load() -> Result<Option<SharedProfile>, StoreError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        let Some(credentials) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials").filter(|f| f.is_file()) else {
            return Ok(None);
        };
        let read = |path: &PathBuf| {
            ini::Ini::load_from_file(path)
                .map_err(|e| StoreError::Client(format!("AWS shared file {}: {e}", path.display())))
        };
        let credentials = read(&credentials)?;
        let Some(section) = credentials.section(Some(name.as_str())) else {
            return Ok(None);
        };
        let (Some(access_key_id), Some(secret_access_key)) =
            (section.get("aws_access_key_id"), section.get("aws_secret_access_key"))
        else {
            return Ok(None);
        };
        // In the config file, profiles other than `default` are written `[profile NAME]`.
        let region = match file("AWS_CONFIG_FILE", "config").filter(|f| f.is_file()) {
            Some(config) => {
                let config = read(&config)?;
                let section_name = if name == "default" {
                    name.clone()
                } else {
                    format!("profile {name}")
                };
                config
                    .section(Some(section_name))
                    .and_then(|s| s.get("region"))
                    .map(str::to_string)
            }
            None => None,
        };
        Ok(Some(SharedProfile {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: section.get("aws_session_token").map(str::to_string),
            region,
        }))
    }

    fn apply(self, builder: AmazonS3Builder, use_region: bool) -> AmazonS3Builder {
        let mut builder = builder
            .with_access_key_id(self.access_key_id)
            .with_secret_access_key(self.secret_access_key);
        if let Some(token) = self.session_token {
            builder = builder.with_token(token);
        }
        match self.region {
            Some(region) if use_region && std::env::var_os("AWS_REGION").is_none() => builder.with_region(region),
            _ => builder,
        }
    }
}

/// Where a bucket is, and how verger knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BucketRegion {
    pub bucket: String,
    pub region: String,
    /// `reported` by the store (`x-amz-bucket-region`), or `configured` (`--region`) for stores that report none.
    pub source: String,
}

impl StoreOptions {
    /// Asks the store where `bucket` is with an unsigned HeadBucket: AWS answers `x-amz-bucket-region` even
    /// when the request itself is refused. Stores that report nothing are taken to be in `--region`.
    pub async fn bucket_region(&self, bucket: &str) -> Result<BucketRegion, StoreError> {
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
            .map_err(|e| StoreError::Client(format!("cannot reach bucket {bucket}: {e}")))?;
        let reported = response
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok());
        match (reported, &self.region) {
            (Some(region), _) => Ok(BucketRegion {
                bucket: bucket.into(),
                region: region.into(),
                source: "reported".into(),
            }),
            (None, Some(region)) => Ok(BucketRegion {
                bucket: bucket.into(),
                region: region.clone(),
                source: "configured".into(),
            }),
            (None, None) => Err(StoreError::Client(format!(
                "the store does not report the region of bucket {bucket}; pass --region"
            ))),
        }
    }
}

/// Refuses any bucket whose region matches none of `allowed` (globs such as `eu-*`).
pub fn check_residency(allowed: &[String], buckets: &[BucketRegion]) -> Result<(), StoreError> {
    let mut patterns = globset::GlobSetBuilder::new();
    for pattern in allowed {
        let glob = globset::Glob::new(pattern)
            .map_err(|e| StoreError::Residency(format!("--allowed-regions {pattern:?}: {e}")))?;
        patterns.add(glob);
    }
    let patterns = patterns.build().map_err(|e| StoreError::Residency(e.to_string()))?;
    match buckets.iter().find(|b| !patterns.is_match(&b.region)) {
        Some(b) => Err(StoreError::Residency(format!(
            "bucket {} is in region {} ({}), outside --allowed-regions {}",
            b.bucket,
            b.region,
            b.source,
            allowed.join(",")
        ))),
        None => Ok(()),
    }
}

/// The region of each bucket among `locations`, refusing any outside `allowed` (no restriction when empty):
/// called before any byte moves.
pub async fn bucket_regions(locations: &[&str], store: &StoreOptions) -> Result<Vec<BucketRegion>, StoreError> {
    let allowed = &store.allowed_regions;
    let mut buckets: Vec<BucketRegion> = Vec::new();
    for location in locations {
        let Location::S3 { bucket, .. } = Location::parse(location) else {
            continue;
        };
        if buckets.iter().any(|b| b.bucket == bucket) {
            continue;
        }
        match store.bucket_region(&bucket).await {
            Ok(region) => buckets.push(region),
            // Without a restriction the region is only reported, so an unknown one does not stop the job.
            Err(e) if allowed.is_empty() => tracing::warn!("region of bucket {bucket} unknown: {e}"),
            Err(e) => return Err(e),
        }
    }
    if !allowed.is_empty() {
        check_residency(allowed, &buckets)?;
    }
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str, allow_http: bool) -> StoreOptions {
        StoreOptions {
            endpoint: Some(url.into()),
            allow_http,
            ..StoreOptions::default()
        }
    }

    #[test]
    fn residency_by_region_patterns() {
        let bucket = |region: &str| BucketRegion {
            bucket: "b".into(),
            region: region.into(),
            source: "reported".into(),
        };
        let eu = ["eu-*".to_string()];
        assert!(check_residency(&eu, &[bucket("eu-west-1"), bucket("eu-central-2")]).is_ok());
        let refused = check_residency(&eu, &[bucket("eu-west-1"), bucket("us-east-1")])
            .unwrap_err()
            .to_string();
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
