//! `verger serve`: an HTTP service over one classifier, loaded once.
//!
//! - `POST /identify` (the photo as the body, `image/*` or `application/octet-stream`, or as the first file of
//!   a `multipart/form-data` form; `?top=N&neighbours=N`) answers `verger identify --json`'s object for the
//!   photo; a photo that cannot be decoded is a 400, too many pixels or too large a body a 413, another
//!   content type a 415, each with a JSON error; the service keeps serving.
//! - `GET /healthz` says the classifier is loaded; `GET /metrics` gives request counts by route and status,
//!   identify latency and the queue in Prometheus' text format.
//!
//! Nothing outside can exhaust it (issue 41): connections are capped, and each must send its headers within
//! the header timeout and its body within the body timeout. A request is admitted to the bounded queue before
//! its body is read; beyond the queue it gets 503 at once. Photos are admitted against a memory budget by what
//! their header says decoding will hold ([`verger_image::Header::peak_bytes`]), before any pixel is decoded:
//! one over the pixel limit (lower than a batch run's: [`DEFAULT_MAX_PIXELS`]) or over the whole budget gets
//! 413, the others wait for their share, then 503. Concurrency is bounded by the inference workers (one ONNX
//! Runtime session each, made at start): requests wait for one up to the queue timeout, then get a 503. On
//! SIGTERM or Ctrl-C the listener closes and requests in flight finish.
//!
//! A listener beyond loopback needs a bearer token (`Authorization: Bearer ...` on every route but
//! `/healthz`; at least 32 bytes, from a file only its owner can read) and TLS (`tls`), unless told it is
//! behind a TLS proxy (`insecure`): the token never travels in plain HTTP by default.
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
/// Pixels a photo may have: 64 MP holds any phone's full-resolution photo (50 MP sensors give 8,160 × 6,120),
/// where a batch run allows Pillow's 179 MP.
pub const DEFAULT_MAX_PIXELS: u64 = 64_000_000;
/// Bytes that the photos being decoded may hold together, by their headers: a 12 MP JPEG takes ~130 MB, a
/// 64 MP one ~700 MB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 1 << 30;
/// Connections open at once; more are closed as they come.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Time a connection has to send a request's headers (and a TLS handshake); an idle keep-alive connection is
/// closed after it too. hyper's own default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a request has to send its body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest bearer token accepted.
pub const MIN_TOKEN_BYTES: usize = 32;
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 << 20;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests waiting for a worker, per worker, before new ones are refused at once.
pub const DEFAULT_QUEUE_PER_WORKER: usize = 32;
const MAX_TOP: usize = 100;

/// The bearer token: never printed (its `Debug` is redacted), at least [`MIN_TOKEN_BYTES`] long.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token given as text (an environment variable), surrounding white space removed.
    pub fn new(text: &str) -> Result<Token, ServeError> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_BYTES {
            return Err(ServeError::Config(format!(
                "the token has {} bytes; use at least {MIN_TOKEN_BYTES} random ones (openssl rand -hex 32)",
                token.len()
            )));
        }
        Ok(Token(token.to_string()))
    }

    /// A token from a file that only its owner can read or write (mode 0600 or stricter).
    pub fn from_file(path: &std::path::Path) -> Result<Token, ServeError> {
        let failed = |why: String| ServeError::Config(format!("token file {why}"));
        let bytes = verger_engine::io::read_private(path).map_err(failed)?;
        let text = String::from_utf8(bytes).map_err(|_| failed(format!("{}: not text", path.display())))?;
        Token::new(&text).map_err(|e| failed(format!("{}: {e}", path.display())))
    }

    fn matches(&self, given: &str) -> bool {
        // subtle compares in the same time whatever the bytes, so timing tells nothing about the token.
        bool::from(given.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

/// The service's certificate chain and private key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

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
    pub token: Option<Token>,
    /// HTTPS with this certificate; needed to listen beyond loopback unless `insecure`.
    pub tls: Option<TlsFiles>,
    /// Plain HTTP beyond loopback (behind a proxy that terminates TLS).
    pub insecure: bool,
    /// Photos with more pixels get 413 before decoding.
    pub max_pixels: u64,
    /// Bytes that photos being decoded may hold together, by their headers.
    pub memory_budget: u64,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
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
            tls: None,
            insecure: false,
            max_pixels: DEFAULT_MAX_PIXELS,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            top: 5,
            neighbours: 5,
        }
    }
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("refusing to listen on {0} without authentication: give a token (--token-file), or bind 127.0.0.1")]
    Unauthenticated(SocketAddr),
    #[error(
        "refusing to send the token in plain HTTP on {0}: give --tls-cert and --tls-key, or --insecure behind a \
         proxy that terminates TLS, or bind 127.0.0.1"
    )]
    Plaintext(SocketAddr),
    #[error("TLS: {0}")]
    Tls(String),
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
    /// The memory budget in KiB: each photo holds its decoding's peak while it is identified.
    memory: Semaphore,
    metrics: Metrics,
}

/// Bytes in a permit of [`Service::memory`] (tokio's semaphores count in `u32`).
const MEMORY_UNIT: u64 = 1024;

