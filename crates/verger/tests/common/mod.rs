//! Helpers shared by the binary's end-to-end tests.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use verger_testdata::fruits360_dir;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn verger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(args)
        .output()
        .expect("verger runs")
}

/// The Python of `.venv`, where scripts/setup installed pyarrow and pandas.
/// `verger run --input INPUT --output OUTPUT` followed by `extra`.
pub fn run_args<'a>(input: &'a Path, output: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

pub fn python(script: &str, args: &[&str]) -> Output {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.is_file(), "{} missing: run scripts/setup", python.display());
    Command::new(python)
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python runs")
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `attempt` until it succeeds, for up to 60 s (a server still starting), else fails naming `what`.
pub fn until_success(what: &str, mut attempt: impl FnMut() -> Output) {
    let started = Instant::now();
    loop {
        let out = attempt();
        if out.status.success() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what} failed: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The JSON file at `path`.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// What a process printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies the first `n` Training images of `class` (by name) into the folder `to`.
pub fn copy_images(class: &str, to: &Path, n: usize) {
    let from = fruits360_dir().join("Training").join(class);
    std::fs::create_dir_all(to).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&from).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().take(n) {
        std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
    }
}

/// 3 classes x 8 real images, plus an empty file and a text file named .jpg.
pub fn small_input(dir: &Path) {
    for class in ["Kiwi", "Lemon", "Orange"] {
        copy_images(class, &dir.join(class), 8);
    }
    std::fs::create_dir_all(dir.join("Broken")).unwrap();
    std::fs::write(dir.join("Broken/empty.jpg"), b"").unwrap();
    std::fs::write(dir.join("Broken/notes.jpg"), b"this is not an image").unwrap();
    std::fs::write(dir.join("Broken/ignored.txt"), b"not matched by the glob").unwrap();
}

/// Writes a key file as a user should: only its owner may read it (mode 0600).
pub fn key_file(path: &Path, key: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, key).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A process killed when dropped.
pub struct Process(Child);

impl Process {
    pub fn new(child: Child) -> Process {
        Process(child)
    }

