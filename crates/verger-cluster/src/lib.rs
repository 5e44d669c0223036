//! verger on an Apache DataFusion Ballista cluster: the scheduler and executor processes with verger's
//! functions and plan codecs, and the client session that submits verger's plans to them.
//!
//! Every side needs both: the functions, so that names resolve, and the codecs, so that functions with state
//! (`featurize`'s settings, `pca_project`'s model) travel with the plan instead of resolving to whatever the
//! receiving process registered ([`verger_engine::codec`]). Executors register `featurize` with settings
//! that name no model, so a plan that arrives without the client's state fails loudly instead of running.
//!
//! With a [`Security`] folder (`verger cluster init`), every gRPC connection (client, scheduler, executors,
//! shuffle and result fetches) speaks mTLS, the scheduler admits calls by certificate role and API token
//! ([`security`]), and executors run only verger's plans whatever the mode ([`allow`]).
//!
//! It does not hold the job's logic (the client's `verger-engine` plans every cluster job).

pub mod allow;
pub mod flight;
pub mod security;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::error::BallistaError;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::serde::protobuf::GetJobStatusParams;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use ballista_core::utils::{create_grpc_client_endpoint, create_grpc_server, GrpcClientConfig, GrpcServerConfig};
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_executor::shutdown::Shutdown;
use ballista_executor::ArrowFlightServerProvider;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use verger_engine::codec::{VergerLogicalCodec, VergerPhysicalCodec};
pub use verger_engine::config::ExecutorOptions;
use verger_engine::FeaturizeSettings;

pub use ballista::prelude::SessionContextExt;
pub use ballista_core::extension::SessionConfigExt;
pub use security::{Role, Security, SecurityError};

/// Seconds between executor heartbeats, and after which the scheduler gives up on a silent executor: a lost
/// executor is noticed within half a minute (Ballista's defaults take three).
pub const HEARTBEAT_SECONDS: u64 = 5;
pub const EXECUTOR_TIMEOUT_SECONDS: u64 = 20;

pub fn logical_codec() -> Arc<dyn LogicalExtensionCodec> {
    Arc::new(VergerLogicalCodec::wrapping(Arc::new(
        BallistaLogicalExtensionCodec::default(),
    )))
}

pub fn physical_codec() -> Arc<dyn PhysicalExtensionCodec> {
    Arc::new(VergerPhysicalCodec::wrapping(Arc::new(
        BallistaPhysicalExtensionCodec::default(),
    )))
}

/// A Ballista session configuration carrying verger's codecs. One partition per plan: verger's cluster jobs
/// are one partition of work each (parallelism comes from many jobs in flight), and a job in one stage has no
/// shuffle, so a lost executor costs its running tasks only, never a fetch from a dead executor mid-job.
pub fn session_config() -> SessionConfig {
    let ballista = SessionConfig::new_with_ballista()
        .with_ballista_logical_extension_codec(logical_codec())
        .with_ballista_physical_extension_codec(physical_codec());
    verger_engine::context::configure(ballista, 1).with_round_robin_repartition(false)
}

/// [`session_config`] whose connections (to the scheduler at `scheduler`, `host:port`, and to executors)
/// speak mTLS with `security`'s credentials and carry its token.
pub fn secure_session_config(security: &Security, scheduler: Option<String>) -> SessionConfig {
    session_config()
        .with_ballista_use_tls(true)
        .with_ballista_override_create_grpc_client_endpoint(security.endpoint_override(scheduler))
        .with_ballista_grpc_metadata(security.metadata())
}

/// A session state from `config` with verger's functions (`featurize` with `settings`).
pub fn session_state(config: SessionConfig, settings: &FeaturizeSettings) -> SessionState {
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(verger_engine::context::runtime())
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    verger_engine::register_functions(&ctx, settings);
    ctx.state()
}

