//! Metrics and logs, black-box: the server's and the agent's `/metrics` parsed as the
//! Prometheus text exposition format, and the server's log lines as an operator's tools read
//! them.

mod common;

use std::collections::HashMap;

use common::agent::TestAgent;
use common::{instance_request, raw, TestCa};
use lanyard::api;
use lanyard::client::new_key_and_csr;

/// A parsed exposition: every sample (`name{labels}` as written) with its value, and every
/// family's type. Panics on any line that is not valid text format 0.0.4, and on a sample
/// whose family has no `# TYPE` line before it.
struct Exposition {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_exposition(text: &str) -> Exposition {
    let mut samples = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect(line);
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            assert!(
                types.insert(name.into(), ty.into()).is_none(),
                "twice: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(valid_name(rest.split(' ').next().unwrap()), "{line}");
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "{line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .expect(line);
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").expect(line);
                assert!(valid_name(k), "{line}");
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE line for {line}");
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "twice: {line}"
        );
    }
    Exposition { samples, types }
}

impl Exposition {
    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {:?}", self.samples.keys()))
    }
}

#[tokio::test]
async fn the_servers_metrics_are_prometheus_text_that_counts_issuances_and_refusals() {
    let ca = TestCa::start();
    let cell = ca.join_cell("cell-m").await;
    cell.issue_instance(1).await.unwrap();
    // A CSR whose signature does not verify, and one that is not a CSR.
    let (_, csr) = new_key_and_csr().unwrap();
    let tampered = {
        let mut der = pem::parse(&csr).unwrap().into_contents();
        let n = der.len();
        der[n - 5] ^= 0x01;
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
    };
    assert!(cell
        .client
        .post::<_, api::IssuedCertificate>(
            "/v1/instance-certificates",
            &instance_request(&tampered, 2),
            None
        )
        .await
        .is_err());
    // A batch of one good request and one that is not a CSR: one issued, one rejected.
    let (_, good) = new_key_and_csr().unwrap();
    let batch: api::BatchResponse = cell
        .client
        .post(
            "/v1/instance-certificates/batch",
            &api::BatchRequest {
                requests: vec![instance_request(&good, 3), instance_request("not a csr", 4)],
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(batch.results[1].status, 422);

    let (s, ct, body, headers) = raw(&ca, None, "GET", "/metrics", None, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(headers.contains_key("x-request-id"));
    let text = String::from_utf8(body).unwrap();
    let m = parse_exposition(&text);
    let issued = |kind: &str, outcome: &str| {
        m.value(&format!(
            "lanyard_issuances_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(issued("instance", "issued"), 2.0, "{text}");
    assert_eq!(issued("instance", "rejected"), 2.0, "{text}");
    assert_eq!(issued("cell", "issued"), 1.0, "{text}");
    assert_eq!(
        m.value("lanyard_certificates_issued_total{kind=\"instance\"}"),
        2.0
    );
    assert_eq!(
        m.value("lanyard_csr_rejects_total{reason=\"bad_signature\"}"),
        1.0
    );
    assert_eq!(
        m.value("lanyard_csr_rejects_total{reason=\"malformed\"}"),
        1.0
    );
    assert_eq!(m.types["lanyard_issuance_duration_seconds"], "histogram");
    assert_eq!(
        m.value("lanyard_issuance_duration_seconds_count{endpoint=\"/v1/instance-certificates\"}"),
        2.0
    );
    assert_eq!(
        m.value("lanyard_issuance_duration_seconds_bucket{endpoint=\"/v1/join\",le=\"+Inf\"}"),
        1.0
    );
    assert_eq!(m.value("lanyard_trust_bundle_watchers"), 0.0);
    assert_eq!(m.value("lanyard_trust_bundle_sequence"), 1.0);
    assert_eq!(
        m.value("lanyard_authority_generations{state=\"active\"}"),
        1.0
    );
    assert_eq!(
        m.value("lanyard_authority_state{authority=\"1\",state=\"active\"}"),
        1.0
    );
    assert_eq!(
        m.value("lanyard_authority_state{authority=\"1\",state=\"prepared\"}"),
        0.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(m.value("lanyard_authority_root_not_after_seconds{authority=\"1\"}") > now);
    assert!(m.value("lanyard_authority_intermediate_not_after_seconds{authority=\"1\"}") > now);
    assert!(m.value("lanyard_active_root_not_after_seconds") > now);
    assert!(m.value("lanyard_http_responses_total{class=\"4xx\"}") >= 1.0);
    assert_eq!(m.types["lanyard_join_tokens_created_total"], "counter");

    // The console's view of the same events: operator only, checked against the OpenAPI
    // document by the client.
    let a: api::ActivityResponse = ca.operator().get("/v1/activity").await.unwrap();
    assert_eq!(a.issuance_per_minute.len(), 60);
    assert!(a.issued_last_hour >= 3, "{a:?}");
    assert!(a.refused_last_hour >= 2, "{a:?}");
    let c = a.cells.iter().find(|c| c.name == "cell-m").expect("cell-m");
    assert!(
        c.last_request.starts_with("POST /v1/instance-certificates"),
        "{c:?}"
    );
    assert_eq!(c.requests, 3, "{c:?}");
    let (s, _, _, _) = raw(
        &ca,
        Some((&cell.chain_pem, &cell.key_pem)),
        "GET",
        "/v1/activity",
        None,
        &[],
    )
    .await;
    assert_eq!(s, 403, "a cell may not read it");

    // A held long poll is a watcher while it is held.
    let anon = ca.anonymous();
    let poll = tokio::spawn(async move { anon.trust_bundle(Some(1), 60, false).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, _, body, _) = raw(&ca, None, "GET", "/metrics", None, &[]).await;
        let m = parse_exposition(&String::from_utf8(body).unwrap());
        if m.value("lanyard_trust_bundle_watchers") == 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the poll never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    poll.abort();
}

#[tokio::test]
async fn the_agents_metrics_count_its_instances_renewals_expiry_and_bundle() {
    let ca = TestCa::start_with(&[("issuance", "min_ttl = \"1s\"")]);
    // Short certificates, so a renewal comes within the test.
    let agent = TestAgent::start(&ca, "cell-am", "4s");
    let guid = "0a1b2c3d-0001";
    let (s, body) = agent
        .put(guid, "6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60")
        .await;
    assert_eq!(s, 200, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = agent.http.get(agent.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = r.text().await.unwrap();
        let m = parse_exposition(&text);
        assert_eq!(m.value("lanyard_agent_instances"), 1.0, "{text}");
        assert_eq!(
            m.value("lanyard_agent_trust_bundle_sequence"),
            1.0,
            "{text}"
        );
        let left = m.value("lanyard_agent_earliest_expiry_seconds");
        assert!(left <= 4.0, "{text}");
        assert!(m.value("lanyard_agent_cell_credential_expiry_seconds") > 60.0);
        assert_eq!(
            m.value("lanyard_agent_renewals_total{outcome=\"failure\"}"),
            0.0,
            "{text}"
        );
        if m.value("lanyard_agent_renewals_total{outcome=\"success\"}") >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal counted: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The server's log as JSON lines: a server started with `LANYARD_LOG_FORMAT=json` and its
/// stderr in a file.
#[tokio::test]
async fn json_logs_parse_line_by_line_and_carry_the_request_id_without_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), &[]);
    let log = dir.path().join("serve.log");
    let file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap()
    };
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("LANYARD_LOG_FORMAT", "json")
        .env("LANYARD_LOG", "info,lanyard=debug")
        .env_remove("NO_COLOR")
        .stderr(file());
    let (child, at) =
        common::spawn_reporting(cmd, file(), std::time::Duration::from_secs(60)).unwrap();
    let _child = common::ChildGuard(child);
    let url = at.clone();
    let op = lanyard::client::CredentialFiles::read(&dir.path().join("data/credentials/operator"))
        .unwrap();
    let tls = lanyard::client::tls_config(
        op.bundle_pem.as_bytes(),
        Some((
            op.chain_pem.as_deref().unwrap(),
            op.key_pem.as_ref().unwrap().as_str(),
        )),
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    // The caller's id is kept; without one the server makes one.
    let r = http
        .get(format!("{url}/v1/authorities"))
        .header("x-request-id", "obs-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "obs-test-1");
    let r = http.get(format!("{url}/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 16, "{made}");
    assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");

    // Each request's closing line is written once its answer is on its way: poll for both.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains('\u{1b}'),
            "an escape code in the log:\n{text}"
        );
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        for l in &lines {
            assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
            // Every line written inside a request names it.
            if l["span"]["name"] == "request" {
                assert!(l["span"]["request_id"].is_string(), "{l}");
            }
        }
        let of = |id: &str| {
            lines
                .iter()
                .filter(|l| l["span"]["request_id"] == id)
                .count()
        };
        if of("obs-test-1") > 0 && of(&made) > 0 {
            let answered = lines
                .iter()
                .find(|l| l["span"]["request_id"] == "obs-test-1")
                .unwrap();
            assert_eq!(answered["span"]["path"], "/v1/authorities", "{answered}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line with the request ids:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_codes_and_name_the_request() {
    let ca = TestCa::start();
    let (s, _, _, headers) = raw(
        &ca,
        None,
        "GET",
        "/healthz",
        None,
        &[("x-request-id", "txt-1")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(headers["x-request-id"], "txt-1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = ca.log_text();
        assert!(
            !text.contains('\u{1b}'),
            "an escape code in the log:\n{text}"
        );
        if text.contains("request_id=txt-1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request id:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
