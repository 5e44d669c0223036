//! One writer per output: a run claims its output before writing anything and holds the claim until it ends,
//! so a second run on the same output (a scheduled job and a manual re-run, say) fails at once, naming the
//! run that holds it, instead of both replacing each other's files.
//!
//! - **Local folders**: an exclusive `flock` on `OUT/_CLAIM`, which the kernel drops when the process ends
//!   however it ends (`kill -9`, a crash), so no stale lock survives. The file also says who holds it.
//! - **Object stores**: a lease object `OUT/_CLAIM` created only if absent (`If-None-Match: *`), carrying the
//!   run's id, host, process and start time and an expiry. The holder renews it every quarter of its lifetime
//!   with `If-Match` on the version it wrote, so a renewal never overwrites someone else's lease. Another run
//!   takes a lease over only when it is **stale**: expired for longer than its lifetime again (room for clock
//!   differences between hosts: with the default 60 s lifetime, after 2 minutes without renewal), or held by a
//!   process on this very host that no longer exists (so `--resume` after a `kill -9` goes on at once). The
//!   takeover is itself a conditional put on the stale version, so of two takers one wins. A holder whose
//!   renewal finds another version, or that could not renew before its lease expired, has lost the claim and
//!   must commit nothing: it stops at once, and right before committing it renews once more
//!   ([`OutputClaim::confirm`]). Its release is a last conditional put, marking the lease released.
//!
//! It does not order runs or queue them: the second run fails, and the user decides.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::output::OutputStore;
use super::StoreError;

/// The claim's file in the output folder (ignored when deciding whether an output is empty).
pub const CLAIM: &str = "_CLAIM";

/// Who holds an output, as its claim file records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub run_id: String,
    pub host: String,
    /// The kernel's boot id: a pid means the same process only within one boot.
    pub boot_id: String,
    pub pid: u32,
    /// The process's start time in clock ticks since boot: a pid means the same process only with it.
    pub pid_start: u64,
    /// The PID namespace (`pid:[inode]`): containers on one host share its name and boot id, not their pids.
    #[serde(default)]
    pub pid_ns: String,
    pub started_at: String,
    pub started_at_ms: u64,
    /// Until when the lease holds without renewal (object stores only; 0 for a local lock).
    pub expires_at_ms: u64,
    pub ttl_s: u64,
    /// Given up by its run: free for the next one at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} on host {}, pid {}, started at {}",
            self.run_id, self.host, self.pid, self.started_at
        )
    }
}

impl Holder {
    fn this_process(ttl_s: u64) -> Holder {
        let now = SystemTime::now();
        let pid = std::process::id();
        Holder {
            run_id: uuid::Uuid::new_v4().to_string(),
            host: hostname(),
            boot_id: boot_id(),
            pid,
            pid_start: process_start(pid).unwrap_or(0),
            pid_ns: pid_namespace(),
            started_at: humantime::format_rfc3339_seconds(now).to_string(),
            started_at_ms: millis(now),
            expires_at_ms: 0,
            ttl_s,
            released: false,
        }
    }

    fn renewed(&self) -> Holder {
        Holder {
            expires_at_ms: millis(SystemTime::now()) + self.ttl_s * 1000,
            ..self.clone()
        }
    }

    /// Why a lease read from the store may be taken over, if it may.
    fn stale(&self, now_ms: u64) -> Option<String> {
        if self.released {
            return Some("its run released it".into());
        }
        // A pid names the same process only on this host, in this boot and in this PID namespace; a lease from
        // another namespace (another container of this host) is judged by its expiry alone.
        let here = self.host == hostname()
            && self.boot_id == boot_id()
            && !self.pid_ns.is_empty()
            && self.pid_ns == pid_namespace();
        if here && process_start(self.pid) != Some(self.pid_start) {
            return Some(format!("its process {} on this host has ended", self.pid));
        }
        let allowance_ms = self.ttl_s.max(1) * 1000;
        (now_ms > self.expires_at_ms + allowance_ms).then(|| {
            format!(
                "not renewed for {} s (lease of {} s)",
                (now_ms - self.expires_at_ms) / 1000 + self.ttl_s,
                self.ttl_s
            )
        })
    }
}

/// A held claim; released by [`OutputClaim::release`] (or, for a local lock, when the process ends).
pub struct OutputClaim {
    output: String,
    holder: Holder,
    kind: Kind,
}

enum Kind {
    /// The open, locked claim file.
    Local {
        file: File,
        path: PathBuf,
    },
    Lease(Lease),
}

struct Lease {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    /// The version this run last wrote, and why the claim was lost, if it was.
    state: Arc<Mutex<LeaseState>>,
    /// Held around each conditional write of the lease (a renewal, [`OutputClaim::confirm`]'s, the release),
    /// so that each writes on the version the one before wrote.
    writes: Arc<futures::lock::Mutex<()>>,
    renewer: tokio::task::JoinHandle<()>,
}

