//! `verger serve`: an HTTP service over one classifier, loaded once.
//!
//! - `POST /identify` (the photo as the body, `image/*` or `application/octet-stream`, or as the first file of
//!   a `multipart/form-data` form; `?top=N&neighbours=N`) answers `verger identify --json`'s object for the
//!   photo; a photo that cannot be decoded is a 400, too many pixels or too large a body a 413, another
//!   content type a 415, each with a JSON error; the service keeps serving.
//! - `GET /healthz` says the classifier is loaded; `GET /metrics` gives request counts by route and status,
//!   identify latency and the queue in Prometheus' text format.
//!
//! Concurrency is bounded by the inference workers (one ONNX Runtime session each, made at start): requests
//! beyond them wait up to the queue timeout, then get a 503; so do requests beyond the queue's length. On
//! SIGTERM or Ctrl-C the listener closes and requests in flight finish. A listener beyond loopback needs a
//! bearer token (`Authorization: Bearer ...` on every route but `/healthz`).
//!
//! Scope: HTTP in and out. Featurizing and classifying are `verger_engine::classify`'s; this crate only
//! translates.

mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use thiserror::Error;
use tokio::sync::Semaphore;
use verger_engine::classify::{identify_bytes, Classifier, Identification};
use verger_engine::FeaturizeSettings;

use crate::metrics::Metrics;

/// Defaults of [`ServeConfig`].
pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 << 20;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests waiting for a worker, per worker, before new ones are refused at once.
pub const DEFAULT_QUEUE_PER_WORKER: usize = 32;
const MAX_TOP: usize = 100;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub address: SocketAddr,
    /// Inference workers: requests identified at once.
    pub workers: usize,
    /// Requests waiting for a worker beyond which new ones get 503 at once.
    pub queue: usize,
    /// How long a request waits for a worker before it gets 503.
    pub queue_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// The bearer token every route but `/healthz` requires; needed to listen beyond loopback.
    pub token: Option<String>,
    /// Labels and neighbours answered when the request does not say.
    pub top: usize,
    pub neighbours: usize,
}

impl ServeConfig {
    pub fn new(address: SocketAddr, workers: usize) -> Self {
        ServeConfig {
            address,
            workers,
            queue: workers * DEFAULT_QUEUE_PER_WORKER,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            token: None,
            top: 5,
            neighbours: 5,
        }
    }
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("refusing to listen on {0} without authentication: give a token (--token-file), or bind 127.0.0.1")]
    Unauthenticated(SocketAddr),
    #[error("{0}")]
    Config(String),
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the inference workers: {0}")]
    Workers(String),
}

struct Service {
    classifier: Classifier,
    settings: FeaturizeSettings,
    config: ServeConfig,
    workers: Semaphore,
    /// Requests holding or waiting for a worker.
    admitted: Semaphore,
    metrics: Metrics,
}

/// Serves `classifier` until `shutdown` completes (or SIGTERM / Ctrl-C), then lets requests in flight
/// finish. `ready` is called with the bound address once the service accepts connections.
pub async fn serve(
    classifier: Classifier,
    settings: FeaturizeSettings,
    config: ServeConfig,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if config.workers == 0 || config.max_body_bytes == 0 {
        return Err(ServeError::Config(
            "workers and the body limit must be at least 1".into(),
        ));
    }
    if config.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(ServeError::Config("the token is empty".into()));
    }
    if !config.address.ip().is_loopback() && config.token.is_none() {
        return Err(ServeError::Unauthenticated(config.address));
    }
    classifier
        .check_featurizer(&settings)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    warm_up(&settings, config.workers).await?;

    let listener = tokio::net::TcpListener::bind(config.address)
        .await
        .map_err(|source| ServeError::Listen {
            address: config.address,
            source,
        })?;
    let address = listener.local_addr().map_err(|source| ServeError::Listen {
        address: config.address,
        source,
    })?;
    let service = Arc::new(Service {
        workers: Semaphore::new(config.workers),
        admitted: Semaphore::new(config.workers + config.queue),
        metrics: Metrics::new(),
        classifier,
        settings,
        config,
    });
    let app = Router::new()
        .route("/identify", post(identify))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(service.clone(), authenticate))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(service.clone(), count))
        .with_state(service);
    tracing::info!(%address, "serving");
    ready(address);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = terminated() => {}
            }
            tracing::info!("shutting down: finishing requests in flight");
        })
        .await
        .map_err(|source| ServeError::Listen { address, source })
}

