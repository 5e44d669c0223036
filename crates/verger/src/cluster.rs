//! The cluster's calls: credentials, the scheduler and executor processes, and a run's connection to a
//! scheduler. With the `cluster` feature they run on Apache DataFusion Ballista (`verger-cluster`); without it
//! each answers [`Error::ClusterNotBuilt`], so that every front end keeps the same commands and says which
//! build has them.

use std::path::{Path, PathBuf};

use crate::Error;
#[cfg(feature = "cluster")]
use crate::{default_threads, runtime, JobConfig};

/// The environment variable naming a `verger cluster init` folder, for processes given no `--security`.
pub const SECURITY_ENV: &str = "VERGER_SECURITY";

pub use verger_engine::config::ExecutorOptions;

/// How a cluster process protects itself: mTLS and the token from a `verger cluster init` folder, or nothing
/// (loopback only, unless the network is explicitly trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterGuard {
    Secured(PathBuf),
    /// No authentication or encryption; `network` allows a non-loopback address.
    Insecure {
        network: bool,
    },
}

#[cfg(feature = "cluster")]
mod ballista {
    use verger_cluster::{Role, Security};

    use super::{ClusterGuard, SECURITY_ENV};
    use crate::Error;

    pub fn cluster_error(e: impl std::fmt::Display) -> Error {
        Error::Cluster(e.to_string())
    }

    impl ClusterGuard {
        /// Loads `role`'s credentials, or checks that an unsecured process listens where only this host
        /// reaches it.
        pub(crate) fn security(&self, role: Role, host: &str) -> Result<Option<Security>, Error> {
            match self {
                ClusterGuard::Secured(dir) => Ok(Some(Security::load(dir, role).map_err(cluster_error)?)),
                ClusterGuard::Insecure { network } => {
                    let loopback =
                        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                    if !loopback && !network {
                        return Err(Error::Config(format!(
                            "refusing to listen on {host} without --security: anyone who reaches it could submit \
                             plans, read job details and cancel jobs. Make credentials with `verger cluster init \
                             DIR` and pass --security DIR (or set {SECURITY_ENV}), or pass --insecure on a network \
                             you trust"
                        )));
                    }
                    if *network {
                        tracing::warn!(
                            "--insecure: this {role} accepts unauthenticated, unencrypted connections on {host}; \
                             anyone who reaches it can run plans and cancel jobs"
                        );
                    }
                    Ok(None)
                }
            }
        }
    }
}

/// Connects a run to the scheduler at `url` with the client's credentials of `config`.
#[cfg(feature = "cluster")]
pub(crate) fn connect(
    config: &JobConfig,
    url: &str,
    runtime: &tokio::runtime::Runtime,
) -> Result<datafusion::prelude::SessionContext, Error> {
    use verger_cluster::{Role, Security};
    let security = match &config.cluster_security {
        Some(dir) => Some(Security::load(dir, Role::Client).map_err(ballista::cluster_error)?),
        None => None,
    };
    runtime
        .block_on(verger_cluster::connect(url, &config.featurize, security.as_ref()))
        .map_err(|e| Error::Cluster(format!("connecting to the cluster at {url}: {e}")))
}

#[cfg(not(feature = "cluster"))]
pub(crate) fn connect(
    _config: &crate::JobConfig,
    _url: &str,
    _runtime: &tokio::runtime::Runtime,
) -> Result<datafusion::prelude::SessionContext, Error> {
    Err(Error::ClusterNotBuilt {
        what: "a cluster run (--cluster)",
    })
}

/// Creates a cluster's credentials in `dir` (a CA, a certificate per role, the API token; files 0600); returns
/// the files written. Refuses to replace existing credentials.
pub fn cluster_init(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    crate::require_cluster("`verger cluster init`")?;
    #[cfg(feature = "cluster")]
    return verger_cluster::security::init(dir).map_err(ballista::cluster_error);
    #[cfg(not(feature = "cluster"))]
    unreachable!("{} is refused above", dir.display())
}

/// Runs a cluster scheduler on `address` until the process ends.
pub fn scheduler(address: std::net::SocketAddr, guard: &ClusterGuard) -> Result<(), Error> {
    crate::require_cluster("`verger scheduler`")?;
    #[cfg(feature = "cluster")]
    {
        let security = guard.security(verger_cluster::Role::Scheduler, &address.ip().to_string())?;
        runtime(default_threads())?
            .block_on(verger_cluster::run_scheduler(address, security))
            .map_err(ballista::cluster_error)
    }
    #[cfg(not(feature = "cluster"))]
    unreachable!("{address} {guard:?} is refused above")
}

/// Runs a cluster executor until the process ends or the scheduler stops it.
pub fn executor(options: ExecutorOptions, guard: &ClusterGuard) -> Result<(), Error> {
    crate::require_cluster("`verger executor`")?;
    #[cfg(feature = "cluster")]
    {
        let security = guard.security(verger_cluster::Role::Executor, &options.bind_host)?;
        runtime(default_threads())?
            .block_on(verger_cluster::run_executor(options, security))
            .map_err(ballista::cluster_error)
    }
    #[cfg(not(feature = "cluster"))]
    unreachable!("{options:?} {guard:?} is refused above")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cluster call of a build without the cluster names the build that has it; with the cluster, the
    /// same calls get past that check (and fail on what they were given instead).
    #[test]
    fn a_build_without_the_cluster_names_the_build_with_it() {
        // Under a file, so that no folder can be made there.
        let file = tempfile::NamedTempFile::new().unwrap();
        let missing = file.path().join("credentials");
        let outcomes = [
            cluster_init(&missing).map(|_| ()),
            scheduler(([127, 0, 0, 1], 1).into(), &ClusterGuard::Secured(missing.clone())),
        ];
        for outcome in outcomes {
            let e = outcome.expect_err("neither call can succeed here");
            match crate::HAS_CLUSTER {
                false => {
                    assert!(matches!(e, Error::ClusterNotBuilt { .. }), "{e}");
                    assert!(e.to_string().contains("scripts/setup --cluster"), "{e}");
                }
                true => assert!(!matches!(e, Error::ClusterNotBuilt { .. }), "{e}"),
            }
        }
    }
}