    /// The exit status of an ended process (None: still running, or ended by a signal).
    pub fn exit_code(&mut self) -> Option<i32> {
        self.0.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Whether the process has ended.
    pub fn has_exited(&mut self) -> bool {
        self.0.try_wait().ok().flatten().is_some()
    }

    /// Whether the process is stopped (by SIGSTOP).
    pub fn is_stopped(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        // pid (comm) state ...: the state follows the last parenthesis.
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `verger ARGS`, logging to `log`, and waits until it listens on `port`.
fn start(args: &[&str], port: u16, env: &[(&str, &str)], log: &Path) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("verger starts");
    let process = Process(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{args:?} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    process
}

/// A `verger scheduler` and two one-slot `verger executor`s on 127.0.0.1 (processes 1 and 2, with `env`),
/// registered and ready; returns them with the scheduler's URL. Executor i works in `work/executor-i` and
/// logs verger's events to `work/executor-i.log`.
pub fn cluster(work: &Path, offset: u16, env: &[(&str, &str)]) -> (Vec<Process>, String) {
    cluster_with(work, offset, env, [&[], &[]])
}

/// [`cluster`], with `executor_env[i]` added to executor i's environment.
pub fn cluster_with(
    work: &Path,
    offset: u16,
    env: &[(&str, &str)],
    executor_env: [&[(&str, &str)]; 2],
) -> (Vec<Process>, String) {
    cluster_secured(work, offset, env, executor_env, None)
}

/// This test process's slot among the test processes that may run at once, from which fixed ports derive:
/// `VERGER_TEST_SLOT` where scripts/test runs test binaries side by side (a distinct slot each), else one
/// taken from the process id.
pub fn slot() -> u16 {
    let given = std::env::var("VERGER_TEST_SLOT")
        .ok()
        .and_then(|s| s.parse::<u16>().ok());
    given.unwrap_or((std::process::id() % 40) as u16) % 40
}

/// The port of the cluster [`cluster_secured`] starts at `offset`.
pub fn cluster_port(offset: u16) -> u16 {
    23000 + slot() * 32 + offset
}

/// [`cluster_with`], every process given `--security DIR` when `security` names one.
pub fn cluster_secured(
    work: &Path,
    offset: u16,
    env: &[(&str, &str)],
    executor_env: [&[(&str, &str)]; 2],
    security: Option<&Path>,
) -> (Vec<Process>, String) {
    let base = cluster_port(offset);
    let guard: Vec<&str> = match security {
        Some(dir) => vec!["--security", dir.to_str().unwrap()],
        None => vec![],
    };
    let mut args = vec!["scheduler", "--port"];
    let port = base.to_string();
    args.push(&port);
    args.extend(&guard);
    let scheduler = start(&args, base, &[], &work.join("scheduler.log"));
    let mut processes = vec![scheduler];
    let mut shared_env = env.to_vec();
    shared_env.push(("RUST_LOG", "warn,verger_engine=info"));
    for i in 0..2u16 {
        let port = base + 2 + i * 2;
        let env: Vec<(&str, &str)> = shared_env.iter().chain(executor_env[i as usize]).copied().collect();
        let dir = work.join(format!("executor-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (scheduler, port_text) = (format!("127.0.0.1:{base}"), port.to_string());
        let mut args = vec![
            "executor",
            "--scheduler",
            &scheduler,
            "--port",
            &port_text,
            "--slots",
            "1",
            "--work-dir",
            dir.to_str().unwrap(),
        ];
        args.extend(&guard);
        // Secured executors take only the locations their jobs need: the work folder (the tests' outputs),
        // the shared images and the model.
        let allowed = [work.to_path_buf(), fruits360_dir(), verger_testdata::model_path()];
        if security.is_some() {
            for location in &allowed {
                args.extend(["--allow-location", location.to_str().unwrap()]);
            }
        }
        processes.push(start(&args, port, &env, &work.join(format!("executor-{i}.log"))));
    }
    // Wait until the scheduler's REST API lists both executors.
    let started = Instant::now();
    loop {
        if executors_listed(base, security) == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "executors did not register"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    (processes, format!("df://127.0.0.1:{base}"))
}

/// How many executors the scheduler on 127.0.0.1:`port` lists (0 while it does not answer); a secured
/// scheduler is asked with the client's certificate and token from `security`.
pub fn executors_listed(port: u16, security: Option<&Path>) -> usize {
    match security {
        None => {
            let listed = python("cluster_executors.py", &[&format!("http://127.0.0.1:{port}")]);
            String::from_utf8_lossy(&listed.stdout).trim().parse().unwrap_or(0)
        }
        Some(dir) => {
            let token = std::fs::read_to_string(dir.join("token")).unwrap();
            match curl_scheduler(dir, port, "GET", "/api/executors", Some(token.trim())) {
                (200, body) => serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.as_array().map(|a| a.len()))
                    .unwrap_or(0),
                _ => 0,
            }
        }
    }
}

/// `curl -X METHOD` of `path` on the secured scheduler at 127.0.0.1:`port`, verifying it with `security`'s CA
/// and presenting its client certificate, with `token` as bearer if given: (HTTP status, body); status 0 when
/// no HTTP answer came.
pub fn curl_scheduler(security: &Path, port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let file = |name: &str| security.join(name).to_str().unwrap().to_string();
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"]);
    command.args([
        "--cacert",
        &file("ca.crt"),
        "--cert",
        &file("client.crt"),
        "--key",
        &file("client.key"),
    ]);
    // The scheduler's certificate names its role, not an address.
    command.args(["--resolve", &format!("scheduler.verger.cluster:{port}:127.0.0.1")]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    command.arg(format!("https://scheduler.verger.cluster:{port}{path}"));
    let out = command.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_string())
}
