//! Routers through the real broker and real HTTP: decisions by push, version gating,
//! weight semantics, forced flavours, fallbacks, expiry and telemetry.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::decode;
use carbonflow_schemas::records::{
    DecisionFlavour, ExpiryBehaviour, FallbackRule, ScheduleDecision, TelemetryBucket,
};
use carbonflow_schemas::testing::{
    eventually, free_port, fresh_layout, http_client, read_all, samples, send, try_http,
};

const SCHEDULE: &str = "shop/checkout";

/// A sample backend: `/{flavour}/...` answers 200 with the flavour's name;
/// `/broken/...` answers 503 with a body of its own; `/headers/...` lists the request
/// headers it received.
/// An upstream that answers each request from its head alone and then keeps reading
/// what its connection sends (as a server draining a body it did not need does), one
/// request per connection: a second request written on a connection is never answered.
async fn start_early_answering_backend() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\nanswered early";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    format!("http://{addr}")
}

async fn start_backend() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, backend_app()).await });
    format!("http://{addr}")
}

/// The sample backend's routes.
fn backend_app() -> axum::Router {
    axum::Router::new()
        .route(
            "/headers/{*rest}",
            axum::routing::any(|headers: axum::http::HeaderMap| async move {
                let mut lines: Vec<String> = headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                    .collect();
                lines.sort();
                lines.join("\n")
            }),
        )
        .route(
            "/early/{*rest}",
            // Answers from the request's head alone, before its body has arrived.
            axum::routing::any(|| async { "answered early" }),
        )
        .route(
            "/echo/{*rest}",
            axum::routing::any(
                |body: axum::body::Bytes| async move { format!("{} bytes", body.len()) },
            ),
        )
        .route(
            "/{flavour}/{*rest}",
            axum::routing::any(|Path((flavour, _)): Path<(String, String)>| async move {
                if flavour == "slow" {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return (StatusCode::OK, flavour);
                }
                if flavour == "broken" {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "backend overloaded".to_string(),
                    )
                } else {
                    (StatusCode::OK, flavour)
                }
            }),
        )
}

/// A certificate authority of its own and a server certificate it signed for 127.0.0.1.
fn test_certificates() -> (
    openssl::x509::X509,
    openssl::x509::X509,
    openssl::pkey::PKey<openssl::pkey::Private>,
) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{
        BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    };
    use openssl::x509::{X509, X509NameBuilder};
    let key = || {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
        PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey")
    };
    let name = |cn: &str| {
        let mut n = X509NameBuilder::new().expect("name");
        n.append_entry_by_text("CN", cn).expect("cn");
        n.build()
    };
    let base = |subject: &str, serial: u32, public: &PKey<openssl::pkey::Private>| {
        let mut b = X509::builder().expect("builder");
        b.set_version(2).expect("v3");
        b.set_serial_number(
            &BigNum::from_u32(serial)
                .expect("bn")
                .to_asn1_integer()
                .expect("serial"),
        )
        .expect("serial");
        b.set_subject_name(&name(subject)).expect("subject");
        b.set_pubkey(public).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
            .expect("not before");
        b.set_not_after(&Asn1Time::days_from_now(1).expect("later"))
            .expect("not after");
        b
    };
    let ca_key = key();
    let mut ca = base("carbonflow test CA", 1, &ca_key);
    ca.set_issuer_name(&name("carbonflow test CA"))
        .expect("issuer");
    ca.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
        .expect("bc");
    ca.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .expect("ku"),
    )
    .expect("ku");
    ca.sign(&ca_key, MessageDigest::sha256()).expect("sign CA");
    let ca = ca.build();
    let server_key = key();
    let mut server = base("127.0.0.1", 2, &server_key);
    server.set_issuer_name(ca.subject_name()).expect("issuer");
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .dns("localhost")
        .build(&server.x509v3_context(Some(&ca), None))
        .expect("san");
    server.append_extension(san).expect("san");
    server
        .append_extension(ExtendedKeyUsage::new().server_auth().build().expect("eku"))
        .expect("eku");
    server
        .sign(&ca_key, MessageDigest::sha256())
        .expect("sign server");
    (ca, server.build(), server_key)
}

