//! The compose stack, the Kubernetes manifests, the alert rules and the dashboards: every
//! file parses, and they name only images, binaries, ports, variables and files that
//! exist (no Docker engine or cluster is needed: what can be checked offline is).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use carbonflow_deploy_checks::{
    alert_rules, dashboard_queries, deploy_dir, documented_env, files_under, json_document,
    port_of, workspace_binary, yaml_document, yaml_documents,
};
use carbonflow_schemas::testing::repo_root;
use serde_json::Value;

/// The one carbonflow image and the upstream images the stacks use, each pinned.
const CARBONFLOW_IMAGE: &str = "ghcr.io/carbonflow/carbonflow";
const UPSTREAM_IMAGES: [&str; 3] = ["apache/kafka", "prom/prometheus", "grafana/grafana"];

/// Binaries the Dockerfile builds and copies, read from the Dockerfile itself.
fn image_binaries() -> BTreeSet<String> {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("docker/Dockerfile"))
        .expect("deploy/docker/Dockerfile exists");
    let copied: BTreeSet<String> = dockerfile
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("/src/target/release/"))
        .map(String::from)
        .collect();
    assert!(
        copied.len() >= 5,
        "the Dockerfile should copy every carbonflow binary, found {copied:?}"
    );
    for b in &copied {
        assert!(
            dockerfile.contains(&format!("--bin {b}")),
            "the Dockerfile copies {b} but does not build it (`--bin {b}`)"
        );
    }
    copied
}

/// Environment variables a binary documents for the subcommand a container runs.
fn env_of(command: &[String]) -> BTreeSet<String> {
    let binary = workspace_binary(&command[0]);
    // `processor run`, `ingest forecasts scenario`, ...: the subcommands before the options.
    let subcommands: Vec<&str> = command[1..]
        .iter()
        .take_while(|a| !a.starts_with('-') && !a.contains('/'))
        .map(String::as_str)
        .collect();
    // Options of the parent commands count too (`ingest --kafka-brokers ... forecasts ...`).
    (0..=subcommands.len())
        .flat_map(|n| documented_env(&binary, &subcommands[..n]).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        Value::String(s) => s.split_whitespace().map(String::from).collect(),
        _ => vec![],
    }
}

