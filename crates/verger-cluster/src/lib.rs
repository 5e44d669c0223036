//! verger on an Apache DataFusion Ballista cluster: the scheduler and executor processes with verger's
//! functions and plan codecs, and the client session that submits verger's plans to them.
//!
//! Every side needs both: the functions, so that names resolve, and the codecs, so that functions with state
//! (`featurize`'s settings, `pca_project`'s model) travel with the plan instead of resolving to whatever the
//! receiving process registered ([`verger_engine::codec`]). Executors register `featurize` with settings
//! that name no model, so a plan that arrives without the client's state fails loudly instead of running.
//!
//! It does not hold the job's logic (the client's `verger-engine` plans every cluster job) nor any secret.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use verger_engine::codec::{VergerLogicalCodec, VergerPhysicalCodec};
use verger_engine::FeaturizeSettings;

pub use ballista::prelude::SessionContextExt;
pub use ballista_core::extension::SessionConfigExt;

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

/// A session state from `config` with verger's functions (`featurize` with `settings`).
pub fn session_state(config: SessionConfig, settings: &FeaturizeSettings) -> SessionState {
    let state = SessionStateBuilder::new()
        .with_config(config)
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
    }
}

/// A client context connected to the scheduler at `url` (`df://host:port`), with verger's functions and codecs.
pub async fn connect(url: &str, settings: &FeaturizeSettings) -> datafusion::error::Result<SessionContext> {
    let ctx = SessionContext::remote_with_state(url, session_state(session_config(), settings)).await?;
    // Ballista's remote context keeps its own registry: register again on the context it returns.
    verger_engine::register_functions(&ctx, settings);
    Ok(ctx)
}

/// Runs a scheduler on `address` until the process ends. Its REST API (`/api/jobs`, `/api/executors`, ...)
/// listens on the same port.
pub async fn run_scheduler(address: SocketAddr) -> ballista_core::error::Result<()> {
    let config = SchedulerConfig {
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
    let cluster = BallistaCluster::new_from_config(&config).await?;
    start_server(cluster, address, Arc::new(config)).await
}

/// Where an executor listens and which scheduler it serves.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler_host: String,
    pub scheduler_port: u16,
    pub bind_host: String,
    /// Flight (data) port; the gRPC port is `port + 1`.
    pub port: u16,
    /// Tasks run at once (default: all cores).
    pub slots: usize,
    pub work_dir: Option<String>,
}

/// Runs an executor until the process ends or the scheduler stops it.
pub async fn run_executor(options: ExecutorOptions) -> ballista_core::error::Result<()> {
    let state = session_state(session_config(), &unusable_settings());
    let config = ExecutorProcessConfig {
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
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config)).await
}
