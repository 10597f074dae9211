//! Reading what `deploy/` ships, for the tests that check it: the PromQL of the Grafana
//! dashboards and of the alert rules, YAML documents (with compose's `<<` merge keys
//! applied), and the environment variables a carbonflow binary documents in `--help`.
//!
//! The tests themselves live in `tests/`: `manifests.rs` (no services needed) and
//! `observability.rs` (a running pipeline, Prometheus and headless Chromium).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// What went wrong reading a deploy file or a binary's help.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error reading it.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid YAML or JSON.
    #[error("{path} does not parse: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message.
        detail: String,
    },
    /// A file parses but lacks what it must hold.
    #[error("{path}: {detail}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        detail: String,
    },
    /// A binary could not be run.
    #[error(
        "running {binary} --help: {detail} (build the workspace binaries first: `cargo build --workspace --bins`, which `deploy/local/test.sh` does)"
    )]
    Binary {
        /// Path of the binary.
        binary: PathBuf,
        /// Why it could not be started, or the non-zero exit status it ended with.
        detail: String,
    },
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("deploy"))
}

fn read(path: &Path) -> Result<String, CheckError> {
    std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every document of a YAML file, as JSON values, with `<<` merge keys applied.
pub fn yaml_documents(path: &Path) -> Result<Vec<Value>, CheckError> {
    let text = read(path)?;
    let parse = |detail: String| CheckError::Parse {
        path: path.to_path_buf(),
        detail,
    };
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let mut v: serde_yaml_ng::Value =
            serde::Deserialize::deserialize(doc).map_err(|e| parse(e.to_string()))?;
        v.apply_merge().map_err(|e| parse(e.to_string()))?;
        out.push(serde_json::to_value(v).map_err(|e| parse(e.to_string()))?);
    }
    Ok(out)
}

/// The single document of a YAML file.
pub fn yaml_document(path: &Path) -> Result<Value, CheckError> {
    let mut docs = yaml_documents(path)?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        n => Err(CheckError::Shape {
            path: path.to_path_buf(),
            detail: format!("expected one YAML document, found {n}"),
        }),
    }
}

/// A JSON file.
pub fn json_document(path: &Path) -> Result<Value, CheckError> {
    serde_json::from_str(&read(path)?).map_err(|e| CheckError::Parse {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Files under `dir` (recursively) whose name ends with one of `extensions`, sorted.
pub fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if extensions
                .iter()
                .any(|x| p.to_string_lossy().ends_with(&format!(".{x}")))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// One PromQL expression of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// Dashboard file name.
    pub dashboard: String,
    /// Panel title.
    pub panel: String,
    /// The expression, with Grafana variables still in it.
    pub expr: String,
}

/// Every panel expression of every dashboard under `deploy/grafana/dashboards`.
pub fn dashboard_queries() -> Result<Vec<PanelQuery>, CheckError> {
    let mut out = Vec::new();
    for path in files_under(&deploy_dir().join("grafana/dashboards"), &["json"]) {
        let d = json_document(&path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let panels = d["panels"].as_array().ok_or_else(|| CheckError::Shape {
            path: path.clone(),
            detail: "no `panels` array".into(),
        })?;
        for p in panels.iter().filter(|p| p["type"] != "row") {
            let title = p["title"].as_str().unwrap_or("(untitled)").to_string();
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                return Err(CheckError::Shape {
                    path: path.clone(),
                    detail: format!("panel {title:?} has no query"),
                });
            }
            for t in targets {
                let expr = t["expr"].as_str().ok_or_else(|| CheckError::Shape {
                    path: path.clone(),
                    detail: format!("a query of panel {title:?} has no `expr`"),
                })?;
                out.push(PanelQuery {
                    dashboard: name.clone(),
                    panel: title.clone(),
                    expr: expr.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Replace Grafana variables (`$name`, `${name}`) in `expr`; longest names first so that
/// `$__rate_interval` is not taken for `$__rate`.
pub fn substitute(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut sorted: Vec<&(&str, &str)> = vars.iter().collect();
    sorted.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_string();
    for (name, value) in sorted {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// One alerting rule of `deploy/prometheus/alerts.yml`.
#[derive(Debug, Clone)]
pub struct AlertRule {
    /// `alert:` name.
    pub name: String,
    /// PromQL.
    pub expr: String,
    /// `annotations:` as given.
    pub annotations: Value,
}

/// Every alerting rule of `deploy/prometheus/alerts.yml`.
pub fn alert_rules() -> Result<Vec<AlertRule>, CheckError> {
    let path = deploy_dir().join("prometheus/alerts.yml");
    let doc = yaml_document(&path)?;
    let shape = |detail: &str| CheckError::Shape {
        path: path.clone(),
        detail: detail.into(),
    };
    let mut out = Vec::new();
    for g in doc["groups"]
        .as_array()
        .ok_or_else(|| shape("no `groups`"))?
    {
        for r in g["rules"]
            .as_array()
            .ok_or_else(|| shape("a group has no `rules`"))?
        {
            out.push(AlertRule {
                name: r["alert"]
                    .as_str()
                    .ok_or_else(|| shape("a rule has no `alert` name"))?
                    .into(),
                expr: r["expr"]
                    .as_str()
                    .ok_or_else(|| shape("a rule has no `expr`"))?
                    .into(),
                annotations: r["annotations"].clone(),
            });
        }
    }
    Ok(out)
}

/// The environment variables `binary args... --help` documents (clap's `[env: NAME=]`).
pub fn documented_env(binary: &Path, args: &[&str]) -> Result<BTreeSet<String>, CheckError> {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .map_err(|e| CheckError::Binary {
            binary: binary.to_path_buf(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(CheckError::Binary {
            binary: binary.to_path_buf(),
            detail: format!("exited with {}", out.status),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| {
            let end = rest.find(['=', ']'])?;
            Some(rest[..end].to_string())
        })
        .collect())
}

/// A binary of the workspace, built next to the running test (`target/<profile>/NAME`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test binary> → target/<profile>/<name>
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The port of a `host:port` listen address.
pub fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_prefers_the_longest_variable_name() {
        assert_eq!(
            substitute(
                "rate(x{s=\"$schedule\"}[$__rate_interval]) ${schedule}",
                &[
                    ("schedule", "a/b"),
                    ("__rate_interval", "30s"),
                    ("__rate", "no")
                ]
            ),
            "rate(x{s=\"a/b\"}[30s]) a/b"
        );
    }

    #[test]
    fn merge_keys_are_applied() {
        let dir = std::env::temp_dir().join(format!("deploy-checks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("m.yml");
        std::fs::write(&f, "base: &b {x: 1, y: 2}\nuse: {<<: *b, y: 3}\n").expect("write");
        let v = yaml_document(&f).expect("parses");
        assert_eq!(v["use"], serde_json::json!({"x": 1, "y": 3}));
    }
}