/// Settings for the executors' own `featurize`: no model, so that only plans carrying the client's
/// settings (through the codec) can featurize.
fn unusable_settings() -> FeaturizeSettings {
    FeaturizeSettings {
        model: verger_model::ModelSpec {
            location: "(no model: this plan reached the cluster without verger's codec)".into(),
            sha256: String::new(),
        },
        batch_size: 1,
        max_pixels: 0,
        store: Default::default(),
        device: Default::default(),
        precision: Default::default(),
    }
}

/// A client context connected to the scheduler at `url` (`df://host:port`), with verger's functions and codecs;
/// with `security`, over mTLS and with its token. Checks first that the scheduler answers this client, so
/// that a refusal (wrong CA, no certificate, no token, a secured cluster reached without `--security`) is
/// reported with its cause before any work starts.
pub async fn connect(
    url: &str,
    settings: &FeaturizeSettings,
    security: Option<&Security>,
) -> Result<SessionContext, ClusterError> {
    let authority = url
        .strip_prefix("df://")
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| ClusterError::Usage(format!("{url} is not a cluster URL (df://HOST:PORT)")))?
        .to_string();
    preflight(&authority, security).await?;
    let config = match security {
        Some(security) => secure_session_config(security, Some(authority)),
        None => session_config(),
    };
    let ctx = SessionContext::remote_with_state(url, session_state(config, settings)).await?;
    // Ballista's remote context keeps its own registry: register again on the context it returns.
    verger_engine::register_functions(&ctx, settings);
    Ok(ctx)
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Usage(String),
    /// The scheduler could not be reached or refused this client; the message says why.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Ballista(#[from] BallistaError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One harmless call (a job's status) the way jobs will be submitted, its failure translated into a cause.
async fn preflight(authority: &str, security: Option<&Security>) -> Result<(), ClusterError> {
    let endpoint = match security {
        Some(security) => security.endpoint(authority, Role::Scheduler),
        None => create_grpc_client_endpoint(
            format!("http://{authority}"),
            Some(&GrpcClientConfig::from(
                &ballista_core::config::BallistaConfig::default(),
            )),
        ),
    }
    .map_err(|e| ClusterError::Usage(format!("{authority}: {e}")))?;
    let refused = |cause: String| ClusterError::Refused(format!("the scheduler at {authority} {cause}"));
    let channel = endpoint.connect().await.map_err(|e| refused(cause(&e, security)))?;
    let mut request = tonic::Request::new(GetJobStatusParams {
        job_id: "verger-connection-check".into(),
    });
    if let Some(token) = security.and_then(Security::token) {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClusterError::Usage("the token has characters a header cannot carry".into()))?;
        request.metadata_mut().insert(security::AUTHORIZATION, value);
    }
    match SchedulerGrpcClient::new(channel).get_job_status(request).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            Err(refused(format!("refused this client: {}", status.message())))
        }
        // The scheduler's own answer about a job it does not know: the connection works.
        Err(status)
            if status.code() == tonic::Code::Internal && status.message().starts_with("Error getting status") =>
        {
            Ok(())
        }
        // Anything else is the connection failing, however the transport words it (a plain-text client
        // talking to a TLS server sees a reset, a broken pipe or an HTTP/2 protocol error, as timing goes).
        Err(status) => Err(refused(cause(&status, security))),
    }
}