/// Serves `classifier` until `shutdown` completes (or SIGTERM / Ctrl-C), then lets requests in flight
/// finish. `ready` is called with the bound address once the service accepts connections.
pub async fn serve(
    classifier: Classifier,
    mut settings: FeaturizeSettings,
    config: ServeConfig,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if config.workers == 0 || config.max_body_bytes == 0 || config.max_connections == 0 {
        return Err(ServeError::Config(
            "workers, connections and the body limit must be at least 1".into(),
        ));
    }
    let budget_units = config.memory_budget / MEMORY_UNIT;
    if budget_units == 0 || budget_units > u64::from(u32::MAX) || config.max_pixels == 0 {
        return Err(ServeError::Config(format!(
            "the memory budget must be 1 KiB to 4 TiB, and the pixel limit at least 1 (got {} bytes, {} pixels)",
            config.memory_budget, config.max_pixels
        )));
    }
    if !config.address.ip().is_loopback() {
        if config.token.is_none() {
            return Err(ServeError::Unauthenticated(config.address));
        }
        if config.tls.is_none() && !config.insecure {
            return Err(ServeError::Plaintext(config.address));
        }
    }
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    settings.max_pixels = config.max_pixels;
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
        memory: Semaphore::new(budget_units as usize),
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
        .with_state(service.clone());
    tracing::info!(%address, tls = tls.is_some(), "serving");
    ready(address);
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = terminated() => {}
        }
        tracing::info!("shutting down: finishing requests in flight");
    };
    accept(listener, app, tls, &service, stop).await;
    Ok(())
}

/// Accepts connections until `stop`, at most `max_connections` open at once, then lets the open ones finish
/// their requests (idle ones close at once).
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: &Service,
    stop: impl Future<Output = ()>,
) {
    let limit = service.config.max_connections;
    let connections = Arc::new(Semaphore::new(limit));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a connection reset before it was accepted: go on shortly.
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            service.metrics.rejected("connections");
            continue;
        };
        let (app, tls, closed) = (app.clone(), tls.clone(), closed.clone());
        let header_timeout = service.config.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    // The handshake counts against the header timeout too: a silent client is dropped.
                    if let Ok(Ok(stream)) = tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        connection(stream, app, header_timeout, closed).await;
                    }
                }
                None => connection(stream, app, header_timeout, closed).await,
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection gives its permit back when its last request is answered.
    let _ = connections.acquire_many(limit as u32).await;
}

/// Serves one HTTP/1.1 connection until the client closes it, or `closed` asks it to finish.
async fn connection<S>(stream: S, app: Router, header_timeout: Duration, mut closed: tokio::sync::watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = closed.wait_for(|closed| *closed) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// A TLS acceptor for the certificate chain and key in `files` (PEM), with rustls' ring provider, as the
/// cluster's connections use. The key file must be readable by its owner only.
fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let failed =
        |path: &std::path::Path, e: &dyn std::fmt::Display| ServeError::Tls(format!("{}: {e}", path.display()));
    let key = verger_engine::io::read_private(&files.key).map_err(ServeError::Tls)?;
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(&files.cert, &e))?;
    if certs.is_empty() {
        return Err(failed(&files.cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| failed(&files.key, &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
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
        if !given.is_some_and(|g| token.matches(g)) {
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
    // Admission first (a bounded queue), before the body is read: a flood of bodies waits nowhere.
    let Ok(_admitted) = service.admitted.try_acquire() else {
        service.metrics.rejected("queue_full");
        return busy("the queue is full");
    };
    let reading = upload(&headers, body, service.config.max_body_bytes);
    let (photo, bytes) = match tokio::time::timeout(service.config.body_timeout, reading).await {
        Ok(Ok(upload)) => upload,
        Ok(Err(response)) => return response,
        Err(_) => {
            service.metrics.rejected("body_timeout");
            let why = format!("the body did not arrive within {:?}", service.config.body_timeout);
            return error(StatusCode::REQUEST_TIMEOUT, "request", why);
        }
    };
    // Then its share of the memory budget, by what its header says decoding will hold; then a worker. A photo
    // that is not an image, or has too many pixels, goes on to fail in decoding before allocating anything.
    let peak = match verger_image::header(&bytes) {
        Ok(header) if header.width * header.height <= service.config.max_pixels => header.peak_bytes,
        _ => 0,
    };
    if peak > service.config.memory_budget {
        service.metrics.rejected("memory_budget");
        let why = format!(
            "decoding this photo would take {} MB, more than the service's memory budget of {} MB",
            peak >> 20,
            service.config.memory_budget >> 20
        );
        return error(StatusCode::PAYLOAD_TOO_LARGE, "decode", why);
    }
    let units = peak.div_ceil(MEMORY_UNIT) as u32;
    let queued = async {
        let memory = service.memory.acquire_many(units).await;
        let worker = service.workers.acquire().await;
        memory.and_then(|m| worker.map(|w| (m, w)))
    };
    let (_memory, worker) = match tokio::time::timeout(service.config.queue_timeout, queued).await {
        Ok(Ok(permits)) => permits,
        _ => {
            service.metrics.rejected("queue_timeout");
            return busy("no inference worker (or memory for this photo) became free in time");
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

    /// Issue 41, point 12: the token never shows in a log line (the config's `Debug`), is long enough, and
    /// comes from a file only its owner can read.
    #[test]
    fn the_token_is_long_private_and_never_printed() {
        let secret = "a-token-that-must-never-be-printed-0123456789";
        let mut config = ServeConfig::new(([127, 0, 0, 1], 0).into(), 1);
        config.token = Some(Token::new(secret).unwrap());
        let printed = format!("{config:?}");
        assert!(!printed.contains(secret) && printed.contains("redacted"), "{printed}");
        assert!(Token::new("too-short").is_err());

        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("verger-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loose = Token::from_file(&file).unwrap_err().to_string();
        assert!(loose.contains("chmod 600") && !loose.contains(secret), "{loose}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::from_file(&file).unwrap().matches(secret));
        std::fs::remove_dir_all(dir).unwrap();
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
