//! Credentials that change under a running app: renewals, a root rotation, a half-written
//! set, and the whole path with the real agent.

use super::*;

/// A minimal app built on the module: answers `200 <serial in use>` or `403 <refusal>`.
async fn serve_in_process(creds: Credentials, policy: Policy) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(creds.server_config().unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, creds, policy) = (acceptor.clone(), creds.clone(), policy.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let verdict = PeerIdentity::from_connection(tls.get_ref().1)
                    .map_err(|e| e.to_string())
                    .and_then(|p| policy.check(&p).map_err(|r| r.to_string()));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = match verdict {
                    Ok(()) => ("200 OK", creds.status().serial),
                    Err(reason) => ("403 Forbidden", reason),
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[derive(Default)]
struct LoopStats {
    ok: u64,
    failures: Vec<String>,
    /// Served serials in the order they were first seen.
    serials: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_keeps_serving_through_renewals_and_a_root_rotation_with_zero_failed_connections() {
    let ca = start_ca();
    let mut cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let server = instance(&ca, &cell, tmp.path(), 20, SERVER_APP).await;
    let client = instance(&ca, &cell, tmp.path(), 21, CALLER_APP).await;
    let bundle1 = ca.bundle_pem();

    let server_creds = Credentials::from_dir(&server.dir).unwrap();
    let policy = Policy::new().allow_app(CALLER_APP.parse().unwrap());
    let addr = serve_in_process(server_creds.clone(), policy).await;
    let (client_creds, client_cfg) = client_config(&client.dir);

    // Two callers, each making a new connection per request for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(LoopStats::default()));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (stop, stats, cfg) = (stop.clone(), stats.clone(), client_cfg.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = get(&cfg, addr, "127.0.0.1").await;
                {
                    let mut s = stats.lock().unwrap();
                    match r {
                        Ok(a) if a.status == 200 => {
                            s.ok += 1;
                            if !s.serials.contains(&a.server_serial) {
                                s.serials.push(a.server_serial);
                            }
                        }
                        Ok(a) => s.failures.push(format!("{} {}", a.status, a.body)),
                        Err(e) => s.failures.push(e),
                    }
                }
                // Pacing, not synchronization: leaves the CPU to the server under test.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let seen = |serial: String| {
        let stats = stats.clone();
        move || stats.lock().unwrap().serials.last() == Some(&serial)
    };
    eventually(
        "the first answer",
        Duration::from_secs(10),
        seen(server.serial.clone()),
    )
    .await;

    // Renewals under the first root: new key and certificate, swapped in as a set.
    let mut expected = vec![server.serial.clone()];
    let mut client_key = client.key.clone();
    let mut client_chain = client.chain.clone();
    for round in 0..3 {
        let (r, key) = issue(&cell, 20, SERVER_APP).await;
        write_instance_dir(&server.dir, &r.certificate_chain, &key, &bundle1);
        eventually(
            "the renewed server certificate",
            Duration::from_secs(10),
            seen(r.serial.clone()),
        )
        .await;
        expected.push(r.serial);
        if round == 1 {
            let (r, key) = issue(&cell, 21, CALLER_APP).await;
            write_instance_dir(&client.dir, &r.certificate_chain, &key, &bundle1);
            (client_chain, client_key) = (r.certificate_chain, key);
            let mut rx = client_creds.subscribe();
            tokio::time::timeout(
                Duration::from_secs(10),
                rx.wait_for(|s| s.serial == r.serial),
            )
            .await
            .unwrap()
            .unwrap();
        }
    }

    // A new root: published first (both apps trust both roots), then activated.
    let op = ca.operator();
    let prepared: api::AuthorityView = op
        .post("/v1/authorities/prepare", &serde_json::json!({}), None)
        .await
        .unwrap();
    let (_, bundle2) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pem::parse_many(&bundle2).unwrap().len(), 2);
    let current_server = std::fs::read_to_string(server.dir.join("instance.crt")).unwrap();
    let current_server_key = std::fs::read_to_string(server.dir.join("instance.key")).unwrap();
    write_instance_dir(&server.dir, &current_server, &current_server_key, &bundle2);
    write_instance_dir(&client.dir, &client_chain, &client_key, &bundle2);
    for creds in [&server_creds, &client_creds] {
        let mut rx = creds.subscribe();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.trust_anchors == 2),
        )
        .await
        .unwrap()
        .unwrap();
    }
    let activated: api::AuthorityView = op
        .post(
            &format!("/v1/authorities/{}/activate", prepared.id),
            &serde_json::json!({"force": true}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(activated.state, "active");
    // The CA's own server certificate moves to the new root: the cell trusts both now.
    cell = Credential {
        client: CheckedClient::new(
            &ca.url(),
            tls_config(bundle2.as_bytes(), Some((&cell.chain_pem, &cell.key_pem))).unwrap(),
        )
        .unwrap(),
        ..cell
    };

    // Leaves from the new generation, for the server and the client.
    let (r, key) = issue(&cell, 20, SERVER_APP).await;
    assert_eq!(r.authority_id, prepared.id);
    write_instance_dir(&server.dir, &r.certificate_chain, &key, &bundle2);
    eventually(
        "the second-generation server certificate",
        Duration::from_secs(10),
        seen(r.serial.clone()),
    )
    .await;
    expected.push(r.serial);
    let (r, key) = issue(&cell, 21, CALLER_APP).await;
    write_instance_dir(&client.dir, &r.certificate_chain, &key, &bundle2);
    let mut rx = client_creds.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.serial == r.serial),
    )
    .await
    .unwrap()
    .unwrap();
    let ok_before = stats.lock().unwrap().ok;
    eventually(
        "answers with the new client certificate",
        Duration::from_secs(10),
        // Enough answers overall to mean something, whatever the machine's speed.
        || stats.lock().unwrap().ok >= (ok_before + 20).max(50),
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let s = stats.lock().unwrap();
    assert!(
        s.failures.is_empty(),
        "{} failed connections: {:?}",
        s.failures.len(),
        s.failures
    );
    assert!(s.ok >= 50, "only {} answers", s.ok);
    assert_eq!(s.serials, expected, "served serials, in order");
    assert_eq!(server_creds.status().loads, 6); // start, 3 renewals, new bundle, new root
    assert_eq!(server_creds.status().last_error, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_does_not_match_its_certificate_is_refused_and_the_set_in_use_stays() {
    let ca = start_ca();
    let cell = ca.join_cell("cell-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let inst = instance(&ca, &cell, tmp.path(), 1, SERVER_APP).await;
    let creds = Credentials::open(CredentialPaths::instance_dir(&inst.dir), None).unwrap();
    assert_eq!(creds.status().serial, inst.serial);

    // A writer that does not swap atomically: a new key next to the old certificate.
    let (other_key, _) = new_key_and_csr().unwrap();
    let data = std::fs::read_link(inst.dir.join("..data")).unwrap();
    std::fs::write(
        inst.dir.join(data).join("instance.key"),
        other_key.as_bytes(),
    )
    .unwrap();
    let e = creds.reload().unwrap_err();
    assert!(matches!(e, MtlsError::KeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("does not match"), "{e}");
    let st = creds.status();
    assert_eq!(st.serial, inst.serial);
    assert!(st.last_error.unwrap().contains("does not match"));
    // Loading from scratch refuses the pair too.
    assert!(matches!(
        Credentials::from_dir(&inst.dir).unwrap_err(),
        MtlsError::KeyMismatch { .. }
    ));

    // The next complete set is picked up.
    let (r, key) = issue(&cell, 1, SERVER_APP).await;
    write_instance_dir(&inst.dir, &r.certificate_chain, &key, &ca.bundle_pem());
    assert!(creds.reload().unwrap());
    let st = creds.status();
    assert_eq!((st.serial, st.last_error, st.loads), (r.serial, None, 2));
}

/// An operator call that tolerates the moment the server swaps the local operator files.
async fn operator_post<T: serde::de::DeserializeOwned>(
    ca: &TestCa,
    path: &str,
) -> Result<T, lanyard::client::ClientError> {
    let mut last = None;
    for _ in 0..5 {
        let op = ApiClient::from_credential_dir(&ca.url(), &ca.operator_dir()).unwrap();
        match op.post::<_, T>(path, &serde_json::json!({}), None).await {
            Ok(v) => return Ok(v),
            Err(e @ lanyard::client::ClientError::Api(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
        // A retry after a transport error (the files were being swapped), not a wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_root_rotation_under_live_app_to_app_traffic_with_the_real_agent_fails_no_handshake()
{
    // Short lifetimes so that the whole rotation takes a few seconds: generation 1 can retire
    // once its last certificate (at most max_ttl old at activation) has expired. 2 s is the
    // shortest that is safe for leaves in use: notAfter is whole seconds, so a 2 s leaf
    // lives 1 to 2 s.
    let ca = TestCa::start_with(&[
        ("issuance", "min_ttl = \"1s\""),
        // The cell credential gets default_ttl: 3 s leaves the agent a margin to renew it
        // on a loaded machine before its instance renewals need it.
        ("issuance", "default_ttl = \"3s\""),
        ("issuance", "max_ttl = \"3s\""),
        ("rotation", "propagation_delay = \"1s\""),
        ("rotation", "check_interval = \"200ms\""),
    ]);
    let agent = common::agent::TestAgent::start(&ca, "cell-1", "2s");
    let server_guid = "5e7e7000-0001";
    let client_guid = "c1e7e000-0002";
    assert_eq!(agent.put(server_guid, SERVER_APP).await.0, 200);
    assert_eq!(agent.put(client_guid, CALLER_APP).await.0, 200);
    let server_dir = agent.instance_dir(server_guid);
    let client_dir = agent.instance_dir(client_guid);

    // App 1: the example server process, allowing only the caller app.
    let log = ca.dir.path().join("mtls_server.log");
    let (mut server, addr) = example_server(&server_dir, &["--allow-app", CALLER_APP], &log);
    // App 2: a client on the module, one new connection per request, all the time.
    let (client_creds, client_cfg) = client_config(&client_dir);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new((
        0usize,
        Vec::<String>::new(),
        Vec::<String>::new(),
    )));
    let traffic = {
        let (stop, stats, cfg) = (stop.clone(), stats.clone(), client_cfg.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = get(&cfg, addr, server_guid).await;
                {
                    let mut s = stats.lock().unwrap();
                    match r {
                        Ok(a) if a.status == 200 => {
                            s.0 += 1;
                            if s.1.last() != Some(&a.server_serial) {
                                s.1.push(a.server_serial);
                            }
                        }
                        Ok(a) => s.2.push(format!("status {}: {}", a.status, a.body)),
                        Err(e) => s.2.push(e),
                    }
                }
                // Pacing, not synchronization: one caller, about fifty connections a second.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Traffic must flow before, during and after each step: wait for `n` more answers.
    let answered = {
        let stats = stats.clone();
        move || stats.lock().unwrap().0
    };
    let more_answers = |what: &'static str, n: usize| {
        let answered = answered.clone();
        let target = answered() + n;
        async move {
            eventually(what, Duration::from_secs(30), || answered() >= target).await;
        }
    };

    let started = Instant::now();
    more_answers("answers before the rotation", 10).await;
    let prepared: api::AuthorityView = operator_post(&ca, "/v1/authorities/prepare").await.unwrap();
    assert_eq!(prepared.id, "2");
    // Activate without force once the propagation delay allows it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match operator_post::<api::AuthorityView>(&ca, "/v1/authorities/2/activate").await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "activation never allowed: {e}"),
        }
        // Polling, with a deadline: the 409 says when activation will be allowed.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let activated = started.elapsed();
    more_answers("answers after the activation", 10).await;
    // Retire without force once every certificate generation 1 signed has expired.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match operator_post::<api::AuthorityView>(&ca, "/v1/authorities/1/retire").await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "retirement never allowed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retired = started.elapsed();
    // Keep talking after retirement, once the bundle without root 1 reached both apps' files.
    eventually(
        "the bundle without root 1 in both instances",
        Duration::from_secs(20),
        || {
            [&server_dir, &client_dir].iter().all(|d| {
                std::fs::read_to_string(d.join("trust-bundle.crt"))
                    .map(|b| pem::parse_many(b).map(|v| v.len()).unwrap_or(0) == 1)
                    .unwrap_or(false)
            })
        },
    )
    .await;
    more_answers("answers after the retirement", 10).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();

    let (ok, served, failures) = stats.lock().unwrap().clone();
    eprintln!(
        "rotation under traffic: {ok} connections, {} failed; activated after {activated:?}, retired after {retired:?}; server certificates served: {}",
        failures.len(),
        served.len()
    );
    assert!(
        failures.is_empty(),
        "failed connections: {failures:?}\nagent: {}",
        agent.log_text()
    );
    assert!(ok >= 30, "{ok} connections");
    assert!(
        served.len() >= 3,
        "the served certificate did not change: {served:?}"
    );
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server process exited: it must pick up every change without a restart"
    );

    // After retirement nothing chains to the old root: both apps' files verify with the new
    // bundle (root 2 only) and not with root 1.
    let (_, bundle) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pem::parse_many(&bundle).unwrap().len(), 1);
    let (_, gen1_root) = {
        let a: api::AuthoritiesResponse =
            ApiClient::from_credential_dir(&ca.url(), &ca.operator_dir())
                .unwrap()
                .get("/v1/authorities")
                .await
                .unwrap();
        (
            a.trust_bundle_sequence,
            a.authorities[0].root_certificate.clone(),
        )
    };
    for dir in [&server_dir, &client_dir] {
        let chain = std::fs::read_to_string(dir.join("instance.crt")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("trust-bundle.crt")).unwrap(),
            bundle
        );
        assert!(openssl_verify(&bundle, &chain, "sslclient").0);
        assert!(!openssl_verify(&gen1_root, &chain, "sslclient").0);
    }
    assert!(client_creds.status().last_error.is_none());
}