/// One session per worker (as many as the pool makes: a few on a GPU) before the first request, so that no
/// request pays for one.
async fn warm_up(settings: &FeaturizeSettings, workers: usize) -> Result<(), ServeError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let pool = settings.featurizers().map_err(|e| e.to_string())?;
        let sessions = (0..workers.min(pool.max_sessions()))
            .map(|_| pool.get())
            .collect::<Result<Vec<_>, _>>();
        sessions.map(drop).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(ServeError::Workers)
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A JSON error: `{"error": {"stage": ..., "message": ...}}`, with `photo` where there is one.
fn error(status: StatusCode, stage: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": { "stage": stage, "message": message.into() } })),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "request",
        "no such route: POST /identify, GET /healthz, GET /metrics",
    )
}

async fn healthz(State(service): State<Arc<Service>>) -> Response {
    Json(json!({
        "status": "ok",
        "classes": service.classifier.classes.len(),
        "workers": service.config.workers,
    }))
    .into_response()
}

async fn metrics_text(State(service): State<Arc<Service>>) -> Response {
    let waiting = service.config.workers + service.config.queue - service.admitted.available_permits();
    service.metrics.set_admitted(waiting);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        service.metrics.encode(),
    )
        .into_response()
}

async fn authenticate(State(service): State<Arc<Service>>, request: Request, next: middleware::Next) -> Response {
    if let Some(token) = &service.config.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // subtle compares in the same time whatever the bytes, so timing tells nothing about the token.
        if !given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes()))) {
            let mut response = error(StatusCode::UNAUTHORIZED, "auth", "a valid bearer token is required");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

async fn count(State(service): State<Arc<Service>>, request: Request, next: middleware::Next) -> Response {
    let route = match request.uri().path() {
        p @ ("/identify" | "/healthz" | "/metrics") => p.to_string(),
        _ => "other".to_string(),
    };
    let started = Instant::now();
    let response = next.run(request).await;
    service
        .metrics
        .observe(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

#[derive(Debug, Deserialize)]
struct IdentifyQuery {
    top: Option<usize>,
    neighbours: Option<usize>,
}

async fn identify(
    State(service): State<Arc<Service>>,
    query: Result<Query<IdentifyQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "request",
            "top and neighbours must be whole numbers",
        );
    };
    let top = query.top.unwrap_or(service.config.top).min(MAX_TOP);
    let neighbours = query.neighbours.unwrap_or(service.config.neighbours).min(MAX_TOP);
    let (photo, bytes) = match upload(&headers, body, service.config.max_body_bytes).await {
        Ok(upload) => upload,
        Err(response) => return response,
    };

    // Admission first (a bounded queue), then a worker within the queue timeout.
    let Ok(_admitted) = service.admitted.try_acquire() else {
        service.metrics.rejected("queue_full");
        return busy("the queue is full");
    };
    let worker = match tokio::time::timeout(service.config.queue_timeout, service.workers.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            service.metrics.rejected("queue_timeout");
            return busy("no inference worker became free in time");
        }
    };
    let job = {
        let service = service.clone();
        tokio::task::spawn_blocking(move || {
            let s = &*service;
            identify_bytes(&s.classifier, &bytes, &s.settings, top, neighbours)
        })
    };
    let outcome = job.await;
    drop(worker);
    match outcome {
        Ok(Ok(identified)) => Json(Identification {
            photo,
            identified: Some(identified),
            error: None,
        })
        .into_response(),
        Ok(Err(failed)) => {
            let status = match (failed.too_large, failed.stage.as_str()) {
                (true, _) => StatusCode::PAYLOAD_TOO_LARGE,
                (false, "decode") => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let answer = Identification {
                photo,
                identified: None,
                error: Some(failed),
            };
            (status, Json(answer)).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "infer",
            format!("worker failed: {e}"),
        ),
    }
}

fn busy(why: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "busy", format!("{why}; try again"));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// The photo's name and bytes from the body: the body itself, or the first file of a form.
async fn upload(headers: &HeaderMap, body: Body, limit: usize) -> Result<(String, Bytes), Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request",
            format!("the body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_limit(limit) as u64) {
        return Err(too_large());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    // Media types are case-insensitive; a multipart boundary is not.
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let multipart = essence == "multipart/form-data";
    if !(multipart || essence.starts_with("image/") || essence == "application/octet-stream") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request",
            format!(
                "content type {essence:?}: send the photo as image/*, application/octet-stream or multipart/form-data"
            ),
        ));
    }
    let bytes = read_body(body, limit).await?.ok_or_else(too_large)?;
    if !multipart {
        return Ok(("upload".to_string(), bytes));
    }
    let boundary = multer::parse_boundary(&content_type)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "request", format!("multipart form: {e}")))?;
    let mut form = multer::Multipart::new(
        futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) }),
        boundary,
    );
    let malformed = |e: multer::Error| error(StatusCode::BAD_REQUEST, "request", format!("multipart form: {e}"));
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        if field.file_name().is_none() && !matches!(field.name(), Some("image" | "photo" | "file")) {
            continue;
        }
        let name = field.file_name().unwrap_or("upload").to_string();
        let bytes = field.bytes().await.map_err(malformed)?;
        return Ok((name, bytes));
    }
    Err(error(
        StatusCode::BAD_REQUEST,
        "request",
        "the form holds no file (a field named image, photo or file, or any field with a file name)",
    ))
}