/// What a failed connection means, from the chain of errors under `error`.
fn cause(error: &(dyn std::error::Error + 'static), security: Option<&Security>) -> String {
    let mut chain = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    let detail = chain.join(": ");
    let why = match security {
        Some(s) if detail.contains("UnknownIssuer") || detail.contains("invalid peer certificate") => format!(
            "presented a certificate that {} does not vouch for (another cluster's credentials?)",
            s.dir.join("ca.crt").display()
        ),
        Some(_)
            if detail.contains("CertificateRequired")
                || detail.contains("UnknownCA")
                || detail.contains("BadCertificate")
                || detail.contains("DecryptError") =>
        {
            "refused this client's certificate: it is not signed by the cluster's CA".to_string()
        }
        Some(_) if detail.contains("InvalidContentType") || detail.contains("corrupt message") => {
            "does not speak TLS: it runs without --security, or this is not a verger scheduler".to_string()
        }
        None if !detail.contains("Connection refused") && !detail.contains("dns error") => {
            "closed a plain-text connection: it is a secured cluster (pass --security DIR with the folder from \
             `verger cluster init`, or set VERGER_SECURITY)"
                .to_string()
        }
        _ if detail.contains("Connection refused") => "cannot be reached (nothing listens there)".to_string(),
        _ => "cannot be reached".to_string(),
    };
    format!("{why} [{detail}]")
}

/// The scheduler's configuration, secured by `security` if given.
fn scheduler_config(address: SocketAddr, security: Option<&Security>) -> SchedulerConfig {
    let mut config = SchedulerConfig {
        bind_host: address.ip().to_string(),
        bind_port: address.port(),
        external_host: address.ip().to_string(),
        executor_timeout_seconds: EXECUTOR_TIMEOUT_SECONDS,
        expire_dead_executor_interval_seconds: HEARTBEAT_SECONDS,
        override_config_producer: Some(Arc::new(session_config)),
        override_session_builder: Some(Arc::new(|config: SessionConfig| {
            Ok(session_state(config, &unusable_settings()))
        })),
        override_logical_codec: Some(logical_codec()),
        override_physical_codec: Some(physical_codec()),
        ..SchedulerConfig::default()
    };
    if let Some(security) = security {
        let producer = security.clone();
        config.override_config_producer = Some(Arc::new(move || secure_session_config(&producer, None)));
        // The scheduler calls executors only.
        config.override_create_grpc_client_endpoint = Some(security.endpoint_override(None));
        // Executors pull their tasks: a pushing scheduler would call executors' task servers, which Ballista
        // serves without TLS.
        config.scheduling_policy = TaskSchedulingPolicy::PullStaged;
        config.use_tls = true;
    }
    config
}

/// Runs a scheduler on `address` until the process ends. Its REST API (`/api/jobs`, `/api/executors`, ...)
/// listens on the same port. With `security`, it serves mTLS only and admits executors' calls by their
/// certificate, and clients' gRPC and REST calls by their certificate and the token.
pub async fn run_scheduler(address: SocketAddr, security: Option<Security>) -> Result<(), ClusterError> {
    let config = scheduler_config(address, security.as_ref());
    let Some(security) = security else {
        let cluster = BallistaCluster::new_from_config(&config).await?;
        return Ok(start_server(cluster, address, Arc::new(config)).await?);
    };
    config.validate()?;
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let (max_decoding, max_encoding) = (
        config.grpc_server_max_decoding_message_size as usize,
        config.grpc_server_max_encoding_message_size as usize,
    );
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config)).await?;
    let grpc = SchedulerGrpcServer::new(scheduler.clone())
        .max_decoding_message_size(max_decoding)
        .max_encoding_message_size(max_encoding);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(grpc);
    let token: Arc<str> = security
        .token()
        .ok_or_else(|| ClusterError::Usage("the scheduler needs the cluster's token".into()))?
        .into();
    let router = routes
        .routes()
        .into_axum_router()
        .merge(ballista_scheduler::api::get_routes(Arc::new(scheduler)))
        .layer(axum::middleware::from_fn(move |request, next| {
            admit(token.clone(), request, next)
        }));
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!("verger scheduler listening with mTLS on {address}");
    tonic::transport::Server::builder()
        .tls_config(security.server_tls())
        .map_err(|e| ClusterError::Usage(format!("the scheduler's TLS configuration: {e}")))?
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
        .map_err(|e| ClusterError::Refused(format!("the scheduler stopped: {e}")))
}