/// The sample backend over TLS with a certificate of its own CA; its base URL and the
/// CA certificate's PEM file.
async fn start_tls_backend(test: &str) -> (String, std::path::PathBuf) {
    let (ca, cert, key) = test_certificates();
    let identity = native_tls_identity(&cert, &key);
    let acceptor = tokio_native_tls::TlsAcceptor::from(
        tokio_native_tls::native_tls::TlsAcceptor::new(identity).expect("acceptor"),
    );
    let ca_file =
        std::env::temp_dir().join(format!("carbonflow-{test}-{}-ca.pem", std::process::id()));
    std::fs::write(&ca_file, ca.to_pem().expect("pem")).expect("write the CA file");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(backend_app());
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}"), ca_file)
}

fn native_tls_identity(
    cert: &openssl::x509::X509,
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
) -> tokio_native_tls::native_tls::Identity {
    tokio_native_tls::native_tls::Identity::from_pkcs8(
        &cert.to_pem().expect("cert pem"),
        &key.private_key_to_pem_pkcs8().expect("key pem"),
    )
    .expect("identity")
}

struct RouterProcess {
    child: Child,
    proxy: String,
    admin: String,
}

impl RouterProcess {
    fn start(args: &KafkaArgs, id: &str, extra: &[&str]) -> Self {
        let (p, a) = (free_port(), free_port());
        let log = std::env::temp_dir().join(format!("{}{id}.log", args.topic_prefix));
        let child = Command::new(env!("CARGO_BIN_EXE_router"))
            .args(args.to_flags())
            .envs(args.to_secret_env())
            .args(["--listen", &format!("127.0.0.1:{p}")])
            .args(["--admin-listen", &format!("127.0.0.1:{a}")])
            .args(["--router-id", id, "--schedule", SCHEDULE])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn the router binary");
        Self {
            child,
            proxy: format!("http://127.0.0.1:{p}"),
            admin: format!("http://127.0.0.1:{a}"),
        }
    }

    async fn ready(&self) {
        let url = format!("{}/readyz", self.admin);
        eventually("router ready", Duration::from_secs(60), || async {
            matches!(
                carbonflow_schemas::testing::try_http("GET", &url, None).await,
                Ok((200, _))
            )
            .then_some(())
        })
        .await;
    }

