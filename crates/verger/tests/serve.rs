//! `verger serve` over real HTTP on 127.0.0.1 (the `ureq` client): answers equal `verger identify --json`'s,
//! every class of bad upload gets its status and a JSON error while the service keeps serving, a bounded load
//! test (2,000 requests at concurrency 16) sees no 5xx and no dropped connection, metrics count them, a token
//! is required where configured, and SIGTERM lets requests in flight finish.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_success, run_args, verger, Process};
use verger_testdata::fruits360_dir;

const CLASSES: [&str; 6] = ["Orange", "Kiwi", "Lemon", "Pomegranate", "Strawberry", "Apple Braeburn"];

/// A classifier on 40 Training images of each of [`CLASSES`].
fn classifier(tmp: &Path) -> PathBuf {
    let input = tmp.join("training");
    for class in CLASSES {
        let to = input.join(class);
        std::fs::create_dir_all(&to).unwrap();
        for f in sorted_files(&fruits360_dir().join("Training").join(class))
            .iter()
            .take(40)
        {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let run = tmp.join("run");
    assert_success(&verger(&run_args(&input, &run, &["--k", "20"])), "training run");
    let classifier = tmp.join("classifier");
    assert_success(
        &verger(&["train", run.to_str().unwrap(), "--out", classifier.to_str().unwrap()]),
        "train",
    );
    classifier
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// `verger serve --port 0 ARGS` and the base URL it printed.
fn serve(classifier: &Path, args: &[&str], log: &Path) -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(["serve", "--model", classifier.to_str().unwrap(), "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("verger serve starts");
    let stdout = child.stdout.take().unwrap();
    let process = Process::new(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("serving on ")
        .unwrap_or_else(|| {
            panic!(
                "unexpected first line {line:?}; log: {}",
                std::fs::read_to_string(log).unwrap()
            )
        })
        .to_string();
    (process, url)
}

fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// POST `body` as `content_type` to `url`: (status, JSON body).
fn post(agent: &ureq::Agent, url: &str, content_type: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut response = agent
        .post(url)
        .header("Content-Type", content_type)
        .send(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text:?}: {e}"));
    (status, json)
}

fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (
        response.status().as_u16(),
        response.body_mut().read_to_string().unwrap(),
    )
}

/// Test photos, two of each class, with their labels.
fn test_photos() -> Vec<(PathBuf, &'static str)> {
    CLASSES
        .iter()
        .flat_map(|class| {
            sorted_files(&fruits360_dir().join("Test").join(class))
                .into_iter()
                .take(2)
                .map(move |p| (p, *class))
        })
        .collect()
}

#[test]
fn serves_identify_with_limits_metrics_and_graceful_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let classifier = classifier(tmp.path());
    let (_server, url) = serve(
        &classifier,
        &["--workers", "2", "--max-body-bytes", "150000", "--max-pixels", "20000"],
        &tmp.path().join("serve.log"),
    );
    let agent = new_agent();
    let (status, health) = get(&agent, &format!("{url}/healthz"), None);
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"classes\":6"), "{health}");

    // Answers equal verger identify's, and name the right fruit.
    let photos = test_photos();
    let mut args = vec!["identify", "--model", classifier.to_str().unwrap(), "--json"];
    args.extend(photos.iter().map(|(p, _)| p.to_str().unwrap()));
    let identified = verger(&args);
    assert_success(&identified, "identify");
    let expected: serde_json::Value = serde_json::from_slice(&identified.stdout).unwrap();
    let mut right = 0;
    for ((photo, label), expected) in photos.iter().zip(expected.as_array().unwrap()) {
        let (status, answer) = post(
            &agent,
            &format!("{url}/identify"),
            "image/jpeg",
            &std::fs::read(photo).unwrap(),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["photo"], "upload");
        assert_eq!(answer["identified"], expected["identified"], "{}", photo.display());
        // The novelty score and the unknown flag come with every answer, as identify's.
        assert!(answer["identified"]["novelty"].as_f64().is_some(), "{answer}");
        assert!(answer["identified"]["unknown"].is_boolean(), "{answer}");
        right += usize::from(answer["identified"]["labels"][0]["label"] == *label);
    }
    assert!(right >= photos.len() - 1, "{right} of {} right", photos.len());

    // A multipart form with the photo as a file, and fewer labels asked for.
    let (photo, label) = &photos[0];
    let mut form = b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--BOUNDARY\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"kiwi.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
    form.extend(std::fs::read(photo).unwrap());
    form.extend(b"\r\n--BOUNDARY--\r\n");
    let (status, answer) = post(
        &agent,
        &format!("{url}/identify?top=2&neighbours=1"),
        "multipart/form-data; boundary=BOUNDARY",
        &form,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["photo"], "kiwi.jpg");
    assert_eq!(answer["identified"]["labels"].as_array().unwrap().len(), 2);
    assert_eq!(answer["identified"]["neighbours"].as_array().unwrap().len(), 1);
    assert_eq!(answer["identified"]["labels"][0]["label"], *label);

    // Bad uploads: each its status and a JSON error; the service keeps serving.
    let jpeg = std::fs::read(photo).unwrap();
    let big_pixels = tmp.path().join("pixels");
    assert_success(
        &verger(&[
            "preprocess",
            photo.to_str().unwrap(),
            "--out",
            big_pixels.to_str().unwrap(),
        ]),
        "a 224x224 PNG",
    );
    let png = std::fs::read(sorted_files(&big_pixels)[0].clone()).unwrap();
    let identify = format!("{url}/identify");
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("empty body", "image/jpeg", Vec::new(), 400, "decode"),
        ("not an image", "image/jpeg", b"hello, world".to_vec(), 400, "decode"),
        (
            "truncated JPEG",
            "image/jpeg",
            jpeg[..jpeg.len() / 2].to_vec(),
            400,
            "decode",
        ),
        ("too many pixels", "image/png", png, 413, "decode"),
        ("body too large", "image/jpeg", vec![0xff; 200_000], 413, "request"),
        ("wrong content type", "application/json", b"{}".to_vec(), 415, "request"),
        (
            "form without a file",
            "multipart/form-data; boundary=B",
            b"--B--\r\n".to_vec(),
            400,
            "request",
        ),
    ];
    for (what, content_type, body, want, stage) in cases {
        let (status, answer) = post(&agent, &identify, content_type, &body);
        assert_eq!(status, want, "{what}: {answer}");
        assert_eq!(answer["error"]["stage"], stage, "{what}: {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty(), "{what}");
    }
    let (status, answer) = post(&agent, &format!("{url}/identify?top=many"), "image/jpeg", &jpeg);
    assert_eq!(status, 400, "{answer}");
    let (status, _) = get(&agent, &format!("{url}/nope"), None);
    assert_eq!(status, 404);
    assert_eq!(post(&agent, &identify, "image/jpeg", &jpeg).0, 200, "still serving");

    // Load: 2,000 requests at concurrency 16, no 5xx, no dropped connection.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(photos.iter().map(|(p, _)| std::fs::read(p).unwrap()).collect());
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (bodies, ok, failed, identify) = (bodies.clone(), ok.clone(), failed.clone(), identify.clone());
            std::thread::spawn(move || {
                let agent = new_agent();
                for i in 0..125 {
                    let body = &bodies[(t * 125 + i) % bodies.len()];
                    let sent = agent
                        .post(&identify)
                        .header("Content-Type", "image/jpeg")
                        .send(&body[..]);
                    match sent.map(|mut r| (r.status().as_u16(), r.body_mut().read_to_string())) {
                        Ok((200, Ok(_))) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => {
                            eprintln!("status {status}: {body:?}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("request failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "2000 requests at concurrency 16 in {seconds:.1} s ({:.0} requests/s)",
        2000.0 / seconds
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed or non-200 requests under load"
    );
    assert_eq!(ok.load(Ordering::Relaxed), 2000);

    let (status, metrics) = get(&agent, &format!("{url}/metrics"), None);
    assert_eq!(status, 200);
    let served = metric(
        &metrics,
        "verger_serve_requests_total{route=\"/identify\",status=\"200\"}",
    );
    assert_eq!(served, (photos.len() + 1 + 1 + 2000) as f64, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "verger_serve_requests_total{route=\"/identify\",status=\"413\"}"
        ),
        2.0
    );
    assert!(
        metrics.contains("verger_serve_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

/// The value of the sample `name{labels}` in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// The value of the sample `name{labels}` in Prometheus text, if the service has recorded it.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
}

#[test]
fn tokens_guard_the_service_and_sigterm_lets_requests_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let classifier = classifier(tmp.path());

    // Beyond loopback without a token: refused before listening.
    let refused = verger(&[
        "serve",
        "--model",
        classifier.to_str().unwrap(),
        "--bind",
        "0.0.0.0",
        "--port",
        "0",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("without authentication"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let token_file = tmp.path().join("token");
    private_file(&token_file, "s3cret-token-of-at-least-32-bytes-0123456789\n");
    let (server, url) = serve(
        &classifier,
        &[
            "--workers",
            "1",
            "--queue",
            "100",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &tmp.path().join("serve.log"),
    );
    let agent = new_agent();
    assert_eq!(
        get(&agent, &format!("{url}/healthz"), None).0,
        200,
        "health needs no token"
    );
    assert_eq!(get(&agent, &format!("{url}/metrics"), None).0, 401);
    assert_eq!(get(&agent, &format!("{url}/metrics"), Some("wrong")).0, 401);
    assert_eq!(
        get(
            &agent,
            &format!("{url}/metrics"),
            Some("s3cret-token-of-at-least-32-bytes-0123456789")
        )
        .0,
        200
    );
    let photo = std::fs::read(&test_photos()[0].0).unwrap();
    let (status, answer) = post(&agent, &format!("{url}/identify"), "image/jpeg", &photo);
    assert_eq!(status, 401, "{answer}");

    // 64 requests queued on one worker, then SIGTERM: every one is answered, some after the signal, and then
    // the process ends by itself.
    let identify = format!("{url}/identify");
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (identify, photo) = (identify.clone(), photo.clone());
            std::thread::spawn(move || {
                let status = new_agent()
                    .post(&identify)
                    .header("Content-Type", "image/jpeg")
                    .header("Authorization", "Bearer s3cret-token-of-at-least-32-bytes-0123456789")
                    .send(&photo[..])
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string());
                (status, Instant::now())
            })
        })
        .collect();
    // SIGTERM closes the listener, so wait until every request is inside the service (admitted or already
    // answered): a connection still being opened at the signal would rightly be refused.
    let started = Instant::now();
    loop {
        let (status, metrics) = get(
            &agent,
            &format!("{url}/metrics"),
            Some("s3cret-token-of-at-least-32-bytes-0123456789"),
        );
        assert_eq!(status, 200);
        let inside = sample(&metrics, "verger_serve_admitted_requests").unwrap_or(0.0)
            + sample(
                &metrics,
                "verger_serve_requests_total{route=\"/identify\",status=\"200\"}",
            )
            .unwrap_or(0.0);
        if inside >= 64.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the 64 requests never all reached the service:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.signal("TERM");
    let signalled = Instant::now();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(answers.iter().all(|(s, _)| s == &Ok(200)), "{answers:?}");
    let after = answers.iter().filter(|(_, at)| *at > signalled).count();
    assert!(
        after > 0,
        "no request was still in flight at SIGTERM: the test proves nothing"
    );
    println!("{after} of 64 requests answered after SIGTERM");
    let mut server = server;
    let started = Instant::now();
    while !server.has_exited() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.exit_code(), Some(0));
}

#[test]
fn requests_beyond_the_workers_and_queue_get_503_and_the_service_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let classifier = classifier(tmp.path());
    let (_server, url) = serve(
        &classifier,
        &["--workers", "1", "--queue", "2", "--queue-timeout", "0.02"],
        &tmp.path().join("serve.log"),
    );
    let photo = std::fs::read(&test_photos()[0].0).unwrap();
    let identify = format!("{url}/identify");
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let (identify, photo) = (identify.clone(), photo.clone());
            std::thread::spawn(move || {
                let mut r = new_agent()
                    .post(&identify)
                    .header("Content-Type", "image/jpeg")
                    .send(&photo[..])
                    .expect("answered, not dropped");
                let retry = r.headers().get("retry-after").is_some();
                let body: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                (r.status().as_u16(), retry, body)
            })
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(answers.iter().all(|(s, _, _)| *s == 200 || *s == 503), "{answers:?}");
    assert!(
        !busy.is_empty(),
        "24 requests at once on 1 worker with a queue of 2 all got through"
    );
    assert!(
        busy.iter()
            .all(|(_, retry, body)| *retry && body["error"]["stage"] == "busy"),
        "{busy:?}"
    );
    assert!(answers.iter().any(|(s, _, _)| *s == 200));
    let (status, answer) = post(&new_agent(), &identify, "image/jpeg", &photo);
    assert_eq!(status, 200, "serving again once the burst is over: {answer}");
    let (_, metrics) = get(&new_agent(), &format!("{url}/metrics"), None);
    let rejected: f64 = ["queue_full", "queue_timeout"]
        .iter()
        .filter_map(|reason| {
            let sample = format!("verger_serve_rejected_total{{reason=\"{reason}\"}}");
            metrics.lines().find_map(|l| {
                l.strip_prefix(sample.as_str())
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
        })
        .sum();
    assert_eq!(rejected, busy.len() as f64, "{metrics}");
}

/// A line of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`: kB there).
fn memory_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A file only its owner may read.
fn private_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A PNG whose header declares `side`² pixels of RGBA at 16 bits (8 bytes a pixel) and whose data is a
/// few bytes: a decompression bomb's header, a few hundred bytes on the wire.
fn png_bomb(side: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        c.extend(&body);
        c.extend(crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([16, 6, 0, 0, 0]);
    // A zlib stream of one stored block holding one zero byte: valid, far too short for the image.
    let idat = [0x78, 0x01, 0x01, 0x01, 0x00, 0xfe, 0xff, 0x00, 0x00, 0x01, 0x00, 0x01];
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &idat));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// Issue 41, points 10 to 12. Photos are admitted against a memory budget from their headers: a bomb gets
/// 413 before anything is decoded, and a burst of large photos is decoded a budget's worth at a time, so the
/// service's resident memory stays within its budget. Slow clients (slowloris headers, bodies that never
/// come) are cut off by the header and body timeouts while other requests keep being answered. The token
/// must be long and private, and never travels in plain HTTP beyond loopback: TLS (curl checks the
/// certificate) or an explicit --insecure.
#[test]
fn bombs_slow_clients_and_plain_http_cannot_exhaust_or_expose_the_service() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let tmp = tempfile::tempdir().unwrap();
    let classifier = classifier(tmp.path());
    let model = classifier.to_str().unwrap();
    let photo = std::fs::read(&test_photos()[0].0).unwrap();

    // Point 12: the token's rules, and no plain HTTP beyond loopback.
    let short = tmp.path().join("short-token");
    private_file(&short, "0123456789abcdef");
    let loose = tmp.path().join("loose-token");
    std::fs::write(&loose, "0123456789abcdef0123456789abcdef0123456789").unwrap();
    let token_text = "7f3a9c2e5b8d1f4a6c0e9b2d5f8a1c4e7b0d3f6a9c2e5b8d";
    let token = tmp.path().join("token");
    private_file(&token, token_text);
    for (file, says) in [(&short, "use at least 32"), (&loose, "chmod 600")] {
        let refused = verger(&[
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--token-file",
            file.to_str().unwrap(),
        ]);
        assert_eq!(refused.status.code(), Some(2), "{}", common::text(&refused));
        assert!(common::text(&refused).contains(says), "{}", common::text(&refused));
    }
    let plain = verger(&[
        "serve",
        "--model",
        model,
        "--bind",
        "0.0.0.0",
        "--port",
        "0",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(plain.status.code(), Some(1), "{}", common::text(&plain));
    assert!(common::text(&plain).contains("plain HTTP"), "{}", common::text(&plain));

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    private_file(&key, &certified.signing_key.serialize_pem());
    let (tls_server, tls_url) = serve(
        &classifier,
        &[
            "--bind",
            "0.0.0.0",
            "--token-file",
            token.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &tmp.path().join("tls.log"),
    );
    let port = tls_url.rsplit(':').next().unwrap().to_string();
    assert!(tls_url.starts_with("https://"), "{tls_url}");
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap()
    };
    let https = format!("https://127.0.0.1:{port}/metrics");
    let bearer = format!("Authorization: Bearer {token_text}");
    let answered = curl(&["--cacert", cert.to_str().unwrap(), "-H", &bearer, &https]);
    assert_eq!(
        String::from_utf8_lossy(&answered.stdout),
        "200",
        "{}",
        common::text(&answered)
    );
    let unchecked = curl(&["-H", &bearer, &https]);
    assert!(
        !unchecked.status.success(),
        "a certificate curl does not trust is refused by curl"
    );
    let over_http = curl(&[&format!("http://127.0.0.1:{port}/healthz")]);
    assert_ne!(
        String::from_utf8_lossy(&over_http.stdout),
        "200",
        "no plain HTTP on the TLS port"
    );
    drop(tls_server);

    // Point 10: bombs and large photos against a 600 MB budget, 4 workers.
    let budget: u64 = 600 << 20;
    let (server, url) = serve(
        &classifier,
        &[
            "--workers",
            "4",
            "--queue-timeout",
            "120",
            "--memory-budget",
            &budget.to_string(),
            "--header-timeout",
            "2",
            "--body-timeout",
            "3",
        ],
        &tmp.path().join("serve.log"),
    );
    let identify = format!("{url}/identify");
    let agent = new_agent();
    assert_eq!(post(&agent, &identify, "image/jpeg", &photo).0, 200);
    let settled = memory_of(server.id(), "VmRSS:");

    let bomb = png_bomb(13_377);
    assert!(bomb.len() < 1000);
    let bombs: Vec<_> = (0..16)
        .map(|_| {
            let (identify, bomb) = (identify.clone(), bomb.clone());
            std::thread::spawn(move || post(&new_agent(), &identify, "image/png", &bomb))
        })
        .collect();
    for answer in bombs {
        let (status, body) = answer.join().unwrap();
        assert_eq!(status, 413, "{body}");
        assert!(
            body.to_string().contains("exceeds the limit of 64000000 pixels"),
            "{body}"
        );
    }

    // 49 MP photos: each needs ~540 MB by its header (decoding really holds ~300 MB), so with a 600 MB budget
    // one is decoded at a time, where 4 workers alone would hold 1.2 GB.
    let side = 7000;
    let large = verger_image::encode_png(&vec![128u8; side * side * 3], side, side).unwrap();
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let (identify, large) = (identify.clone(), large.clone());
            std::thread::spawn(move || post(&new_agent(), &identify, "image/png", &large).0)
        })
        .collect();
    let statuses: Vec<u16> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let peak = memory_of(server.id(), "VmHWM:");
    assert!(
        peak < settled + budget,
        "peak RSS {} MB over the settled {} MB plus the budget",
        peak >> 20,
        settled >> 20
    );
    println!(
        "settled RSS {} MB, peak after the bombs and the burst {} MB, budget {} MB",
        settled >> 20,
        peak >> 20,
        budget >> 20
    );

    // Point 11: 300 slowloris connections and 20 bodies that never come, while requests are answered.
    let address = url.strip_prefix("http://").unwrap().to_string();
    let slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(&address).unwrap();
            s.write_all(b"POST /identify HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let stalled: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&address).unwrap();
            s.write_all(b"POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    for _ in 0..10 {
        // A new connection each: an idle one is closed after the (2 s) header timeout, as it should be.
        let (status, body) = post(&new_agent(), &identify, "image/jpeg", &photo);
        assert_eq!(status, 200, "answered while slow clients hang on: {body}");
    }
    // Each slow client is cut off by the timeouts: the header one closed, the body one answered 408.
    for (mut s, expected) in slow
        .into_iter()
        .map(|s| (s, None))
        .chain(stalled.into_iter().map(|s| (s, Some("408"))))
    {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = Vec::new();
        match s.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the server never closed the connection: {e}"),
        }
        let text = String::from_utf8_lossy(&answer);
        match expected {
            Some(code) => assert!(text.starts_with(&format!("HTTP/1.1 {code}")), "{text}"),
            None => assert!(!text.contains(" 200 "), "{text}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "slow clients held on for {:?}",
        started.elapsed()
    );
    assert_eq!(post(&new_agent(), &identify, "image/jpeg", &photo).0, 200);
}