/// The scheduler's gate: [`security::authorize`] on the peer's verified certificate and the token.
async fn admit(token: Arc<str>, mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().cloned();
    let peer = info
        .as_ref()
        .and_then(|i| i.peer_certs())
        .and_then(|certs| certs.first().and_then(|c| security::role_of(c)));
    // Ballista reads the caller's address from axum's connection info.
    if let Some(address) = info.as_ref().and_then(|i| i.get_ref().remote_addr()) {
        request.extensions_mut().insert(ConnectInfo(address));
    }
    let authorization = request
        .headers()
        .get(security::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match security::authorize(request.uri().path(), peer, authorization, &token) {
        Ok(()) => next.run(request).await,
        Err(why) => {
            tracing::warn!(
                "refused {} from {:?}: {why}",
                request.uri().path(),
                info.and_then(|i| i.get_ref().remote_addr())
            );
            let grpc = request
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if grpc {
                tonic::Status::unauthenticated(why).into_http::<axum::body::Body>()
            } else {
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                    axum::Json(serde_json::json!({ "error": why })),
                )
                    .into_response()
            }
        }
    }
}

/// Runs an executor until the process ends or the scheduler stops it. It runs only verger's plans, on the
/// locations `options.allow_locations` names (required with `security`) ([`allow`]), and with `security`
/// serves shuffle data only to executors and clients, for well-formed job ids ([`flight`]).
pub async fn run_executor(options: ExecutorOptions, security: Option<Security>) -> Result<(), ClusterError> {
    let reach = match (options.allow_locations.is_empty(), &security) {
        (true, None) => None,
        (true, Some(_)) => {
            return Err(ClusterError::Usage(
                "an executor with --security needs --allow-location PREFIX (repeatable): the folders and \
                 s3:// prefixes its jobs read and write, the model's included"
                    .into(),
            ))
        }
        (false, _) => Some(
            allow::Reach::new(&options.allow_locations, options.endpoint.clone(), options.allow_http)
                .map_err(ClusterError::Usage)?,
        ),
    };
    let state = session_state(session_config(), &unusable_settings());
    let scheduler = format!("{}:{}", options.scheduler_host, options.scheduler_port);
    let mut config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: Some(options.bind_host),
        port: options.port,
        grpc_port: options.port + 1,
        scheduler_host: options.scheduler_host,
        scheduler_port: options.scheduler_port,
        vcores: options.slots,
        work_dir: options.work_dir,
        executor_heartbeat_interval_seconds: HEARTBEAT_SECONDS,
        override_config_producer: Some(Arc::new(session_config)),
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&state))),
        override_logical_codec: Some(logical_codec()),
        override_physical_codec: Some(physical_codec()),
        override_execution_engine: Some(Arc::new(allow::VergerPlansOnly::new(reach))),
        ..ExecutorProcessConfig::default()
    };
    if let Some(security) = security {
        let producer = (security.clone(), scheduler.clone());
        config.override_config_producer = Some(Arc::new(move || {
            secure_session_config(&producer.0, Some(producer.1.clone()))
        }));
        config.override_create_grpc_client_endpoint = Some(security.endpoint_override(Some(scheduler)));
        config.task_scheduling_policy = TaskSchedulingPolicy::PullStaged;
        let (max_decoding, max_encoding) = (
            config.grpc_max_decoding_message_size as usize,
            config.grpc_max_encoding_message_size as usize,
        );
        let flight: Arc<ArrowFlightServerProvider> = Arc::new(
            move |work_dir: String, address: SocketAddr, mut shutdown: Shutdown, grpc: GrpcServerConfig| {
                let tls = security.server_tls();
                tokio::spawn(async move {
                    let service = FlightServiceServer::new(flight::ShuffleFetchesOnly::new(work_dir))
                        .max_decoding_message_size(max_decoding)
                        .max_encoding_message_size(max_encoding);
                    create_grpc_server(&grpc)
                        .tls_config(tls)?
                        .add_service(service)
                        .serve_with_shutdown(address, shutdown.recv())
                        .await
                        .map_err(BallistaError::TonicError)
                })
            },
        );
        config.override_arrow_flight_service = Some(flight);
    }
    Ok(start_executor_process(Arc::new(config)).await?)
}