    async fn metric(&self, line_prefix: &str) -> Option<f64> {
        let text = get_text(&format!("{}/metrics", self.admin), &[]).await.1;
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The sum of every series of metric `name`, whatever its labels.
    async fn metric_sum(&self, name: &str) -> Option<f64> {
        let text = get_text(&format!("{}/metrics", self.admin), &[]).await.1;
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    }

    /// Wait until the proxy holds `n` client connections over all its workers.
    async fn holding(&self, n: f64) {
        eventually(
            &format!("{n} client connections held"),
            Duration::from_secs(5),
            || async {
                (self.metric_sum("carbonflow_router_connections_open").await == Some(n))
                    .then_some(())
            },
        )
        .await;
    }

    /// The client connections each of workers 0 to `workers - 1` holds.
    async fn held_by_worker(&self, workers: usize) -> Vec<Option<f64>> {
        let mut held = Vec::new();
        for worker in 0..workers {
            let series = format!("carbonflow_router_connections_open{{worker=\"{worker}\"}}");
            held.push(self.metric(&series).await);
        }
        held
    }

    async fn held_version(&self) -> Option<i64> {
        let (_, v) =
            carbonflow_schemas::testing::http("GET", &format!("{}/decisions", self.admin), None)
                .await;
        v["decisions"]
            .as_array()?
            .iter()
            .find(|d| d["schedule"] == SCHEDULE)?["version"]
            .as_i64()
    }
}

impl RouterProcess {
    /// SIGTERM, and wait for the router to exit; its exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("the router exits")
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET returning status, body text and the serving flavour header.
async fn get_text(url: &str, headers: &[(&str, &str)]) -> (u16, String, Option<String>) {
    let r = send(&http_client(), "GET", url, headers, None)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (
        r.status,
        String::from_utf8_lossy(&r.body).into_owned(),
        r.flavour,
    )
}

fn decision(version: i64, backend: &str, weights: [f64; 3]) -> ScheduleDecision {
    let mut d = samples::schedule_decision();
    d.schedule = SCHEDULE.into();
    d.version = version;
    d.valid_until_ms = carbonflow_router::now_ms() + 600_000;
    d.on_expiry = ExpiryBehaviour::HighestPrecision;
    d.fallbacks = vec![];
    d.flavours = [("full", 100), ("mid", 50), ("lite", 30)]
        .into_iter()
        .zip(weights)
        .map(|((name, precision), w)| DecisionFlavour {
            name: name.into(),
            precision_percent: precision,
            weight_percent: w.round() as i32,
            weight: w,
            relative_energy: f64::from(precision) / 100.0,
            enabled: true,
            upstream_url: format!("{backend}/{name}"),
            upstream_header: None,
        })
        .collect();
    d
}

async fn publish(producer: &RecordProducer, args: &KafkaArgs, d: &ScheduleDecision) {
    let topic = args.layout().name(Topic::Decisions);
    carbonflow_schemas::testing::send_retrying(producer, &topic, &d.schedule, d).await;
}

async fn served(router: &RouterProcess, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (status, body, flavour) = get_text(&format!("{}/api/x", router.proxy), &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(flavour.as_deref(), Some(body.as_str()));
        *counts.entry(body).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_apply_every_decision_in_order_and_ignore_older_ones() {
    let args = fresh_layout("routers", 2).await;
    let backend = start_backend().await;
    let producer = RecordProducer::new(&args, "routers-test").expect("producer");
    publish(&producer, &args, &decision(1, &backend, [100.0, 0.0, 0.0])).await;
    let a = RouterProcess::start(&args, "ra", &["--mode", "smooth"]);
    let b = RouterProcess::start(&args, "rb", &["--mode", "smooth"]);
    a.ready().await;
    b.ready().await;
    // Bootstrap: the decision written before start is held, and routes.
    assert_eq!(a.held_version().await, Some(1));
    assert_eq!(served(&a, 5).await.get("full"), Some(&5));

    for v in 2..=4 {
        publish(&producer, &args, &decision(v, &backend, [30.0, 20.0, 50.0])).await;
    }
    for r in [&a, &b] {
        eventually("version 4 applied", Duration::from_secs(10), || async {
            (r.held_version().await == Some(4)).then_some(())
        })
        .await;
        let applied = r
            .metric("carbonflow_router_decision_propagation_seconds_count")
            .await;
        assert_eq!(applied, Some(3.0), "every live decision applied once");
    }
    // An older version written after a newer one is ignored.
    publish(&producer, &args, &decision(3, &backend, [0.0, 0.0, 100.0])).await;
    for r in [&a, &b] {
        eventually(
            "the old decision ignored",
            Duration::from_secs(10),
            || async {
                (r.metric("carbonflow_router_decisions_ignored_total").await == Some(1.0))
                    .then_some(())
            },
        )
        .await;
        assert_eq!(r.held_version().await, Some(4));
    }
    // Smooth mode: exact shares per cycle of 100.
    let counts = served(&a, 100).await;
    assert_eq!(
        (counts["full"], counts["mid"], counts["lite"]),
        (30, 20, 50),
        "{counts:?}"
    );

    // Telemetry: every request served is in request.telemetry, by flavour.
    let total: i64 = eventually(
        "telemetry of 105 requests",
        Duration::from_secs(15),
        || async {
            let mut total = 0;
            for p in 0..args.schedule_partitions {
                for (_, _, payload) in read_all(&args, Topic::Telemetry, p) {
                    let b: TelemetryBucket = decode(&payload?).ok()?;
                    if b.router_id == "ra" {
                        total += b.counts.iter().map(|c| c.count).sum::<i64>();
                    }
                }
            }
            (total >= 105).then_some(total)
        },
    )
    .await;
    assert_eq!(total, 105);
}

/// A router in smooth mode with no expiry grace, following the decisions of a fresh
/// layout, in front of the test backend; `publish` writes a decision with the next
/// version and waits until the router holds it.
struct Routing {
    args: KafkaArgs,
    backend: String,
    producer: RecordProducer,
    router: RouterProcess,
    url: String,
    version: i64,
}

impl Routing {
    async fn start(test: &str) -> Self {
        Self::start_with(test, &[]).await
    }

    async fn start_with(test: &str, extra: &[&str]) -> Self {
        let args = fresh_layout(test, 1).await;
        let backend = start_backend().await;
        let producer = RecordProducer::new(&args, "routing-test").expect("producer");
        let flags: Vec<&str> = ["--mode", "smooth", "--expiry-grace-ms", "0"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let router = RouterProcess::start(&args, "r1", &flags);
        router.ready().await;
        let url = format!("{}/api/x", router.proxy);
        Self {
            args,
            backend,
            producer,
            router,
            url,
            version: 0,
        }
    }

    fn decision(&self, weights: [f64; 3]) -> ScheduleDecision {
        decision(0, &self.backend, weights)
    }

    async fn publish(&mut self, mut d: ScheduleDecision) {
        self.version += 1;
        d.version = self.version;
        publish(&self.producer, &self.args, &d).await;
        let (r, want) = (&self.router, self.version);
        eventually("decision applied", Duration::from_secs(10), || async {
            (r.held_version().await == Some(want)).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_drops_hop_by_hop_headers_and_sets_the_mesh_header() {
    let mut t = Routing::start("hygiene").await;
    // Service-mesh mode: one upstream, the flavour named by a header.
    let mut d = t.decision([0.0, 100.0, 0.0]);
    d.flavours[1].upstream_url = format!("{}/headers", t.backend);
    d.flavours[1].upstream_header = Some("x-carbonrouter".into());
    t.publish(d).await;
    let (status, body, _) = get_text(
        &t.url,
        &[
            ("connection", "x-secret"),
            ("x-secret", "hop"),
            ("keep-alive", "timeout=5"),
            ("x-carbonflow-schedule", SCHEDULE),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("x-carbonflow-schedule"),
        "the router's own headers stay with it: {body}"
    );
    assert!(body.contains("x-carbonrouter: 50"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    let upstream = t.backend.trim_start_matches("http://");
    assert!(
        body.contains(&format!("host: {upstream}")),
        "the upstream is asked for by its own name: {body}"
    );
    assert!(
        !body.contains("x-secret") && !body.contains("keep-alive"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_the_upstream_only_when_the_schedule_forwards_them() {
    let mut t = Routing::start("credentials").await;
    let credentials = [
        ("authorization", "Bearer client-secret"),
        ("cookie", "session=42"),
    ];
    let mut d = t.decision([100.0, 0.0, 0.0]);
    d.flavours[0].upstream_url = format!("{}/headers", t.backend);
    t.publish(d.clone()).await;
    let (status, body, _) = get_text(&t.url, &credentials).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("authorization: Bearer client-secret") && body.contains("cookie: session=42"),
        "forwarded by default: {body}"
    );
    d.forward_credentials = false;
    t.publish(d).await;
    let (status, body, _) = get_text(&t.url, &credentials).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("client-secret") && !body.contains("session=42"),
        "stripped when the schedule says so: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_signed_by_a_private_ca_is_reached_with_its_ca_file() {
    let (https, ca_file) = start_tls_backend("tls").await;
    let ca = ca_file.to_string_lossy().into_owned();
    let mut t = Routing::start_with("tls", &["--upstream-ca-file", &ca]).await;
    let mut d = t.decision([100.0, 0.0, 0.0]);
    d.flavours[0].upstream_url = format!("{https}/full");
    t.publish(d).await;
    let (status, body, flavour) = get_text(&t.url, &[]).await;
    assert_eq!((status, body.as_str()), (200, "full"), "served over TLS");
    assert_eq!(flavour.as_deref(), Some("full"));

    // Without the CA the certificate is not trusted: a 502 naming the failed connection.
    let mut untrusted = Routing::start("tls-untrusted").await;
    let mut d = untrusted.decision([100.0, 0.0, 0.0]);
    d.flavours[0].upstream_url = format!("{https}/full");
    untrusted.publish(d).await;
    let (status, body, _) = get_text(&untrusted.url, &[]).await;
    assert_eq!(status, 502, "{body}");
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_used_in_proportion_whatever_their_sum() {
    let mut t = Routing::start("weights").await;
    // Sums below and above 100 are used proportionally, not normalised.
    for weights in [[10.0, 10.0, 0.0], [100.0, 300.0, 0.0]] {
        t.publish(t.decision(weights)).await;
        let counts = served(&t.router, 40).await;
        let total = weights[0] + weights[1];
        assert_eq!(
            counts.get("full").copied().unwrap_or(0) as f64,
            40.0 * weights[0] / total
        );
        assert_eq!(counts.get("lite"), None);
    }
    // Sum 0: 503 no_providers.
    t.publish(t.decision([0.0, 0.0, 0.0])).await;
    let (status, body, _) = get_text(&t.url, &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("\"no_providers\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_flavour_is_honoured_only_when_enabled() {
    let mut t = Routing::start_with("forced", &["--allow-forced-flavour"]).await;
    t.publish(t.decision([0.0, 0.0, 0.0])).await;
    let (status, body, _) = get_text(&t.url, &[("x-carbonrouter", "lite")]).await;
    assert_eq!((status, body.as_str()), (200, "lite"));
    let (status, body, _) = get_text(&t.url, &[("x-carbonrouter", "turbo")]).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("unknown_flavour") && body.contains("\"mid\""),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_a_flavour_needs_the_routers_consent() {
    let mut t = Routing::start("noforce").await;
    t.publish(t.decision([100.0, 0.0, 0.0])).await;
    let (status, body, _) = get_text(&t.url, &[("x-carbonrouter", "lite")]).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("forced_flavour_disabled") && body.contains("--allow-forced-flavour"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_naming_a_metadata_upstream_is_not_followed_there() {
    let mut t = Routing::start("ssrf").await;
    // Written to the topic directly: the processor's checks never saw it.
    let mut d = t.decision([100.0, 0.0, 0.0]);
    d.flavours[0].upstream_url = "http://169.254.169.254/latest/meta-data".into();
    t.publish(d).await;
    let (status, body, _) = get_text(&t.url, &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_not_allowed"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_matching_fallback_rule_wins() {
    let mut t = Routing::start("fallbacks").await;
    // Identical and overlapping conditions.
    let mut d = t.decision([0.0, 100.0, 0.0]);
    d.flavours[1].upstream_url = format!("{}/broken", t.backend);
    d.fallbacks = vec![
        FallbackRule {
            when_status: vec!["timeout".into()],
            to: "lite".into(),
        },
        FallbackRule {
            when_status: vec!["503".into()],
            to: "full".into(),
        },
        FallbackRule {
            when_status: vec!["5xx".into(), "503".into()],
            to: "lite".into(),
        },
    ];
    t.publish(d.clone()).await;
    let (status, body, flavour) = get_text(&t.url, &[]).await;
    assert_eq!(
        (status, body.as_str(), flavour.as_deref()),
        (200, "full", Some("full"))
    );
    assert_eq!(
        t.router
            .metric("carbonflow_router_fallbacks_total{schedule=\"shop/checkout\",rule=\"1\"}")
            .await,
        Some(1.0)
    );
    // No matching rule: the client gets the upstream's own error.
    d.fallbacks.truncate(1);
    t.publish(d).await;
    let (status, body, _) = get_text(&t.url, &[]).await;
    assert_eq!((status, body.as_str()), (503, "backend overloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_decision_routes_to_the_most_precise_flavour_until_a_fresh_one() {
    let mut t = Routing::start("expiry").await;
    let mut d = t.decision([0.0, 0.0, 100.0]);
    d.valid_until_ms = carbonflow_router::now_ms() - 1000;
    t.publish(d).await;
    assert_eq!(served(&t.router, 10).await.get("full"), Some(&10));
    let r = &t.router;
    eventually("expired gauge", Duration::from_secs(5), || async {
        (r.metric("carbonflow_router_decision_expired{schedule=\"shop/checkout\"}")
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    t.publish(t.decision([0.0, 0.0, 100.0])).await;
    assert_eq!(served(&t.router, 10).await.get("lite"), Some(&10));
    let r = &t.router;
    eventually("expired gauge cleared", Duration::from_secs(5), || async {
        (r.metric("carbonflow_router_decision_expired{schedule=\"shop/checkout\"}")
            .await
            == Some(0.0))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_keeps_routing_on_the_last_decision() {
    let broker = carbonflow_schemas::testing::PrivateBroker::start("outage");
    let args = broker.layout("outage.", 1).await;
    let backend = start_backend().await;
    let producer = RecordProducer::new(&args, "outage-test").expect("producer");
    publish(&producer, &args, &decision(1, &backend, [0.0, 100.0, 0.0])).await;
    // Short delivery timeout so undeliverable telemetry is declared dropped quickly.
    let r = RouterProcess::start(
        &args,
        "r-outage",
        &["--kafka-option", "message.timeout.ms=2000"],
    );
    r.ready().await;
    assert_eq!(served(&r, 3).await.get("mid"), Some(&3));

    broker.stop();
    // Still routing on the last decision while the broker is gone...
    assert_eq!(served(&r, 20).await.get("mid"), Some(&20));
    // ...and the telemetry that cannot be delivered is counted as dropped.
    eventually(
        "dropped telemetry counted",
        Duration::from_secs(20),
        || async {
            let dropped = r
                .metric("carbonflow_router_telemetry_dropped_total{reason=\"delivery\"}")
                .await?;
            (dropped >= 1.0).then_some(())
        },
    )
    .await;

    broker.resume();
    publish(&producer, &args, &decision(2, &backend, [0.0, 0.0, 100.0])).await;
    eventually(
        "decisions followed again",
        Duration::from_secs(60),
        || async { (r.held_version().await == Some(2)).then_some(()) },
    )
    .await;
    assert_eq!(served(&r, 3).await.get("lite"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_and_schedules_not_served_404() {
    let args = fresh_layout("limits", 1).await;
    let backend = start_backend().await;
    let producer = RecordProducer::new(&args, "limits-test").expect("producer");
    publish(&producer, &args, &decision(1, &backend, [100.0, 0.0, 0.0])).await;
    let r = RouterProcess::start(
        &args,
        "r-limits",
        &["--max-body-bytes", "16", "--schedule", "shop/undecided"],
    );
    r.ready().await;
    let client = http_client();
    let url = format!("{}/api/x", r.proxy);
    let post = |body: &'static str, schedule: &'static str| {
        let (client, url) = (&client, &url);
        async move {
            let headers = [("x-carbonflow-schedule", schedule)];
            send(client, "POST", url, &headers, Some(body)).await
        }
    };
    let small = post("tiny", SCHEDULE).await.expect("small");
    assert_eq!(small.status, 200);
    let big = post("a body well over sixteen bytes", SCHEDULE)
        .await
        .expect("big");
    assert_eq!(big.status, 413);
    let undecided = post("x", "shop/undecided").await.expect("undecided");
    assert_eq!(undecided.status, 503, "served, but no decision yet");
    assert!(String::from_utf8_lossy(&undecided.body).contains("no_decision"));
    let elsewhere = post("x", "other/team").await.expect("not served");
    assert_eq!(elsewhere.status, 404);
    assert!(String::from_utf8_lossy(&elsewhere.body).contains("schedule_not_served"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_started_before_its_broker_becomes_ready_once_the_broker_is_up() {
    let broker = carbonflow_schemas::testing::PrivateBroker::start("latebroker");
    let args = broker.layout("late.", 1).await;
    broker.stop();
    let r = RouterProcess::start(&args, "r-late", &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let admin = |path: &str| format!("{}{path}", r.admin);
    let (ready, _) = try_http("GET", &admin("/readyz"), None)
        .await
        .expect("the admin endpoints answer without a broker");
    assert_eq!(ready, 503, "not ready without the broker");
    let (health, _) = try_http("GET", &admin("/healthz"), None)
        .await
        .expect("healthz answers");
    assert_eq!(health, 200, "alive: it keeps trying");
    broker.resume();
    r.ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_stopped_under_load_reports_every_request_it_answered() {
    let mut t = Routing::start("drain").await;
    let mut d = t.decision([100.0, 0.0, 0.0]);
    d.flavours[0].upstream_url = format!("{}/slow", t.backend);
    t.publish(d).await;
    let url = t.url.clone();
    // Clients in flight when the stop comes: each request takes 300 ms upstream.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = http_client();
                let mut answered = 0_i64;
                for _ in 0..20 {
                    match send(&client, "GET", &url, &[], None).await {
                        Ok(reply) if reply.status == 200 => answered += 1,
                        _ => break,
                    }
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = t.router.terminate();
    assert!(status.success(), "router exited with {status}");
    let mut answered = 0;
    for c in clients {
        answered += c.await.expect("client");
    }
    assert!(answered > 0, "some requests were answered before the stop");
    let reported = eventually(
        "the telemetry of every answered request",
        Duration::from_secs(15),
        || async {
            let total: i64 = read_all(&t.args, Topic::Telemetry, 0)
                .into_iter()
                .filter_map(|(_, _, p)| decode::<TelemetryBucket>(&p?).ok())
                .filter(|b| b.router_id == "r1")
                .map(|b| b.counts.iter().map(|c| c.count).sum::<i64>())
                .sum();
            (total >= answered).then_some(total)
        },
    )
    .await;
    assert_eq!(
        reported, answered,
        "telemetry counts every answered request once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_connections_over_the_cap_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut t = Routing::start_with(
        "slowloris",
        &["--max-connections", "2", "--header-read-timeout-ms", "2000"],
    )
    .await;
    t.publish(t.decision([100.0, 0.0, 0.0])).await;
    let r = &t.router;
    let addr = r.proxy.trim_start_matches("http://").to_string();
    // A client that never finishes its headers is disconnected after the timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    let mut buf = [0_u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("the connection ends well before 10 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without an answer: {read:?}"
    );
    // Its slot is given back just after it closes, before the gauge falls.
    r.holding(0.0).await;
    // Two idle connections take both slots (once the workers have been handed them); a
    // third is closed at once.
    let _a = tokio::net::TcpStream::connect(&addr).await.expect("a");
    let _b = tokio::net::TcpStream::connect(&addr).await.expect("b");
    r.holding(2.0).await;
    let mut c = tokio::net::TcpStream::connect(&addr).await.expect("c");
    let _ = c.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let n = tokio::time::timeout(Duration::from_millis(1500), c.read(&mut buf))
        .await
        .expect("closed at once, not queued until a slot frees");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the third connection is closed without an answer: {n:?}"
    );
    // Once the idle ones time out, requests are served again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served(r, 3).await.get("full"), Some(&3));
    assert!(
        r.metric("carbonflow_router_connections_refused_total")
            .await
            .is_some_and(|v| v >= 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_is_spread_over_the_workers() {
    // Given a router with 3 worker threads, whose idle connections stay open for the test
    let t = Routing::start_with(
        "spread",
        &["--worker-threads", "3", "--header-read-timeout-ms", "60000"],
    )
    .await;
    let r = &t.router;
    let addr = r.proxy.trim_start_matches("http://").to_string();
    let connect = || async {
        tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect")
    };
    // When 9 clients connect at once, as a client's connection pool does when it starts
    let mut clients = Vec::new();
    for _ in 0..9 {
        clients.push(connect().await);
    }
    // Then each worker serves 3 of them, rather than the first to wake taking them all
    r.holding(9.0).await;
    assert_eq!(r.held_by_worker(3).await, [Some(3.0); 3]);
    // And a connection that ends gives its place back: the next one goes to its worker
    // (the third client's, worker 2; were the place not given back, worker 0 would get it)
    drop(clients.swap_remove(2));
    r.holding(8.0).await;
    clients.push(connect().await);
    r.holding(9.0).await;
    assert_eq!(r.held_by_worker(3).await, [Some(3.0); 3]);
}

/// Send `POST /api/x` for `schedule` with a chunked body of `chunks` chunks of `size`
/// bytes (no Content-Length, so its size is known only as it arrives) over a raw
/// connection; the response's status and body.
async fn post_chunked(proxy: &str, schedule: &str, chunks: usize, size: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = proxy.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/x HTTP/1.1\r\nhost: {addr}\r\nx-carbonflow-schedule: {schedule}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("{size:x}\r\n{}\r\n", "a".repeat(size));
    for _ in 0..chunks {
        // The router may answer (413) and close before the whole body is sent.
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply).to_string();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_no_fallback_can_resend_are_streamed_within_the_limit() {
    // Given a router limiting bodies to 64 KiB, in front of an upstream that counts the
    // bytes it receives
    let mut t = Routing::start_with("stream", &["--max-body-bytes", "65536"]).await;
    let mut d = t.decision([100.0, 0.0, 0.0]);
    d.flavours[0].upstream_url = format!("{}/echo", t.backend);
    t.publish(d).await;
    let proxy = t.router.proxy.clone();
    // When a POST (no fallback may resend it) streams 60 KiB in chunks
    let (status, body) = post_chunked(&proxy, SCHEDULE, 60, 1024).await;
    // Then the upstream receives every byte
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("61440 bytes"), "{body}");
    // and one that streams past the limit gets 413 naming it
    let (status, body) = post_chunked(&proxy, SCHEDULE, 100, 1024).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_reaches_the_upstream_before_the_client_has_sent_it_all() {
    // Given an upstream that answers from the request's head, and a router that would
    // wait 60 s for a body it buffers
    let mut t = Routing::start_with(
        "early",
        &["--body-read-timeout-ms", "60000", "--worker-threads", "1"],
    )
    .await;
    let mut d = t.decision([100.0, 0.0, 0.0]);
    d.flavours[0].upstream_url = format!("{}/early", start_early_answering_backend().await);
    t.publish(d).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = t.router.proxy.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    // When a POST sends its head and one chunk of its body, and no more
    let head = format!(
        "POST /api/x HTTP/1.1\r\nhost: {addr}\r\nx-carbonflow-schedule: {SCHEDULE}\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    // Then the upstream's answer comes back while the body is still open: the router
    // forwarded the request as it arrived instead of waiting to buffer the body.
    let mut reply = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut reply))
        .await
        .expect("an answer before the body ended (a buffered body would still be awaited)")
        .expect("read");
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // And the upstream connection still carrying that body is not handed to the next
    // request (on the same worker): it is answered at once, not after the upload ends.
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(10),
        get_text(&format!("{}/api/y", t.url), &[]),
    )
    .await
    .map(|(status, body, _)| (status, body))
    .expect("the next request answered while the first one's body is still open");
    assert_eq!((status, body.as_str()), (200, "answered early"));
    drop(conn);
}
