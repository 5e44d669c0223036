//! A cluster's credentials and who may do what: `verger cluster init` makes a CA, one certificate per role
//! (scheduler, executor, client) and an API token; every gRPC connection then speaks mTLS with them, and the
//! scheduler admits each call by the role in the peer's certificate and, for clients, the token.
//!
//! Certificates name roles, not hosts (`scheduler.verger.cluster`, ...): a cluster moves between hosts
//! without re-issuing, and a certificate's role is what the scheduler checks. It does not rotate or revoke
//! certificates (make a new folder and restart), nor store anything outside its folder.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballista_core::config::BallistaConfig;
use ballista_core::extension::EndpointOverrideFn;
use ballista_core::utils::{create_grpc_client_endpoint, GrpcClientConfig};
use subtle::ConstantTimeEq;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The header a client's token travels in (`Bearer TOKEN`), for gRPC metadata and REST alike.
pub const AUTHORIZATION: &str = "authorization";

/// What a process is in the cluster; each has its own certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Scheduler,
    Executor,
    Client,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Scheduler, Role::Executor, Role::Client];

    /// The file stem of the role's certificate and key.
    pub fn name(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Executor => "executor",
            Role::Client => "client",
        }
    }

    /// The one DNS name in the role's certificate; servers are verified against it, whatever their address.
    pub fn san(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler.verger.cluster",
            Role::Executor => "executor.verger.cluster",
            Role::Client => "client.verger.cluster",
        }
    }

    fn from_san(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.san() == name)
    }

    /// Executors never hold the token: they are admitted by their certificate alone.
    fn needs_token(self) -> bool {
        self != Role::Executor
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{0}")]
    Io(String),
    #[error("making the cluster's certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

const CA: &str = "ca";
const TOKEN: &str = "token";

/// Creates `dir` (if needed) with a new CA, a certificate and key per role and an API token, every file
/// 0600; refuses to replace any of them. Returns the files written.
pub fn init(dir: &Path) -> Result<Vec<PathBuf>, SecurityError> {
    let mut planned = vec![dir.join(format!("{CA}.crt")), dir.join(format!("{CA}.key"))];
    for role in Role::ALL {
        planned.push(dir.join(format!("{role}.crt")));
        planned.push(dir.join(format!("{role}.key")));
    }
    planned.push(dir.join(TOKEN));
    if let Some(existing) = planned.iter().find(|p| p.exists()) {
        return Err(SecurityError::Invalid(format!(
            "{} already exists: verger cluster init never replaces a cluster's credentials (use another folder, \
             or remove this one to start a new cluster)",
            existing.display()
        )));
    }
    fs::create_dir_all(dir).map_err(|e| SecurityError::Io(format!("creating {}: {e}", dir.display())))?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));

    let (start, end) = validity();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "verger cluster CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    (ca_params.not_before, ca_params.not_after) = (start, end);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let mut files = vec![
        (format!("{CA}.crt"), ca_cert.pem()),
        (format!("{CA}.key"), ca_key.serialize_pem()),
    ];
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    for role in Role::ALL {
        let mut params = rcgen::CertificateParams::new(vec![role.san().to_string()])?;
        params.distinguished_name.push(rcgen::DnType::CommonName, role.san());
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        // Every role both serves and calls (executors fetch from each other; the scheduler calls executors).
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = (start, end);
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        files.push((format!("{role}.crt"), cert.pem()));
        files.push((format!("{role}.key"), key.serialize_pem()));
    }
    files.push((TOKEN.to_string(), new_token()));

    let mut written = Vec::new();
    for (name, contents) in files {
        let path = dir.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SecurityError::Io(format!("creating {}: {e}", path.display())))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| SecurityError::Io(format!("writing {}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// From yesterday (clock skew between hosts) for ten years.
fn validity() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - time::Duration::days(1), now + time::Duration::days(3652))
}