fn check_image(image: &str, whence: &str) {
    let (name, tag) = image
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{whence}: image {image} has no tag; pin a version"));
    assert_ne!(
        tag, "latest",
        "{whence}: pin {name} to a version, not latest"
    );
    assert!(
        name == CARBONFLOW_IMAGE || UPSTREAM_IMAGES.contains(&name),
        "{whence}: unexpected image {image}: expected {CARBONFLOW_IMAGE} or one of {UPSTREAM_IMAGES:?}"
    );
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let yaml = files_under(&deploy_dir(), &["yml", "yaml"]);
    assert!(
        yaml.len() >= 10,
        "expected the deploy YAML files, found {yaml:?}"
    );
    for f in &yaml {
        let docs = yaml_documents(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(!docs.is_empty(), "{} is empty", f.display());
    }
    for f in files_under(&deploy_dir(), &["json"]) {
        json_document(&f).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn compose_names_only_existing_images_binaries_ports_and_variables() {
    let dir = deploy_dir().join("compose");
    let compose = yaml_document(&dir.join("docker-compose.yml")).expect("compose parses");
    let services = compose["services"].as_object().expect("services");
    let binaries = image_binaries();
    // Listen ports per service, to check published ports and Prometheus targets.
    let mut listens: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for (name, s) in services {
        let image = s["image"]
            .as_str()
            .unwrap_or_else(|| panic!("service {name} has no image"));
        check_image(image, &format!("compose service {name}"));
        if let Some(build) = s.get("build") {
            let context = dir.join(build["context"].as_str().expect("build.context"));
            let dockerfile = context.join(build["dockerfile"].as_str().expect("build.dockerfile"));
            assert!(
                dockerfile.is_file(),
                "{name}: {} does not exist",
                dockerfile.display()
            );
        }
        let env: BTreeMap<String, String> = s["environment"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), String::from)))
                    .collect()
            })
            .unwrap_or_default();
        let ports: BTreeSet<u16> = env
            .iter()
            .filter(|(k, _)| k.ends_with("_LISTEN"))
            .filter_map(|(_, v)| port_of(v))
            .collect();
        if image.starts_with(CARBONFLOW_IMAGE) {
            let command = strings(&s["command"]);
            assert!(!command.is_empty(), "{name} has no command");
            let program = if command[0] == "sh" {
                // `sh -c "ingest ... && ..."`: every carbonflow program it runs must exist.
                let script = command.last().cloned().unwrap_or_default();
                for word in script.split_whitespace() {
                    if binaries.contains(word) {
                        continue;
                    }
                    assert!(
                        !["processor", "router", "ingest"]
                            .iter()
                            .any(|b| word.starts_with(b))
                            || word.contains('/'),
                        "{name}: script runs {word}, which the image does not have"
                    );
                }
                continue;
            } else {
                command.clone()
            };
            assert!(
                binaries.contains(&program[0]),
                "{name}: runs {}, which the image does not have ({binaries:?})",
                program[0]
            );
            let documented = env_of(&program);
            for k in env.keys().filter(|k| k.as_str() != "RUST_LOG") {
                assert!(
                    documented.contains(k),
                    "{name}: sets {k}, which `{} --help` does not document ({documented:?})",
                    program.join(" ")
                );
            }
            for arg in program
                .iter()
                .filter(|a| a.starts_with("/usr/share/carbonflow/"))
            {
                let rel = arg.trim_start_matches("/usr/share/carbonflow/");
                let exists = repo_root().join("benchmarks").join(rel).exists()
                    || rel == "sample-schedule.yaml";
                assert!(exists, "{name}: {arg} is not copied into the image");
            }
        }
        for p in strings(&s["ports"]) {
            let container: u16 = p
                .rsplit(':')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("{name}: port mapping {p} is not host:container"));
            if image.starts_with(CARBONFLOW_IMAGE) {
                assert!(
                    ports.contains(&container),
                    "{name}: publishes {container}, but listens on {ports:?}"
                );
            }
        }
        let mut all = ports;
        match name.as_str() {
            "prometheus" => {
                all.insert(9090);
            }
            "grafana" => {
                all.insert(3000);
            }
            "kafka" => {
                all.insert(9092);
            }
            _ => {}
        }
        listens.insert(name.clone(), all);
        for v in strings(&s["volumes"]) {
            let Some((host, _)) = v.split_once(':') else {
                continue;
            };
            if host.starts_with('.') {
                assert!(
                    dir.join(host).exists(),
                    "{name}: volume source {host} does not exist"
                );
            }
        }
    }
    // Every component reads its Kafka address from the environment, and it is the broker's.
    for (name, s) in services {
        if let Some(b) = s["environment"]["KAFKA_BROKERS"].as_str() {
            let (host, port) = b.split_once(':').expect("KAFKA_BROKERS host:port");
            let port: u16 = port.parse().expect("port");
            assert!(
                listens.get(host).is_some_and(|p| p.contains(&port)),
                "{name}: KAFKA_BROKERS={b} names no service port"
            );
        }
    }
    // Prometheus scrapes services on the ports they listen on.
    let prom =
        yaml_document(&deploy_dir().join("prometheus/prometheus.yml")).expect("prometheus.yml");
    for job in prom["scrape_configs"].as_array().expect("scrape_configs") {
        for sc in job["static_configs"].as_array().expect("static_configs") {
            for t in strings(&sc["targets"]) {
                let (host, port) = t.split_once(':').expect("target host:port");
                let port: u16 = port.parse().expect("target port");
                assert!(
                    listens.get(host).is_some_and(|p| p.contains(&port)),
                    "prometheus target {t} is not a compose service port ({listens:?})"
                );
            }
        }
    }
    // Grafana's datasource is the compose Prometheus.
    let ds = yaml_document(&deploy_dir().join("grafana/provisioning/datasources/prometheus.yml"))
        .expect("datasource");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");
    let provider =
        yaml_document(&deploy_dir().join("grafana/provisioning/dashboards/carbonflow.yml"))
            .expect("dashboard provider");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    assert!(
        strings(&services["grafana"]["volumes"])
            .iter()
            .any(|v| v == &format!("../grafana/dashboards:{path}:ro")),
        "grafana must mount deploy/grafana/dashboards at the provider path {path}"
    );
}

