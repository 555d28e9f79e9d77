//! `lanyard console` against a real CA: its HTTP surface (the allow-list, read-only, the Host
//! check, the security headers, no key material anywhere) and the page itself, loaded in
//! headless Chromium, after a rotation and some issuance.
//!
//! The browser checks need Chromium (Debian package `chromium`). Without it they are skipped
//! with a note, except where `CI` is set or `LANYARD_REQUIRE_CHROMIUM=1`, where they fail:
//! `scripts/test.sh` installs it and sets the variable.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use lanyard::api;
use lanyard::client::new_key_and_csr;

/// A running `lanyard console`.
struct Console {
    _child: ChildGuard,
    /// `http://127.0.0.1:<port>`.
    base: String,
    port: u16,
    log: PathBuf,
}

impl Console {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `lanyard console` for `ca` on a port the kernel picks, and waits until it listens.
fn start_console(ca: &TestCa) -> Console {
    let log = ca.dir.path().join("console.log");
    let log_file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap()
    };
    let mut cmd = Command::new(BIN);
    cmd.args(["console", "--config"])
        .arg(&ca.config)
        .args(["--listen", "127.0.0.1:0"])
        .env("LANYARD_LOG", "info,lanyard=debug")
        .stderr(log_file());
    let (child, at) =
        spawn_reporting(cmd, log_file(), Duration::from_secs(60)).unwrap_or_else(|e| {
            panic!(
                "lanyard console: {e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    let port = at
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the console reported {at:?}"));
    Console {
        _child: ChildGuard(child),
        base: at,
        port,
        log,
    }
}

/// One answer of the console.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends one request to the console, plain HTTP on loopback, no proxy.
async fn request(c: &Console, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    // reqwest wants a TLS provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = http.request(method.parse().unwrap(), format!("{}{path}", c.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

async fn get(c: &Console, path: &str) -> Answer {
    request(c, "GET", path, &[]).await
}

/// The realistic scenario both the tests and README's screenshot show: two cells, a root
/// rotation (generation 1 retiring, 2 active), instance certificates from both cells (some
/// short-lived, so they expire within the hour) and one refused request (an instance bound
/// to the other cell). Returns the serial of the last instance certificate (short-lived).
async fn scenario(ca: &TestCa) -> String {
    for args in [
        &["authority", "prepare"][..],
        &["authority", "activate", "2", "--force"][..],
    ] {
        let (code, _, err) = ca.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // Joined after the rotation, so their clients trust the new root of the server.
    let a = ca.join_cell("cell-a").await;
    let b = ca.join_cell("cell-b").await;
    for n in 1..=6 {
        a.issue_instance(n).await.unwrap();
    }
    let mut last = None;
    for n in 20..=23 {
        let (_key, csr) = new_key_and_csr().unwrap();
        let mut req = instance_request(&csr, n);
        req.ttl_seconds = Some(api::JsonInt(30 * 60));
        let issued: api::IssuedCertificate = b
            .client
            .post("/v1/instance-certificates", &req, None)
            .await
            .unwrap();
        last = Some(issued.serial);
    }
    // Instance 1 is cell-a's: cell-b is refused (409), which the console counts.
    let refused = b.issue_instance(1).await.unwrap_err();
    assert!(
        matches!(&refused, lanyard::client::ClientError::Api(p) if p.status == 409),
        "{refused:?}"
    );
    last.unwrap()
}

/// The base64 body of a PEM key file: what would betray the key if it leaked anywhere.
fn key_material(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_forwards_only_its_allow_list_of_reads_and_never_a_key() {
    let ca = TestCa::start();
    let serial = scenario(&ca).await;
    let console = start_console(&ca);
    let keys = key_material(&ca.operator_dir().join("key.pem"));
    let mut seen = Vec::new();

    // The page and its files, each with the security headers and no caching.
    for (path, content_type) in [
        ("/", "text/html"),
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
        ("/console.json", "application/json"),
    ] {
        let a = get(&console, path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert!(a.header("content-type").starts_with(content_type), "{path}");
        seen.push(a);
    }
    let info: serde_json::Value = serde_json::from_str(&seen[4].body).unwrap();
    assert_eq!(info["servers"][0], ca.url());
    assert!(
        info["credential"]["spiffe_id"]
            .as_str()
            .unwrap()
            .ends_with("/lanyard/operator/admin"),
        "{info}"
    );

    // The allow-list: the CA's own answers, passed through.
    let a = get(&console, "/v1/authorities").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let auth: api::AuthoritiesResponse = serde_json::from_str(&a.body).unwrap();
    let states: Vec<(&str, &str)> = auth
        .authorities
        .iter()
        .map(|g| (g.id.as_str(), g.state.as_str()))
        .collect();
    assert_eq!(states, [("1", "retiring"), ("2", "active")]);
    assert_eq!(auth.trust_bundle_sequence, 3);
    for g in &auth.authorities {
        assert!(g.root_not_before < g.root_not_after, "{g:?}");
        assert!(
            g.intermediate_not_before < g.intermediate_not_after,
            "{g:?}"
        );
    }
    seen.push(a);
    let a = get(&console, "/v1/activity").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let act: api::ActivityResponse = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        act.issued_last_hour,
        4 + 10 + 2,
        "server and operator at init and activation (4), joins (2), instances (10)"
    );
    assert_eq!(act.refused_last_hour, 1);
    let mut cells: Vec<&str> = act.cells.iter().map(|c| c.name.as_str()).collect();
    cells.sort();
    assert_eq!(cells, ["cell-a", "cell-b"]);
    assert!(
        act.expiring_soon
            .iter()
            .filter(|e| e.kind == "instance")
            .count()
            == 4,
        "{:?}",
        act.expiring_soon
    );
    seen.push(a);
    let a = get(&console, "/v1/certificates?limit=50").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains(&serial), "{}", a.body);
    seen.push(a);
    let a = get(&console, "/v1/audit?after=0&limit=1000").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains(&format!("certificate/{serial}")));
    seen.push(a);

    // Anything else: not found, or not allowed, or refused before the CA is asked.
    for path in [
        "/v1/trust-bundle",
        "/v1/join-tokens",
        "/v1/crl/1",
        "/metrics",
        "/v1/openapi.json",
        "/v1/authorities/prepare",
        "/v1/instances/9a1c2f3e-5b6d-4e7f-8a9b-000000000001/release",
        "/v1/certificates/00/revoke",
        "/v1/../v1/join-tokens",
        "/assets/../../etc/passwd",
    ] {
        let a = get(&console, path).await;
        assert_eq!(a.status, 404, "GET {path}: {}", a.body);
        assert!(a
            .header("content-type")
            .starts_with("application/problem+json"));
        seen.push(a);
    }
    for (method, path) in [
        ("POST", "/v1/authorities"),
        ("POST", "/v1/authorities/prepare"),
        ("POST", "/v1/authorities/2/retire"),
        ("POST", "/v1/join-tokens"),
        ("POST", &format!("/v1/certificates/{serial}/revoke")),
        ("PUT", "/v1/audit"),
        (
            "DELETE",
            "/v1/instances/9a1c2f3e-5b6d-4e7f-8a9b-000000000001",
        ),
        ("PATCH", "/"),
    ] {
        let a = request(
            &console,
            method,
            path,
            &[("content-type", "application/json")],
        )
        .await;
        // A path the console serves refuses the method (405); any other path is not there.
        let served = matches!(path, "/" | "/v1/authorities" | "/v1/audit");
        assert_eq!(
            a.status,
            if served { 405 } else { 404 },
            "{method} {path}: {}",
            a.body
        );
        if served {
            assert_eq!(a.header("allow"), "GET, HEAD");
        }
        seen.push(a);
    }
    for bad in [
        "/v1/audit?wait=30",
        "/v1/audit?limit=1&limit=2",
        "/v1/authorities?x=1",
    ] {
        let a = get(&console, bad).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
    }
    // The CA's own refusal of a bad value comes through as it is.
    let a = get(&console, "/v1/audit?limit=0").await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(a.body.contains("limit"), "{}", a.body);

    // Nothing changed on the CA.
    let after: api::AuthoritiesResponse = ca.operator().get("/v1/authorities").await.unwrap();
    assert_eq!(after.trust_bundle_sequence, 3);
    assert_eq!(after.authorities.len(), 2);
    let cert: api::CertificatesResponse = ca
        .operator()
        .get("/v1/certificates?instance_guid=9a1c2f3e-5b6d-4e7f-8a9b-000000000001")
        .await
        .unwrap();
    assert!(cert.certificates.iter().all(|c| c.revoked_at.is_none()));

    // The Host check (DNS rebinding): only the console's own address and localhost.
    let port = console.port;
    for (host, status) in [
        (format!("127.0.0.1:{port}"), 200),
        (format!("localhost:{port}"), 200),
        (format!("evil.example:{port}"), 421),
        ("localhost".to_string(), 421),
        (format!("localhost:{}", port.wrapping_add(1)), 421),
    ] {
        for path in ["/", "/v1/authorities"] {
            let a = request(&console, "GET", path, &[("host", &host)]).await;
            assert_eq!(a.status, status, "Host {host} {path}: {}", a.body);
            if status != 200 {
                assert!(!a.body.contains("\"authorities\""), "{}", a.body);
                seen.push(a);
            }
        }
    }
    // Another site's page may link to the console but not read through it.
    let a = request(
        &console,
        "GET",
        "/v1/authorities",
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = request(&console, "GET", "/", &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(a.status, 200, "a link from elsewhere opens the page");
    let a = request(
        &console,
        "GET",
        "/v1/authorities",
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(a.status, 200);

    // Every answer: the CSP, no framing, no caching, and never a key.
    for a in &seen {
        let csp = a.header("content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(a.header("x-frame-options"), "DENY");
        assert_eq!(a.header("cache-control"), "no-store");
        assert_eq!(a.header("x-content-type-options"), "nosniff");
        assert!(!a.body.contains("PRIVATE KEY"), "{}", a.body);
        for line in &keys {
            assert!(
                !a.body.contains(line.as_str()),
                "key material in {}",
                a.body
            );
        }
    }
    let log = console.log_text();
    assert!(!log.contains("PRIVATE KEY"));
    for line in &keys {
        assert!(!log.contains(line.as_str()), "key material in the log");
    }
}

#[test]
fn a_non_loopback_listen_address_is_refused_without_allow_remote() {
    for (args, needle) in [
        (&["console", "--listen", "0.0.0.0:0"][..], "--allow-remote"),
        (&["console", "--listen", "somewhere:80"][..], "IP:PORT"),
        (
            &["console", "--listen", "127.0.0.1:0", "--accept-host", "a b"][..],
            "--accept-host",
        ),
    ] {
        // Refused from the flags alone: no config is read, nothing is bound.
        let out = Command::new(BIN)
            .args(args)
            .args(["--config", "/nonexistent/lanyard.toml"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("lanyard: error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

// ---- The page in a browser ---------------------------------------------------------------

/// The headless Chromium to drive, or `None` (after a note) where the browser checks may be
/// skipped.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let required = std::env::var("LANYARD_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
    assert!(
        !(ci || required),
        "chromium is not installed, and the console's browser checks may not be skipped here \
         (CI or LANYARD_REQUIRE_CHROMIUM=1). Install it (apt-get install chromium) or run \
         scripts/test.sh, which does"
    );
    eprintln!("note: console browser test skipped: chromium is not installed");
    None
}

/// What to ask of the browser.
enum Take<'a> {
    /// The DOM after the page's scripts ran.
    Dom,
    /// A 1280×1600 screenshot into this file.
    Screenshot(&'a Path),
}

/// Loads `url` in a fresh headless Chromium (its own profile, no background traffic, every
/// name but 127.0.0.1 unresolvable) and lets the page run for a few seconds of virtual time:
/// long enough for its first refresh (the page refreshes every 5 s), not for a second one.
/// Returns stdout (the DOM, for [`Take::Dom`]).
fn browse(chromium: &Path, url: &str, take: Take<'_>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-proxy-server",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--hide-scrollbars",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .env("HOME", profile.path());
    match take {
        Take::Dom => {
            cmd.arg("--dump-dom");
        }
        Take::Screenshot(path) => {
            cmd.arg(format!("--screenshot={}", path.display()))
                .arg("--window-size=1280,1600");
        }
    }
    cmd.arg(url).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    // A hung browser must not hang the suite: it is killed after two minutes.
    let out = rx.recv_timeout(Duration::from_secs(120));
    let _ = child.kill();
    let status = child.wait().unwrap();
    let out = out.unwrap_or_else(|_| panic!("chromium did not finish loading {url}"));
    if matches!(take, Take::Dom) {
        assert!(
            out.contains("</html>"),
            "chromium ({status}) printed no DOM for {url}: {out}"
        );
    }
    out
}

/// Asserts that the DOM the browser printed contains `needle`, which shows `what`.
fn assert_shows(dom: &str, needle: &str, what: &str) {
    assert!(
        dom.contains(needle),
        "the page does not show {what} ({needle}):\n{dom}"
    );
}

/// Where the screenshots go: `target/console/`.
fn artifact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Checks that `path` is a PNG of 1280×1600 with some content (a blank page compresses to a
/// few kilobytes).
fn assert_real_png(path: &Path) {
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 1600));
    assert!(
        png.len() > 40_000,
        "{} is only {} bytes",
        path.display(),
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_generations_bundle_issuance_and_audit_and_follows_a_rotation() {
    let Some(chromium) = chromium() else { return };
    let ca = TestCa::start_with(&[
        ("rotation", "automatic = true"),
        ("rotation", "propagation_delay = \"10m\""),
    ]);
    let serial = scenario(&ca).await;
    let console = start_console(&ca);
    let url = format!("{}/", console.base);

    let dom = browse(&chromium, &url, Take::Dom);
    assert_shows(&dom, r#"data-state="live">live<"#, "that it is live");
    assert_shows(
        &dom,
        r#"<tr data-generation="1" data-state="retiring">"#,
        "generation 1 retiring",
    );
    assert_shows(
        &dom,
        r#"<tr data-generation="2" data-state="active">"#,
        "generation 2 active",
    );
    assert_shows(
        &dom,
        r#"<g class="gen active" data-generation="2""#,
        "the timeline",
    );
    assert_shows(&dom, r#"id="bundle-sequence">3<"#, "bundle sequence 3");
    assert_shows(
        &dom,
        r#"id="active-generation">2<"#,
        "the active generation",
    );
    assert_shows(
        &dom,
        &format!(r#"data-serial="{serial}""#),
        "the new instance certificate among those expiring soon",
    );
    assert_shows(&dom, &format!("certificate/{serial}"), "its audit entry");
    assert_shows(
        &dom,
        r#"data-action="certificate.issued""#,
        "issuance in the audit log",
    );
    assert_shows(&dom, r#"data-cell="cell-a""#, "cell-a");
    assert_shows(&dom, r#"data-cell="cell-b""#, "cell-b");
    assert_shows(
        &dom,
        r#"id="issued-hour">16<"#,
        "16 certificates issued in the hour",
    );
    assert_shows(&dom, "1 refused or failed", "the refused request");
    assert_shows(&dom, r#"class="bar-issued""#, "the issuance chart");
    assert_shows(
        &dom,
        "9a1c2f3e-5b6d-4e7f-8a9b-000000000014",
        "a certificate expiring soon",
    );
    assert!(!dom.contains("PRIVATE KEY"));

    // A rotation step: the next load shows it, with the step the schedule takes next.
    let (code, _, err) = ca.cli(&["authority", "prepare"]);
    assert_eq!(code, 0, "{err}");
    let dom = browse(&chromium, &url, Take::Dom);
    assert_shows(
        &dom,
        r#"<tr data-generation="3" data-state="prepared">"#,
        "generation 3 prepared",
    );
    assert_shows(&dom, r#"id="bundle-sequence">4<"#, "bundle sequence 4");
    assert_shows(
        &dom,
        r#"data-action="activate">activate generation 3 · in "#,
        "the automatic activation ahead",
    );
    assert_shows(
        &dom,
        r#"id="timeline-next-step""#,
        "the step on the timeline",
    );
    assert_shows(
        &dom,
        r#"data-action="authority.prepared""#,
        "the audit entry of the step",
    );
    let shot = artifact_dir().join("console.png");
    let _ = std::fs::remove_file(&shot);
    browse(&chromium, &url, Take::Screenshot(&shot));
    assert_real_png(&shot);
    // The timeline's 48-hour window, opened from the address.
    let dom = browse(&chromium, &format!("{url}#48h"), Take::Dom);
    assert_shows(
        &dom,
        r#"data-zoom="48h" aria-pressed="true""#,
        "the 48-hour window selected",
    );
    assert_shows(
        &dom,
        "next: activate generation 3 · in ",
        "the step's label on the timeline",
    );
    let shot = artifact_dir().join("console-48h.png");
    browse(&chromium, &format!("{url}#48h"), Take::Screenshot(&shot));
    assert_real_png(&shot);

    // Activation moves the server's certificate to generation 3, whose root the console
    // did not trust when it started: it follows the rewritten credential files.
    let (code, _, err) = ca.cli(&["authority", "activate", "3", "--force"]);
    assert_eq!(code, 0, "{err}");
    let a = get(&console, "/v1/authorities").await;
    assert_eq!(a.status, 200, "{}\n{}", a.body, console.log_text());
    let dom = browse(&chromium, &url, Take::Dom);
    assert_shows(
        &dom,
        r#"<tr data-generation="3" data-state="active">"#,
        "generation 3 active",
    );
    assert_shows(&dom, r#"id="bundle-sequence">5<"#, "bundle sequence 5");
    assert!(
        console
            .log_text()
            .contains("credential files changed; reloaded them"),
        "{}",
        console.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_ca_is_shown_as_such_not_as_stale_data() {
    let Some(chromium) = chromium() else { return };
    let mut ca = TestCa::start();
    let console = start_console(&ca);
    let url = format!("{}/", console.base);
    let dom = browse(&chromium, &url, Take::Dom);
    assert_shows(
        &dom,
        r#"<tr data-generation="1" data-state="active">"#,
        "generation 1",
    );

    ca.stop();
    let a = get(&console, "/v1/authorities").await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(a.body.contains("cannot reach"), "{}", a.body);
    let dom = browse(&chromium, &url, Take::Dom);
    assert_shows(
        &dom,
        r#"data-state="unreachable">unreachable<"#,
        "the CA as unreachable",
    );
    assert_shows(&dom, "The CA is unreachable", "the banner");
    assert_shows(&dom, "cannot reach", "why");
    assert_shows(&dom, r#"<main id="main" hidden="">"#, "no data");
    assert!(
        !dom.contains("data-generation="),
        "stale data shown:\n{dom}"
    );
    let shot = artifact_dir().join("console-unreachable.png");
    browse(&chromium, &url, Take::Screenshot(&shot));
    assert_real_png(&shot);

    // Back again: the page shows the CA's state again.
    ca.spawn();
    let dom = browse(&chromium, &url, Take::Dom);
    assert_shows(&dom, r#"data-state="live">live<"#, "that it is live again");
    // The console's log says when the CA went away and came back, once each.
    let log = console.log_text();
    assert_eq!(
        log.matches("the CA does not answer the console").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("the CA answers the console again").count(),
        1,
        "{log}"
    );
}