struct LeaseState {
    version: UpdateVersion,
    expires_at_ms: u64,
    lost: Option<String>,
}

impl OutputClaim {
    /// Claims `out` for this run, before anything is written to it; `ttl_s` is an object-store lease's lifetime.
    pub async fn take(out: &OutputStore, ttl_s: u64) -> Result<OutputClaim, StoreError> {
        let holder = Holder::this_process(ttl_s.max(1));
        let kind = match out.local_folder() {
            Some(folder) => lock_local(out.display(), &folder, &holder)?,
            None => take_lease(out, &holder).await?,
        };
        tracing::info!(output = out.display(), %holder, "claimed the output");
        Ok(OutputClaim {
            output: out.display().to_string(),
            holder,
            kind,
        })
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Fails if this run no longer holds the output as far as it knows (its lease taken over at a renewal, or
    /// expired); [`OutputClaim::confirm`] asks the store.
    pub fn check(&self) -> Result<(), StoreError> {
        let Kind::Lease(lease) = &self.kind else {
            return Ok(());
        };
        let state = lease.state.lock().unwrap_or_else(|p| p.into_inner());
        let reason = match &state.lost {
            Some(reason) => reason.clone(),
            None if millis(SystemTime::now()) >= state.expires_at_ms => {
                "its lease expired before it could be renewed".to_string()
            }
            None => return Ok(()),
        };
        Err(StoreError::ClaimLost {
            output: self.output.clone(),
            reason,
        })
    }

    /// Fails if this run no longer holds the output, asking the store for a lease: a renewal conditional on the
    /// version this run last wrote, so that a takeover since the last renewal is found out now. Call right
    /// before committing. A store that cannot be reached now leaves the answer to the lease's expiry.
    pub async fn confirm(&self) -> Result<(), StoreError> {
        self.check()?;
        if let Kind::Lease(lease) = &self.kind {
            renew_once(
                lease.store.as_ref(),
                &lease.path,
                &self.holder,
                &lease.state,
                &lease.writes,
            )
            .await;
        }
        self.check()
    }

    /// Resolves once this run has lost the output (a lease taken over, or expired before it could be renewed),
    /// with the error that says so; never for a local lock, which only ends with the process. A run stops its
    /// work on it, so that a run that lost its lease writes nothing more.
    pub async fn lost(&self) -> StoreError {
        loop {
            match (&self.kind, self.check()) {
                (_, Err(e)) => return e,
                (Kind::Local { .. }, Ok(())) => std::future::pending::<()>().await,
                (Kind::Lease(_), Ok(())) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Gives the output up. A local claim file is removed. A lease is marked released by a put conditional on
    /// the version this run last wrote, so a lease another run has taken over meanwhile is never touched;
    /// the released lease stays (object stores have no conditional delete, and an unconditional one could
    /// remove the next run's lease) and the next run takes it over at once.
    pub async fn release(self) {
        match self.kind {
            Kind::Local { file, path } => {
                // Removed while still locked: a run waiting on the old file sees it was replaced and retries.
                let _ = std::fs::remove_file(&path);
                drop(file);
            }
            Kind::Lease(lease) => {
                // No renewal in flight: one aborted mid-write could have written a version this run never saw
                // (the release's condition would then fail, and the lease be left to expire).
                let _writing = lease.writes.lock().await;
                lease.renewer.abort();
                let version = {
                    let state = lease.state.lock().unwrap_or_else(|p| p.into_inner());
                    match state.lost {
                        Some(_) => return,
                        None => state.version.clone(),
                    }
                };
                let released = Holder {
                    released: true,
                    expires_at_ms: 0,
                    ..self.holder.clone()
                };
                let payload = PutPayload::from(serde_json::to_vec(&released).expect("lease serializes"));
                match lease
                    .store
                    .put_opts(&lease.path, payload, PutOptions::from(PutMode::Update(version)))
                    .await
                {
                    Ok(_) => {}
                    Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
                        tracing::warn!("the lease of {} was no longer this run's; left as it is", self.output)
                    }
                    Err(e) => tracing::warn!("could not release the lease of {}: {e}", self.output),
                }
            }
        }
    }
}

fn lock_local(output: &str, folder: &std::path::Path, holder: &Holder) -> Result<Kind, StoreError> {
    std::fs::create_dir_all(folder).map_err(|e| StoreError::io(folder, e))?;
    let path = folder.join(CLAIM);
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(StoreError::io(&path, error));
            }
            // The holder writes its details right after locking: give it a moment to.
            let mut holder = None;
            for _ in 0..50 {
                holder = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
                if holder.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let holder = holder.map_or_else(|| "its details are unreadable".to_string(), |h| h.to_string());
            return Err(StoreError::Busy {
                output: output.to_string(),
                holder,
            });
        }
        // The holder before us may have removed the file as it finished: then this lock guards nothing.
        use std::os::unix::fs::MetadataExt;
        let locked = file.metadata().map_err(|e| StoreError::io(&path, e))?;
        match std::fs::metadata(&path) {
            Ok(current) if current.ino() == locked.ino() && current.dev() == locked.dev() => {}
            _ => continue,
        }
        file.set_len(0).map_err(|e| StoreError::io(&path, e))?;
        std::io::Write::write_all(&mut &file, &serde_json::to_vec(holder).expect("holder serializes"))
            .map_err(|e| StoreError::io(&path, e))?;
        return Ok(Kind::Local { file, path });
    }
}

/// Refuses a store that does not honour conditional creates (`If-None-Match: *`), on which two runs could both
/// believe they hold the output: a probe object is created twice, and the second create must fail.
async fn check_conditional_creates(
    store: &dyn ObjectStore,
    probe: &ObjectPath,
    output: &str,
) -> Result<(), StoreError> {
    let failed = |source| StoreError::Object {
        location: format!("{}/{CLAIM}.probe", output.trim_end_matches('/')),
        source,
    };
    let create = || {
        store.put_opts(
            probe,
            PutPayload::from_static(b"probe"),
            PutOptions::from(PutMode::Create),
        )
    };
    create().await.map_err(failed)?;
    let second = create().await;
    store.delete(probe).await.map_err(failed)?;
    match second {
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(()),
        Err(e) => Err(failed(e)),
        Ok(_) => Err(StoreError::Client(format!(
            "{output}: this store ignores conditional creates (If-None-Match), so two runs could both claim \
             the output; verger writes only to stores that honour them (AWS S3, SeaweedFS, MinIO, R2 do)"
        ))),
    }
}

async fn take_lease(out: &OutputStore, holder: &Holder) -> Result<Kind, StoreError> {
    let (store, path) = (out.object_store(), out.object_path(CLAIM));
    let probe = out.object_path(&format!("{CLAIM}.probe-{}", uuid::Uuid::new_v4()));
    check_conditional_creates(store.as_ref(), &probe, out.display()).await?;
    let failed = |source| StoreError::Object {
        location: format!("{}/{CLAIM}", out.display().trim_end_matches('/')),
        source,
    };
    let lease = holder.renewed();
    // A few rounds: a stale lease can be taken over by someone else between our read and our put.
    for _ in 0..5 {
        let mode = match store.get(&path).await {
            Err(object_store::Error::NotFound { .. }) => PutMode::Create,
            Err(e) => return Err(failed(e)),
            Ok(found) => {
                let version = UpdateVersion {
                    e_tag: found.meta.e_tag.clone(),
                    version: found.meta.version.clone(),
                };
                let bytes = found.bytes().await.map_err(failed)?;
                let Ok(other) = serde_json::from_slice::<Holder>(&bytes) else {
                    return Err(StoreError::Client(format!(
                        "{}/{CLAIM} is not a verger lease; remove it if no run is writing there",
                        out.display().trim_end_matches('/')
                    )));
                };
                match other.stale(millis(SystemTime::now())) {
                    None => {
                        return Err(StoreError::Busy {
                            output: out.display().to_string(),
                            holder: other.to_string(),
                        })
                    }
                    Some(why) => {
                        tracing::warn!("taking over the lease of {} ({other}): {why}", out.display());
                        PutMode::Update(version)
                    }
                }
            }
        };
        let payload = PutPayload::from(serde_json::to_vec(&lease).expect("lease serializes"));
        match store.put_opts(&path, payload, PutOptions::from(mode)).await {
            Ok(written) => {
                let state = Arc::new(Mutex::new(LeaseState {
                    version: UpdateVersion {
                        e_tag: written.e_tag,
                        version: written.version,
                    },
                    expires_at_ms: lease.expires_at_ms,
                    lost: None,
                }));
                let writes = Arc::new(futures::lock::Mutex::new(()));
                let renewer = tokio::spawn(renew(
                    store.clone(),
                    path.clone(),
                    lease.clone(),
                    state.clone(),
                    writes.clone(),
                ));
                return Ok(Kind::Lease(Lease {
                    store,
                    path,
                    state,
                    writes,
                    renewer,
                }));
            }
            // Someone else created or took it over first: look again.
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => continue,
            Err(e) => return Err(failed(e)),
        }
    }
    Err(StoreError::Client(format!(
        "{}/{CLAIM}: the lease kept changing hands; try again",
        out.display().trim_end_matches('/')
    )))
}

/// Renews the lease every quarter of its lifetime until aborted or lost.
async fn renew(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    lease: Holder,
    state: Arc<Mutex<LeaseState>>,
    writes: Arc<futures::lock::Mutex<()>>,
) {
    let period = Duration::from_millis(lease.ttl_s * 1000 / 4).max(Duration::from_millis(250));
    loop {
        tokio::time::sleep(period).await;
        if !renew_once(store.as_ref(), &path, &lease, &state, &writes).await {
            return;
        }
    }
}

/// One renewal of `holder`'s lease, conditional on the version this run last wrote; false once it is lost.
async fn renew_once(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    holder: &Holder,
    state: &Mutex<LeaseState>,
    writes: &futures::lock::Mutex<()>,
) -> bool {
    let _writing = writes.lock().await;
    let renewed = holder.renewed();
    let version = {
        let state = state.lock().unwrap_or_else(|p| p.into_inner());
        if state.lost.is_some() {
            return false;
        }
        state.version.clone()
    };
    let payload = PutPayload::from(serde_json::to_vec(&renewed).expect("lease serializes"));
    match store
        .put_opts(path, payload, PutOptions::from(PutMode::Update(version)))
        .await
    {
        Ok(written) => {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            state.version = UpdateVersion {
                e_tag: written.e_tag,
                version: written.version,
            };
            state.expires_at_ms = renewed.expires_at_ms;
            true
        }
        Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            state.lost = Some("another run took its lease over".into());
            tracing::error!("lost the lease on the output: another run took it over");
            false
        }
        // A store that is down for a while: keep trying; `check` fails once the lease has expired.
        Err(e) => {
            tracing::warn!("could not renew the lease on the output: {e}");
            true
        }
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::store::StoreOptions;

    #[tokio::test]
    async fn a_local_output_has_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputStore::open(dir.path().join("out").to_str().unwrap(), &StoreOptions::default()).unwrap();
        let first = OutputClaim::take(&out, 60).await.unwrap();
        let refused = OutputClaim::take(&out, 60)
            .await
            .err()
            .expect("a second claim is refused");
        let message = refused.to_string();
        assert!(message.contains("being written by another verger run"), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        assert!(message.contains(&first.holder().run_id), "{message}");
        assert!(out.is_empty().await.unwrap(), "the claim alone is no content");
        first.release().await;
        assert!(!dir.path().join("out").join(CLAIM).exists());
        let again = OutputClaim::take(&out, 60).await.expect("free again once released");
        again.release().await;
    }

    #[test]
    fn leases_are_stale_when_expired_past_the_allowance_or_their_process_is_gone() {
        let mut lease = Holder::this_process(10).renewed();
        let now = millis(SystemTime::now());
        assert_eq!(lease.stale(now), None, "a fresh lease of a live process");
        assert_eq!(lease.stale(now + 15_000), None, "expired, but within the allowance");
        assert!(lease.stale(now + 25_000).is_some(), "expired past the allowance");
        lease.pid_start += 1;
        assert!(
            lease.stale(now).unwrap().contains("has ended"),
            "same host, another process"
        );
        lease.pid_ns = "pid:[1]".into();
        assert_eq!(
            lease.stale(now),
            None,
            "another PID namespace (a container on this host): judged by expiry only"
        );
        lease.pid_ns = pid_namespace();
        lease.pid_start -= 1;
        lease.host = "elsewhere".into();
        assert_eq!(
            lease.stale(now),
            None,
            "a process on another host is judged by expiry only"
        );
    }

    /// A store that ignores conditional creates: every put overwrites, as some S3-compatible stores do.
    #[derive(Debug)]
    struct Careless(object_store::memory::InMemory);

    impl std::fmt::Display for Careless {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Careless")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Careless {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: PutPayload,
            mut options: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            options.mode = PutMode::Overwrite;
            self.0.put_opts(location, payload, options).await
        }
        async fn put_multipart_opts(
            &self,
            location: &ObjectPath,
            options: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, options).await
        }
        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    /// Issue 41, point 5: a store that ignores `If-None-Match` is refused before a lease is taken on it; one
    /// that honours it passes, and the probe is removed either way.
    #[tokio::test]
    async fn stores_that_ignore_conditional_creates_are_refused() {
        let probe = ObjectPath::from("out/_CLAIM.probe-test");
        let honest = object_store::memory::InMemory::new();
        check_conditional_creates(&honest, &probe, "s3://b/out").await.unwrap();
        assert!(honest.head(&probe).await.is_err(), "the probe is removed");
        let careless = Careless(object_store::memory::InMemory::new());
        let refused = check_conditional_creates(&careless, &probe, "s3://b/out")
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("ignores conditional creates"), "{refused}");
        assert!(careless.head(&probe).await.is_err(), "the probe is removed");
    }

    #[test]
    fn this_process_start_time_is_known() {
        assert!(process_start(std::process::id()).is_some());
        assert_eq!(process_start(u32::MAX), None);
    }
}
