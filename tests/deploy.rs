//! The deployment files stay true to the code: every metric the dashboard and the alert
//! rules read is one the worker exports, every variable the compose file and the
//! Kubernetes manifests set is one the worker reads, the grace periods outlast
//! `SHUTDOWN_GRACE`, and KEDA watches the jobs queue the worker consumes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cxone_worker::broker::topology::Topology;
use cxone_worker::telemetry::names::{self, Kind};
use cxone_worker::text::parse_duration;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

#[path = "deploy/promql.rs"]
mod promql;
use promql::{metric_names, reading};

/// Standard process metrics of the exporter, and Prometheus's own series per target.
const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "up",
];

/// Variables the worker reads that `--help` does not list: OpenTelemetry's own,
/// read by its SDK.
const READ_OUTSIDE_HELP: &[&str] = &["OTEL_SERVICE_NAME"];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml(path: &str) -> Yaml {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_docs(path: &str) -> Vec<Yaml> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn text(value: &Yaml) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, found {value:?}"))
}

// --- metric names ------------------------------------------------------------------

/// The exported metric a series name belongs to: `_bucket`, `_sum` and `_count` are
/// series of a histogram, and of nothing else.
fn exported(series: &str) -> Option<&'static str> {
    let known = |name: &str| names::ALL.iter().find(|(n, _, _)| *n == name);
    if let Some((name, _, _)) = known(series) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let (name, kind, _) = known(series.strip_suffix(suffix)?)?;
        (*kind == Kind::Histogram).then_some(*name)
    })
}

fn collect_exprs(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", Json::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

fn rule_exprs(rules_file: &Yaml) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in rules_file["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule
                .get("alert")
                .or_else(|| rule.get("record"))
                .expect("a name");
            out.push((text(name).to_owned(), text(&rule["expr"]).to_owned()));
        }
    }
    out
}

#[test]
fn histogram_series_belong_to_histograms_only() {
    assert_eq!(
        exported("cxone_job_duration_seconds_bucket"),
        Some(names::JOB_DURATION)
    );
    assert_eq!(
        exported("cxone_jobs_total_count"),
        None,
        "a counter has no _count"
    );
    assert_eq!(exported("cxone_jobs_total"), Some(names::JOBS));
    assert_eq!(exported("cxone_jobs_totl"), None);
}