/// Bodies up to this size are read to the end even when over `limit`, so that the client, still sending,
/// gets the 413 rather than a reset connection; larger ones are cut off.
fn drain_limit(limit: usize) -> usize {
    limit.saturating_mul(4).max(16 << 20)
}

/// The body, or `None` if it exceeds `limit` (its rest read and dropped, up to [`drain_limit`]).
async fn read_body(body: Body, limit: usize) -> Result<Option<Bytes>, Response> {
    let mut stream = body.into_data_stream();
    let mut bytes = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error(StatusCode::BAD_REQUEST, "request", format!("reading the body: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            bytes.extend_from_slice(&chunk);
        } else if seen > drain_limit(limit) {
            break;
        }
    }
    Ok((seen <= limit).then(|| bytes.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str, length: Option<usize>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        if let Some(n) = length {
            h.insert(header::CONTENT_LENGTH, n.to_string().parse().unwrap());
        }
        h
    }

    async fn status_of(content_type: &str, body: &'static [u8], limit: usize) -> Result<(String, Bytes), StatusCode> {
        upload(&headers(content_type, Some(body.len())), Body::from(body), limit)
            .await
            .map_err(|r| r.status())
    }

    #[tokio::test]
    async fn uploads_are_read_or_refused_by_type_and_size() {
        let (name, bytes) = status_of("image/jpeg", b"abc", 10).await.unwrap();
        assert_eq!((name.as_str(), &bytes[..]), ("upload", &b"abc"[..]));
        assert_eq!(
            status_of("image/jpeg", b"abcdef", 3).await.unwrap_err(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // Without a length header (chunked), the limit still holds.
        let chunked = upload(&headers("image/png", None), Body::from(&b"abcdef"[..]), 3).await;
        assert_eq!(chunked.unwrap_err().status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            status_of("application/json", b"{}", 10).await.unwrap_err(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let form = b"--XX\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--XX\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"kiwi.jpg\"\r\nContent-Type: image/jpeg\r\n\r\nJPEGBYTES\r\n--XX--\r\n";
        let (name, bytes) = status_of("multipart/form-data; boundary=XX", form, 1000).await.unwrap();
        assert_eq!((name.as_str(), &bytes[..]), ("kiwi.jpg", &b"JPEGBYTES"[..]));
        let no_file = b"--XX\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--XX--\r\n";
        assert_eq!(
            status_of("multipart/form-data; boundary=XX", no_file, 1000)
                .await
                .unwrap_err(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of("multipart/form-data", form, 1000).await.unwrap_err(),
            StatusCode::BAD_REQUEST,
            "no boundary"
        );
    }
}
