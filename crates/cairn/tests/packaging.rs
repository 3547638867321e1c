//! The packaging, validated without Docker or a cluster: `scripts/validate-packaging.py`
//! runs the Compose specification's own `docker-compose config` and
//! `check-jsonschema`, Helm's lint and render (helm-python-sdk) and
//! `kubernetes-validate --strict`; this test then checks what they resolved
//! against Cairn itself: every environment variable docker-compose.yml and the
//! chart give Cairn is a real config key (or a secret a real `*_env` key names),
//! the config files they mount load, and the probes point at routes that answer.
//!
//! Needs `CAIRN_TEST_PKG_PYTHON` (the python of the venv holding those tools);
//! `scripts/test.sh` installs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_core::config::Config;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Variables Cairn's command line reads that are not config keys.
const CLI_VARS: [&str; 3] = ["CAIRN_CONFIG", "CAIRN_LOG", "CAIRN_LOG_FORMAT"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the validators once; returns the directory with their output.
fn validated() -> PathBuf {
    let python = std::env::var("CAIRN_TEST_PKG_PYTHON").unwrap_or_else(|_| {
        panic!("CAIRN_TEST_PKG_PYTHON is not set: run the tests through scripts/test.sh")
    });
    let out =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("packaging-{}", std::process::id()));
    let r = std::process::Command::new(python)
        .arg(root().join("scripts/validate-packaging.py"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    out
}

/// Every `*_env` value and MCP header variable of `config`: the variables Cairn
/// reads secrets from.
fn named_secrets(config: &Config) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>, key: &str) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    walk(v, out, k);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out, key)),
            Value::String(s) if key.ends_with("_env") => {
                out.insert(s.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(&serde_json::to_value(config).unwrap(), &mut out, "");
    for s in &config.mcp.servers {
        out.extend(s.headers.values().cloned());
    }
    out
}

/// Checks that `env` (with the config file `file`) is what Cairn accepts: the
/// config loads, and every variable is a config key, a command-line variable, or
/// a secret a `*_env` key names.
fn check_env(what: &str, file: Option<&Path>, env: &BTreeMap<String, String>) -> Config {
    let config = Config::load(file, env.iter())
        .unwrap_or_else(|e| panic!("{what}: Cairn refuses this config: {e}"));
    let secrets = named_secrets(&config);
    for name in env.keys() {
        let is_key = name
            .strip_prefix("CAIRN_")
            .is_some_and(|rest| rest.split("__").count() == 2);
        assert!(
            is_key || CLI_VARS.contains(&name.as_str()) || secrets.contains(name),
            "{what}: {name} is neither a Cairn config key nor a secret a *_env key names"
        );
    }
    config
}

fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_and_chart_validate_and_give_cairn_only_real_keys_and_routes() {
    let out = validated();

    // docker-compose.yml, as the Compose tooling resolved it.
    let compose: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compose.json")).unwrap()).unwrap();
    let file = root().join("deploy/compose/cairn.toml");
    // Variables .env.example holds only for docker-compose.yml's own ${…}.
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let mut dotenv = env_file(&root().join(".env.example"));
    dotenv.retain(|k, _| !text.contains(&format!("${{{k}")));
    let mut cairns = 0;
    for (name, service) in compose["services"].as_object().unwrap() {
        let runs_cairn = service["command"]
            .as_array()
            .is_some_and(|c| c.first() == Some(&Value::from("serve")));
        if !runs_cairn {
            continue;
        }
        cairns += 1;
        let mut env: BTreeMap<String, String> = service["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        // .env reaches the container too (env_file).
        env.extend(dotenv.clone());
        assert_eq!(env["CAIRN_CONFIG"], "/etc/cairn/cairn.toml");
        let config = check_env(&format!("compose service {name}"), Some(&file), &env);
        assert_eq!(config.kafka.brokers, "kafka:9092");
        assert!(config.redis.url.is_some());
        assert_eq!(config.mcp.servers.len(), 2);
        assert!(
            service["healthcheck"]["test"]
                .to_string()
                .contains("/ready")
        );
    }
    assert_eq!(cairns, 2, "two Cairn replicas");

    // The chart, rendered with the default and the production values.
    let mut probes = BTreeSet::new();
    for variant in ["default", "production"] {
        let docs: Vec<Value> = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("helm-{variant}.json"))).unwrap(),
        )
        .unwrap();
        let toml = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .expect("a ConfigMap")["data"]["cairn.toml"]
            .as_str()
            .unwrap()
            .to_owned();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cairn.toml");
        std::fs::write(&file, &toml).unwrap();
        let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
        assert!(!deployments.is_empty());
        for d in deployments {
            let pod = &d["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            let env: BTreeMap<String, String> = c["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let v = e["value"].as_str().map_or_else(
                        // A secret's value is unknown here: a placeholder of the right shape.
                        || {
                            if e["name"] == "CAIRN_REDIS__URL" {
                                "redis://redis:6379/0".to_owned()
                            } else {
                                "secret-from-kubernetes-0123456789".to_owned()
                            }
                        },
                        str::to_owned,
                    );
                    (e["name"].as_str().unwrap().to_owned(), v)
                })
                .collect();
            let name = d["metadata"]["name"].as_str().unwrap();
            let config = check_env(&format!("chart ({variant}) {name}"), Some(&file), &env);
            assert!(
                pod["terminationGracePeriodSeconds"].as_u64().unwrap()
                    > config.server.shutdown_timeout.as_secs(),
                "terminationGracePeriodSeconds above server.shutdown_timeout"
            );
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["capabilities"]["drop"][0], "ALL");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            let role = c["args"][2].as_str().unwrap();
            assert!(["all", "api", "worker"].contains(&role), "{role}");
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                probes.insert(c[probe]["httpGet"]["path"].as_str().unwrap().to_owned());
            }
        }
    }

    // The probes answer on a running Cairn.
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(&common::config(dir.path(), None)).await;
    for path in &probes {
        let r = reqwest::get(format!("{}{path}", server.base))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    assert!(
        probes.contains("/live") && probes.contains("/ready"),
        "{probes:?}"
    );
}