/// All Kubernetes objects of a kustomization directory, following `resources`.
fn kustomize(dir: &Path) -> Vec<Value> {
    let k = yaml_document(&dir.join("kustomization.yaml")).expect("kustomization parses");
    let mut out = Vec::new();
    for r in strings(&k["resources"]) {
        let p = dir.join(&r);
        assert!(p.exists(), "{}: resource {r} does not exist", dir.display());
        if p.is_dir() {
            out.extend(kustomize(&p));
        } else {
            out.extend(yaml_documents(&p).unwrap_or_else(|e| panic!("{e}")));
        }
    }
    for i in k["images"].as_array().cloned().unwrap_or_default() {
        assert_eq!(
            i["name"], CARBONFLOW_IMAGE,
            "kustomize images entry names another image"
        );
        assert!(
            i["newTag"].as_str().is_some_and(|t| t != "latest"),
            "pin the image tag"
        );
    }
    out
}

#[test]
fn kubernetes_manifests_name_only_existing_binaries_ports_variables_and_rules() {
    let base = kustomize(&deploy_dir().join("kubernetes/base"));
    let example = kustomize(&deploy_dir().join("kubernetes/examples/autoscaler-ceilings"));
    assert!(example.len() > base.len(), "the example adds to the base");
    let binaries = image_binaries();
    let by_kind =
        |kind: &str| -> Vec<&Value> { base.iter().filter(|o| o["kind"] == kind).collect() };
    let config: BTreeSet<String> = by_kind("ConfigMap")
        .iter()
        .flat_map(|c| {
            c["data"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    let mut pod_ports: BTreeMap<String, BTreeMap<String, u16>> = BTreeMap::new();
    for w in by_kind("Deployment")
        .into_iter()
        .chain(by_kind("StatefulSet"))
    {
        let name = w["metadata"]["name"].as_str().expect("name").to_string();
        let app = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"].clone();
        assert_eq!(
            w["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            app
        );
        for c in w["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
        {
            assert_eq!(c["image"], CARBONFLOW_IMAGE, "{name}: image");
            let command = strings(&c["command"]);
            assert!(
                binaries.contains(&command[0]),
                "{name}: runs {}, not in the image",
                command[0]
            );
            let documented = env_of(&command);
            for k in &config {
                assert!(
                    documented.contains(k),
                    "{name}: ConfigMap key {k} is not a variable of {}",
                    command[0]
                );
            }
            let mut listen_ports = BTreeSet::new();
            for e in c["env"].as_array().cloned().unwrap_or_default() {
                let k = e["name"].as_str().expect("env name");
                assert!(
                    documented.contains(k),
                    "{name}: sets {k}, which `{}` does not document",
                    command.join(" ")
                );
                if k.ends_with("_LISTEN") {
                    listen_ports.extend(e["value"].as_str().and_then(port_of));
                }
            }
            let mut named = BTreeMap::new();
            for p in c["ports"].as_array().expect("ports") {
                let port = p["containerPort"].as_u64().expect("containerPort") as u16;
                assert!(
                    listen_ports.contains(&port),
                    "{name}: containerPort {port} is not a listen port {listen_ports:?}"
                );
                named.insert(p["name"].as_str().expect("port name").to_string(), port);
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                let port = c[probe]["httpGet"]["port"]
                    .as_str()
                    .expect("probe port name");
                assert!(
                    named.contains_key(port),
                    "{name}: {probe} uses unknown port {port}"
                );
            }
            pod_ports.insert(app.as_str().expect("app label").to_string(), named);
        }
    }
    let prom =
        yaml_document(&deploy_dir().join("prometheus/prometheus.yml")).expect("prometheus.yml");
    let jobs: BTreeSet<String> = prom["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .filter_map(|j| j["job_name"].as_str().map(String::from))
        .collect();
    let monitor = by_kind("ServiceMonitor")[0];
    let job_label = monitor["spec"]["jobLabel"].as_str().expect("jobLabel");
    let endpoint_port = monitor["spec"]["endpoints"][0]["port"]
        .as_str()
        .expect("endpoint port");
    for svc in by_kind("Service") {
        let app = svc["spec"]["selector"]["app.kubernetes.io/name"]
            .as_str()
            .expect("selector");
        let ports = &pod_ports[app];
        for p in svc["spec"]["ports"].as_array().expect("ports") {
            let target = p["targetPort"].as_str().expect("named targetPort");
            assert!(
                ports.contains_key(target),
                "service {app}: targetPort {target} not on the pods"
            );
        }
        // Services without the job label are not scraped (the routers' data plane).
        let Some(job) = svc["metadata"]["labels"][job_label].as_str() else {
            assert!(
                !svc["spec"]["ports"]
                    .as_array()
                    .expect("ports")
                    .iter()
                    .any(|p| p["name"] == endpoint_port),
                "service {app} has a metrics port but no job label"
            );
            continue;
        };
        assert!(
            jobs.contains(job),
            "service {app}: job {job} is not a job of deploy/prometheus ({jobs:?})"
        );
        assert!(
            svc["spec"]["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .any(|p| p["name"] == endpoint_port),
            "service {app} has no port named {endpoint_port} for the ServiceMonitor"
        );
    }
    let rule = by_kind("PrometheusRule")[0];
    let alerts = yaml_document(&deploy_dir().join("prometheus/alerts.yml")).expect("alerts.yml");
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "deploy/kubernetes/base/prometheusrule.yaml must carry exactly the groups of deploy/prometheus/alerts.yml"
    );
    let scaled = example
        .iter()
        .find(|o| o["kind"] == "ScaledObject")
        .expect("ScaledObject");
    let target = scaled["spec"]["scaleTargetRef"]["name"]
        .as_str()
        .expect("scale target");
    assert!(
        base.iter()
            .any(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == target),
        "the autoscaler example scales {target}, which the base does not deploy"
    );
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_section() {
    let runbook =
        std::fs::read_to_string(repo_root().join("docs/runbook.md")).expect("docs/runbook.md");
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let rules = alert_rules().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rules.len() >= 8,
        "expected the alerts the issue lists, found {}",
        rules.len()
    );
    for r in &rules {
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                r.annotations[key]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "alert {} has no {key}",
                r.name
            );
        }
        let anchor = r.annotations["runbook_url"]
            .as_str()
            .and_then(|u| u.split_once("docs/runbook.md#"))
            .map(|(_, a)| a.to_string())
            .unwrap_or_else(|| {
                panic!(
                    "alert {}: runbook_url must point into docs/runbook.md",
                    r.name
                )
            });
        assert_eq!(
            anchor,
            r.name.to_lowercase(),
            "alert {}: runbook anchor",
            r.name
        );
        assert!(
            sections.contains(&anchor),
            "docs/runbook.md has no section `## {}`",
            r.name
        );
    }
    assert_eq!(
        sections.len(),
        rules.len(),
        "one runbook section per alert, no more"
    );
}

#[test]
fn dashboards_have_unique_uids_variables_and_a_query_per_panel() {
    let mut uids = BTreeSet::new();
    for f in files_under(&deploy_dir().join("grafana/dashboards"), &["json"]) {
        let d = json_document(&f).expect("dashboard parses");
        let uid = d["uid"].as_str().expect("uid").to_string();
        assert!(uids.insert(uid.clone()), "duplicate dashboard uid {uid}");
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        assert!(
            vars.contains(&"datasource"),
            "{uid}: no datasource variable"
        );
    }
    let schedule = json_document(&deploy_dir().join("grafana/dashboards/carbonflow-schedule.json"))
        .expect("schedule");
    let vars: Vec<&str> = schedule["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["namespace", "schedule", "flavour"] {
        assert!(
            vars.contains(&v),
            "schedule dashboard lacks the {v} variable"
        );
    }
    let queries = dashboard_queries().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        queries.len() >= 30,
        "expected the panels the issue lists, found {} queries",
        queries.len()
    );
}

/// The validator of Kubernetes manifests that works offline (PyPI's `kubernetes-validate`,
/// installed by `deploy/local/test-tools.sh`), or the reason it cannot be run.
fn kubernetes_validate() -> std::process::Command {
    // The module, not the script: pip may put scripts outside PATH.
    let python = std::env::var("CARBONFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut c = std::process::Command::new(python);
    c.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
    c
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let files: Vec<std::path::PathBuf> = files_under(&deploy_dir().join("kubernetes"), &["yaml"])
        .into_iter()
        .filter(|f| !f.ends_with("kustomization.yaml"))
        .collect();
    assert!(!files.is_empty());
    let out = kubernetes_validate().args(&files).output().unwrap_or_else(|e| {
        panic!(
            "python3 not found ({e}): kubernetes-validate runs as `python3 -m kubernetes_validate` (set CARBONFLOW_PYTHON)"
        )
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate is not installed: `pip install kubernetes-validate` (deploy/local/test-tools.sh does)"
    );
    assert!(out.status.success(), "{text}");
    // Only the CRDs (Prometheus Operator, KEDA) have no built-in schema.
    for line in text.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            ["ServiceMonitor", "PrometheusRule", "ScaledObject"]
                .iter()
                .any(|k| line.contains(&format!("kind {k} "))),
            "{line}"
        );
    }
}

#[test]
fn pods_satisfy_the_kubelets_non_root_rule_and_admin_ports_are_fenced() {
    let base = kustomize(&deploy_dir().join("kubernetes/base"));
    for o in base
        .iter()
        .filter(|o| ["Deployment", "StatefulSet"].contains(&o["kind"].as_str().unwrap_or("")))
    {
        let name = o["metadata"]["name"].as_str().unwrap_or("?");
        let pod = &o["spec"]["template"]["spec"];
        let ctx = &pod["securityContext"];
        if ctx["runAsNonRoot"] == true {
            // The kubelet refuses a non-numeric image USER under runAsNonRoot unless the
            // pod says which (non-zero) user runs it.
            let user = ctx["runAsUser"].as_i64();
            assert!(
                user.is_some_and(|u| u > 0),
                "{name}: runAsNonRoot needs a numeric, non-zero runAsUser"
            );
        }
    }
    // No Service exposes an admin port beside a data port.
    for svc in base.iter().filter(|o| o["kind"] == "Service") {
        let ports: Vec<&str> = svc["spec"]["ports"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            !(ports.contains(&"admin") && ports.contains(&"http")),
            "{}: the admin port must not be on the data-plane Service",
            svc["metadata"]["name"]
        );
    }
    // Every admin port is behind a NetworkPolicy.
    let policies: Vec<&Value> = base
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .collect();
    for app in ["processor", "router"] {
        assert!(
            policies.iter().any(|p| {
                p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == app
                    && p["spec"]["ingress"].as_array().is_some_and(|rules| {
                        rules.iter().any(|r| {
                            r["from"].is_array()
                                && r["ports"]
                                    .as_array()
                                    .is_some_and(|ps| ps.iter().any(|p| p["port"] == "admin"))
                        })
                    })
            }),
            "{app}: no NetworkPolicy restricts who reaches its admin port"
        );
    }
}