/// 256 random bits from the operating system (uuid v4 draws from it), as hex.
fn new_token() -> String {
    format!("{}{}\n", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// One process's credentials: the CA that signs every peer, its own certificate and key, and the token
/// (scheduler and clients).
#[derive(Clone)]
pub struct Security {
    pub dir: PathBuf,
    pub role: Role,
    ca: String,
    identity: Identity,
    token: Option<String>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key or the token.
        f.debug_struct("Security")
            .field("dir", &self.dir)
            .field("role", &self.role)
            .finish()
    }
}

impl Security {
    /// Reads `role`'s credentials from `dir` (made by [`init`]); refuses keys and tokens others can read.
    pub fn load(dir: &Path, role: Role) -> Result<Security, SecurityError> {
        let ca = read(dir, &format!("{CA}.crt"), false)?;
        let cert = read(dir, &format!("{role}.crt"), false)?;
        let key = read(dir, &format!("{role}.key"), true)?;
        let token = match role.needs_token() {
            true => Some(read(dir, TOKEN, true)?.trim().to_string()),
            false => None,
        };
        if token.as_deref() == Some("") {
            return Err(SecurityError::Invalid(format!(
                "{} is empty",
                dir.join(TOKEN).display()
            )));
        }
        let der = first_certificate(&cert).ok_or_else(|| {
            SecurityError::Invalid(format!(
                "{} holds no PEM certificate",
                dir.join(format!("{role}.crt")).display()
            ))
        })?;
        match role_of(&der) {
            Some(r) if r == role => {}
            other => {
                return Err(SecurityError::Invalid(format!(
                    "{} is not a {role} certificate of a verger cluster (its role: {})",
                    dir.join(format!("{role}.crt")).display(),
                    other.map_or("none".to_string(), |r| r.to_string())
                )))
            }
        }
        Ok(Security {
            dir: dir.to_path_buf(),
            role,
            ca,
            identity: Identity::from_pem(cert, key),
            token,
        })
    }

    /// The API token (scheduler and clients only).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Requires a certificate from the cluster's CA of every peer.
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    fn client_tls(&self, server: Role) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(self.identity.clone())
            .domain_name(server.san())
    }

    /// A TLS endpoint to `authority` (`host:port`), verifying the server as `server`.
    pub fn endpoint(&self, authority: &str, server: Role) -> Result<Endpoint, tonic::transport::Error> {
        let config = GrpcClientConfig::from(&BallistaConfig::default());
        create_grpc_client_endpoint(format!("https://{authority}"), Some(&config))?.tls_config(self.client_tls(server))
    }

    /// Ballista's endpoint override: every connection Ballista opens becomes mTLS. Ballista builds `http://`
    /// URIs in places (an executor's scheduler address), and tonic applies TLS to `https://` only, so the
    /// endpoint is rebuilt rather than decorated. The server is the scheduler when the authority is
    /// `scheduler` (`host:port`), an executor otherwise.
    pub fn endpoint_override(&self, scheduler: Option<String>) -> EndpointOverrideFn {
        let security = self.clone();
        Arc::new(move |endpoint: Endpoint| {
            let authority = endpoint
                .uri()
                .authority()
                .map(|a| a.to_string())
                .ok_or_else(|| format!("no host:port in {}", endpoint.uri()))?;
            let server = match scheduler.as_deref() == Some(authority.as_str()) {
                true => Role::Scheduler,
                false => Role::Executor,
            };
            Ok(security.endpoint(&authority, server)?)
        })
    }

    /// The gRPC metadata a client sends with every call to the scheduler.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::new();
        if let Some(token) = &self.token {
            metadata.insert(AUTHORIZATION.to_string(), format!("Bearer {token}"));
        }
        metadata
    }
}

fn read(dir: &Path, name: &str, secret: bool) -> Result<String, SecurityError> {
    let path = dir.join(name);
    fs::metadata(&path).map_err(|e| {
        SecurityError::Io(format!(
            "{}: {e} (make a cluster's credentials with `verger cluster init {}`)",
            path.display(),
            dir.display()
        ))
    })?;
    // Keys and the token through the project's one owner-only reader.
    let bytes = match secret {
        true => verger_engine::io::read_private(&path).map_err(SecurityError::Invalid)?,
        false => fs::read(&path).map_err(|e| SecurityError::Io(format!("{}: {e}", path.display())))?,
    };
    String::from_utf8(bytes).map_err(|_| SecurityError::Invalid(format!("{}: not text", path.display())))
}

/// The first certificate of a PEM text, as DER.
fn first_certificate(pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (pem.label == "CERTIFICATE").then_some(pem.contents)
}

/// The role named in a certificate (DER), if it is one of verger's. Only meaningful for certificates the
/// TLS layer has already verified against the cluster's CA.
pub fn role_of(der: &[u8]) -> Option<Role> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Role::from_san(dns),
        _ => None,
    })
}

/// Who may call a scheduler path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// An executor's own calls: admitted by an executor certificate.
    Executor,
    /// Everything else (jobs, sessions, the REST API): a client certificate and the token.
    Client,
}

/// The scheduler's gRPC calls only executors make.
const EXECUTOR_CALLS: [&str; 5] = [
    "PollWork",
    "RegisterExecutor",
    "HeartBeatFromExecutor",
    "UpdateTaskStatus",
    "ExecutorStopped",
];

/// Who may call `path` on the scheduler.
pub fn caller_for(path: &str) -> Caller {
    match path.strip_prefix("/ballista.protobuf.SchedulerGrpc/") {
        Some(method) if EXECUTOR_CALLS.contains(&method) => Caller::Executor,
        _ => Caller::Client,
    }
}