/// (where, expression) of every query of the dashboard and every alert rule.
fn expressions() -> Vec<(String, String)> {
    let dashboard: Json =
        serde_json::from_str(&read("deploy/grafana/dashboards/cxone-worker.json"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    let mut sources: Vec<(String, String)> = exprs
        .into_iter()
        .map(|e| ("dashboard".to_owned(), e))
        .collect();
    sources.extend(rule_exprs(&yaml("deploy/prometheus/alerts.yml")));
    assert!(
        sources.len() > 30,
        "{} expressions: the files were not read",
        sources.len()
    );
    sources
}

/// A label's documented values; `None` when the comment does not list them.
type Values = Option<BTreeSet<String>>;

/// The labels src/telemetry.rs documents on each metric's constant: "by `label`", or
/// "labelled with the crate `version`", with the values when a list in parentheses
/// follows ("by `answer` (2xx, 401, …)").
fn documented_labels() -> BTreeMap<String, BTreeMap<String, Values>> {
    let mut out = BTreeMap::new();
    let mut doc = String::new();
    for line in read("src/telemetry.rs").lines().map(str::trim) {
        if let Some(text) = line.strip_prefix("///") {
            doc.push_str(text);
            doc.push(' ');
            continue;
        }
        if let Some(rest) = line.strip_prefix("pub const ")
            && let Some((_, metric)) = rest.split_once("= \"")
        {
            let metric = metric.trim_end_matches("\";");
            out.insert(metric.to_owned(), labels_in(&doc));
        }
        doc.clear();
    }
    assert!(
        out.len() >= names::ALL.len(),
        "src/telemetry.rs was not read: {out:?}"
    );
    out
}

fn labels_in(doc: &str) -> BTreeMap<String, Values> {
    let mut labels = BTreeMap::new();
    let parts: Vec<&str> = doc.split('`').collect();
    // Odd parts are the backticked words; the part before says whether it is a label.
    for i in (1..parts.len()).step_by(2) {
        let before = parts[i - 1];
        if !(before.ends_with("by ") || before.ends_with("with the crate ")) {
            continue;
        }
        let after = parts.get(i + 1).copied().unwrap_or("");
        let values = after
            .strip_prefix(" (")
            .and_then(|list| list.split_once(')'))
            .and_then(|(list, _)| {
                list.split(',')
                    .map(|item| item.split(':').next().unwrap_or("").trim())
                    .map(|v| {
                        v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_')
                            .then(|| v.to_owned())
                    })
                    .collect::<Option<BTreeSet<String>>>()
            });
        labels.insert(parts[i].to_owned(), values);
    }
    labels
}

#[test]
fn dashboard_and_alerts_use_documented_labels_and_values() {
    let documented = documented_labels();
    let answers = documented[names::EXECUTE_CALLS]["answer"]
        .as_ref()
        .expect("answer's values");
    assert!(
        answers.contains("429") && answers.contains("transport_error"),
        "{answers:?}"
    );
    let mut wrong = Vec::new();
    for (source, expr) in expressions() {
        let read = reading(&expr);
        // Target labels take any value; `le` belongs to histogram buckets.
        let mut allowed: BTreeMap<String, Values> = [("job", None), ("instance", None)]
            .map(|(l, v)| (l.to_owned(), v))
            .into();
        for series in &read.metrics {
            if series.ends_with("_bucket") {
                allowed.insert("le".to_owned(), None);
            }
            for (label, values) in exported(series)
                .and_then(|m| documented.get(m))
                .into_iter()
                .flatten()
            {
                allowed.insert(label.clone(), values.clone());
            }
        }
        for used in read.labels {
            match allowed.get(&used.label) {
                None => wrong.push(format!("{source}: label {} in {expr}", used.label)),
                Some(Some(values)) => wrong.extend(
                    used.values
                        .iter()
                        .filter(|v| !values.contains(*v))
                        .map(|v| format!("{source}: {}=\"{v}\" in {expr}", used.label)),
                ),
                Some(None) => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "labels or values src/telemetry.rs does not document:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn dashboard_and_alerts_read_only_exported_metrics() {
    let sources = expressions();
    let mut unknown = BTreeMap::new();
    let mut used = BTreeSet::new();
    for (source, expr) in &sources {
        let found = metric_names(expr);
        assert!(!found.is_empty(), "{source}: no metric in {expr}");
        for series in found {
            match exported(&series) {
                Some(name) => {
                    used.insert(name);
                }
                None if PROCESS_METRICS.contains(&series.as_str()) => {}
                None => {
                    unknown.insert(series, source.clone());
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported by the worker (src/telemetry.rs names::ALL): {unknown:?}"
    );
    assert!(
        used.len() >= 20,
        "the dashboard shows only {} of the worker's metrics",
        used.len()
    );
}

// --- environment -------------------------------------------------------------------

fn help(subcommand: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cxone-worker"))
        .args([subcommand, "--help"])
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{subcommand} --help failed");
    // clap wraps lines anywhere, `[env:` and `[default:` included: read it as one line.
    let text = String::from_utf8(out.stdout).expect("help is UTF-8");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Variables a subcommand reads: every `[env: NAME` of its --help, and RUST_LOG when the
/// help names it (the log filter reads it, outside clap).
fn known_variables(subcommand: &str) -> BTreeSet<String> {
    let text = help(subcommand);
    let mut known: BTreeSet<String> = text
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    if text.contains("RUST_LOG") {
        known.insert("RUST_LOG".to_owned());
    }
    assert!(known.len() > 5, "{subcommand} --help lists {known:?}");
    known
}

/// `NAME=value` lines of the settings ConfigMap's env file.
fn settings_env() -> BTreeMap<String, String> {
    read("deploy/kubernetes/worker.env")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("worker.env: {l}"));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

fn worker_container(deployment: &Yaml) -> &Yaml {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn container_env(container: &Yaml) -> BTreeMap<String, Yaml> {
    container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| (text(&e["name"]).to_owned(), e.clone()))
        .collect()
}

/// Compose services that run the worker's image: the subcommand and the variables set.
fn compose_worker_services(compose: &Yaml) -> Vec<(String, String, BTreeSet<String>)> {
    let image = text(&compose["x-worker-image"]);
    let mut out = Vec::new();
    for (name, service) in compose["services"].as_mapping().expect("services") {
        if service.get("image").and_then(Yaml::as_str) != Some(image) {
            continue;
        }
        let subcommand = text(&service["command"][0]).to_owned();
        let env = service["environment"]
            .as_mapping()
            .expect("environment as a map");
        let vars = env.keys().map(|k| text(k).to_owned()).collect();
        out.push((text(name).to_owned(), subcommand, vars));
    }
    out
}

fn assert_known(place: &str, vars: &BTreeSet<String>, known: &BTreeSet<String>) {
    let strange: Vec<_> = vars
        .iter()
        .filter(|v| !known.contains(*v) && !READ_OUTSIDE_HELP.contains(&v.as_str()))
        .collect();
    assert!(
        strange.is_empty(),
        "{place} sets variables the worker does not read: {strange:?}"
    );
}

#[test]
fn deployment_files_set_only_variables_the_worker_reads() {
    let run = known_variables("run");
    let compose = yaml("docker-compose.yml");
    let services = compose_worker_services(&compose);
    let names: Vec<&str> = services.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["sim", "worker"],
        "the services that run the worker's image"
    );
    for (name, subcommand, vars) in &services {
        let known = known_variables(subcommand);
        assert_known(&format!("docker-compose.yml service {name}"), vars, &known);
    }
    let settings: BTreeSet<String> = settings_env().into_keys().collect();
    assert_known("deploy/kubernetes/worker.env", &settings, &run);
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let env: BTreeSet<String> = container_env(worker_container(&deployment))
        .into_keys()
        .collect();
    assert_known("deploy/kubernetes/deployment.yaml", &env, &run);
}

// --- shutdown, scaling, hardening ---------------------------------------------------

/// SHUTDOWN_GRACE's default, as `run --help` states it (one value, the code's).
fn default_shutdown_grace() -> Duration {
    let text = help("run");
    let after = text
        .split("[env: SHUTDOWN_GRACE=]")
        .nth(1)
        .expect("SHUTDOWN_GRACE in --help");
    let default = after
        .split("[default: ")
        .nth(1)
        .and_then(|d| d.split(']').next());
    parse_duration(default.expect("a default")).expect("a duration")
}

fn duration(raw: &str) -> Duration {
    parse_duration(raw).unwrap_or_else(|| panic!("{raw:?} is not a duration"))
}

#[test]
fn grace_periods_outlast_shutdown_grace() {
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let env = container_env(worker_container(&deployment));
    let configured = env
        .get("SHUTDOWN_GRACE")
        .map(|e| text(&e["value"]).to_owned())
        .or_else(|| settings_env().get("SHUTDOWN_GRACE").cloned());
    let grace = configured.map_or_else(default_shutdown_grace, |g| duration(&g));
    let period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(period) > grace,
        "terminationGracePeriodSeconds {period} does not outlast SHUTDOWN_GRACE {grace:?}"
    );

    let compose = yaml("docker-compose.yml");
    let worker = &compose["services"]["worker"];
    let grace = worker["environment"]
        .get("SHUTDOWN_GRACE")
        .map_or_else(default_shutdown_grace, |g| duration(text(g)));
    let stop = duration(text(&worker["stop_grace_period"]));
    assert!(
        stop > grace,
        "stop_grace_period {stop:?} does not outlast SHUTDOWN_GRACE {grace:?}"
    );
}

#[test]
fn keda_scales_on_the_jobs_queue_the_worker_consumes() {
    let prefix = settings_env()
        .get("CXONE_QUEUE_PREFIX")
        .cloned()
        .unwrap_or_else(|| "cxone".to_owned());
    let docs = yaml_docs("deploy/kubernetes/keda.yaml");
    let scaled = docs
        .iter()
        .find(|d| d["kind"] == "ScaledObject")
        .expect("a ScaledObject");
    let triggers = scaled["spec"]["triggers"].as_sequence().expect("triggers");
    assert_eq!(triggers.len(), 1);
    let trigger = &triggers[0];
    assert_eq!(trigger["type"], "rabbitmq");
    let meta = &trigger["metadata"];
    assert_eq!(text(&meta["queueName"]), Topology::new(&prefix, &[]).jobs());
    assert_eq!(meta["mode"], "QueueLength");
    assert_eq!(meta["protocol"], "amqp");
    text(&meta["value"])
        .parse::<u32>()
        .expect("value: ready messages per replica");

    let auth = docs
        .iter()
        .find(|d| d["kind"] == "TriggerAuthentication")
        .expect("a TriggerAuthentication");
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    // KEDA reads the broker URL from the Secret the worker reads AMQP_URL from.
    let env = container_env(worker_container(&deployment));
    let worker_ref = &env["AMQP_URL"]["valueFrom"]["secretKeyRef"];
    let keda_ref = &auth["spec"]["secretTargetRef"][0];
    assert_eq!(keda_ref["parameter"], "host");
    assert_eq!(
        (&keda_ref["name"], &keda_ref["key"]),
        (&worker_ref["name"], &worker_ref["key"])
    );
}

#[test]
fn the_pod_runs_locked_down_and_probed_on_the_admin_port() {
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = worker_container(&deployment);
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let port = &container["ports"][0];
    assert_eq!(port["containerPort"], 9090);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], port["name"]);
    }
    let env = container_env(container);
    assert_eq!(env["ADMIN_ADDR"]["value"], "0.0.0.0:9090");
    assert!(
        !env.contains_key("CXONE_CLIENT_SECRET"),
        "the secret is a file, never a variable"
    );
    // The secret file lies in a mounted secret volume.
    let file = text(&env["CXONE_CLIENT_SECRET_FILE"]["value"]);
    let mounts = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts");
    let mount = mounts
        .iter()
        .find(|m| file.starts_with(&format!("{}/", text(&m["mountPath"]))))
        .expect("CXONE_CLIENT_SECRET_FILE is in a mounted volume");
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let volume = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("its volume");
    assert!(
        volume.get("secret").is_some(),
        "{file} is not in a secret volume"
    );
}

// --- alert rules --------------------------------------------------------------------

#[test]
fn prometheus_rule_carries_the_alert_rules() {
    let alerts = yaml("deploy/prometheus/alerts.yml");
    let rule = yaml("deploy/kubernetes/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: \
         python3 deploy/checks/deploy_checks.py prometheusrule --write"
    );
}

#[test]
fn every_alert_is_labelled_explained_and_unit_tested() {
    let alerts = yaml("deploy/prometheus/alerts.yml");
    let tests = read("deploy/prometheus/alerts_test.yml");
    let mut count = 0;
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = text(&rule["alert"]);
            duration(text(&rule["for"]));
            let severity = text(&rule["labels"]["severity"]);
            assert!(
                ["critical", "warning"].contains(&severity),
                "{name}: severity {severity}"
            );
            for key in ["summary", "description", "runbook"] {
                assert!(
                    !text(&rule["annotations"][key]).is_empty(),
                    "{name}: no {key}"
                );
            }
            let tested = tests.matches(&format!("alertname: {name}\n")).count();
            assert!(
                tested >= 2,
                "{name} is tested {tested} times: test it firing and quiet"
            );
            count += 1;
        }
    }
    assert!(count >= 8, "{count} alerts");
}