/// Admits a call to `path` from a peer whose verified certificate names `peer`, presenting `authorization`
/// (the header's value), against the scheduler's `token`; the refusal says why.
pub fn authorize(path: &str, peer: Option<Role>, authorization: Option<&str>, token: &str) -> Result<(), String> {
    match caller_for(path) {
        Caller::Executor => match peer {
            Some(Role::Executor) => Ok(()),
            other => Err(format!(
                "{path} is for executors; this peer's certificate is {}",
                other.map_or("not a verger cluster's".to_string(), |r| format!("a {r}'s"))
            )),
        },
        Caller::Client => {
            if peer != Some(Role::Client) {
                return Err(format!(
                    "{path} is for clients; this peer's certificate is {}",
                    peer.map_or("not a verger cluster's".to_string(), |r| format!("a {r}'s"))
                ));
            }
            let presented = authorization.and_then(|v| v.strip_prefix("Bearer "));
            match presented {
                Some(p) if bool::from(p.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
                Some(_) => Err("the API token was refused (not this cluster's token)".to_string()),
                None => Err("the API token is required (Authorization: Bearer TOKEN)".to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn init_writes_private_files_once_and_load_reads_each_role() {
        let dir = folder();
        let cluster = dir.path().join("cluster");
        let written = init(&cluster).unwrap();
        assert_eq!(written.len(), 9);
        for path in &written {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let again = init(&cluster).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
        for role in Role::ALL {
            let security = Security::load(&cluster, role).unwrap();
            assert_eq!(security.role, role);
            assert_eq!(security.token().is_some(), role != Role::Executor);
        }
        let token = fs::read_to_string(cluster.join("token")).unwrap();
        assert_eq!(token.trim().len(), 64);
        assert!(token.trim().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(token, {
            let other = dir.path().join("other");
            init(&other).unwrap();
            fs::read_to_string(other.join("token")).unwrap()
        });
    }

    #[test]
    fn certificates_name_their_role() {
        let dir = folder();
        init(dir.path()).unwrap();
        for role in Role::ALL {
            let pem = fs::read_to_string(dir.path().join(format!("{role}.crt"))).unwrap();
            assert_eq!(role_of(&first_certificate(&pem).unwrap()), Some(role));
        }
        let ca = fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        assert_eq!(role_of(&first_certificate(&ca).unwrap()), None);
    }

    #[test]
    fn load_refuses_missing_swapped_and_readable_files() {
        let dir = folder();
        let missing = Security::load(dir.path(), Role::Client).unwrap_err().to_string();
        assert!(
            missing.contains("ca.crt") && missing.contains("verger cluster init"),
            "{missing}"
        );

        init(dir.path()).unwrap();
        let key = dir.path().join("client.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let readable = Security::load(dir.path(), Role::Client).unwrap_err().to_string();
        assert!(
            readable.contains("client.key") && readable.contains("chmod 600"),
            "{readable}"
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

        // An executor's certificate put where the client's belongs.
        fs::copy(dir.path().join("executor.crt"), dir.path().join("client.crt")).unwrap();
        let swapped = Security::load(dir.path(), Role::Client).unwrap_err().to_string();
        assert!(
            swapped.contains("not a client certificate") && swapped.contains("executor"),
            "{swapped}"
        );
    }

    #[test]
    fn executor_calls_need_an_executor_certificate() {
        let poll = "/ballista.protobuf.SchedulerGrpc/PollWork";
        assert_eq!(authorize(poll, Some(Role::Executor), None, "t"), Ok(()));
        let client = authorize(poll, Some(Role::Client), Some("Bearer t"), "t").unwrap_err();
        assert!(
            client.contains("for executors") && client.contains("client"),
            "{client}"
        );
        assert!(authorize(poll, None, None, "t").is_err());
    }

    #[test]
    fn client_calls_and_rest_need_a_client_certificate_and_the_token() {
        for path in [
            "/ballista.protobuf.SchedulerGrpc/ExecuteQuery",
            "/api/executors",
            "/api/job/abc",
            "/",
        ] {
            assert_eq!(
                authorize(path, Some(Role::Client), Some("Bearer secret"), "secret"),
                Ok(())
            );
            let none = authorize(path, Some(Role::Client), None, "secret").unwrap_err();
            assert!(none.contains("token is required"), "{none}");
            let wrong = authorize(path, Some(Role::Client), Some("Bearer secreT"), "secret").unwrap_err();
            assert!(wrong.contains("refused"), "{wrong}");
            let longer = authorize(path, Some(Role::Client), Some("Bearer secret2"), "secret");
            assert!(longer.is_err());
            let basic = authorize(path, Some(Role::Client), Some("Basic secret"), "secret");
            assert!(basic.is_err());
            // An executor's key does not submit jobs, even with the token.
            let executor = authorize(path, Some(Role::Executor), Some("Bearer secret"), "secret").unwrap_err();
            assert!(executor.contains("for clients"), "{executor}");
        }
    }
}
