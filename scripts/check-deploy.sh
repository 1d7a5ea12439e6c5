#!/usr/bin/env bash
# Checks of deploy/, docker-compose.yml and the supply chain that cargo test cannot run:
# kustomize build, Kubernetes and CRD schemas, the compose file, promtool (rules, their
# unit tests, the Prometheus config, the dashboard's PromQL) and cargo deny. Installs
# what it needs from the package registries (pinned; skipped when already there), so a
# clean machine runs it as it is. Prints what it checked; exits non-zero on any failure.
#
# Advisories need the RustSec database, which lives on GitHub, out of CI's reach: this
# script uses a copy it finds on the machine (CXONE_ADVISORY_DB, a clone of
# rustsec/advisory-db, or ../shared/advisory-db) and says plainly when there is none.
# CXONE_REQUIRE_ADVISORIES=1 makes that a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
TOOLS="$PWD/.tools"
VENV="$TOOLS/deploy-venv"
NODE_DIR="$TOOLS/deploy-node"
# cargo-deny's directory for the database at deny.toml's db-urls (its own naming).
ADVISORY_DIR="$TOOLS/advisory-dbs/advisory-db-3157b0e258782691"
started=$SECONDS

section() { printf '\ncheck-deploy: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  if [ ! -f "$TOOLS/.apt-updated" ]; then
    as_root apt-get update -qq
    mkdir -p "$TOOLS" && touch "$TOOLS/.apt-updated"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_python_tools() {
  if [ -x "$VENV/bin/python" ] && cmp -s deploy/checks/requirements.txt "$VENV/requirements.txt"; then
    return
  fi
  echo "installing the Python tools (deploy/checks/requirements.txt) into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r deploy/checks/requirements.txt
  cp deploy/checks/requirements.txt "$VENV/requirements.txt"
}

install_node_tools() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "installing Node.js and npm (apt)"
    apt_install nodejs npm
  fi
  if [ -d "$NODE_DIR/node_modules" ] && cmp -s deploy/checks/package-lock.json "$NODE_DIR/package-lock.json"; then
    return
  fi
  echo "installing the schema packages (deploy/checks/package.json) into $NODE_DIR"
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp deploy/checks/package.json deploy/checks/package-lock.json "$NODE_DIR/"
  (cd "$NODE_DIR" && npm ci --silent --no-audit --no-fund --loglevel=error)
}

install_promtool() {
  if ! command -v promtool >/dev/null; then
    echo "installing promtool (Debian's prometheus package)"
    apt_install prometheus
  fi
}

install_compose() {
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    echo "installing docker-compose (Debian's; its config command needs no engine)"
    apt_install docker-compose
  fi
}

install_cargo_deny() {
  if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "installing cargo-deny $CARGO_DENY_VERSION (cargo install; a few minutes)"
    cargo install --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION"
  fi
}

# Prints the source of a RustSec database on this machine, or nothing.
advisory_source() {
  local candidate
  for candidate in "${CXONE_ADVISORY_DB:-}" ../shared/advisory-db; do
    if [ -n "$candidate" ] && [ -d "$candidate/crates" -o -d "$candidate/.git" -o -f "$candidate/HEAD" ]; then
      echo "$candidate"
      return
    fi
  done
}

# Puts the database where deny.toml's db-path expects it, as the git repository
# cargo-deny requires. cargo-deny dates a database by its last fetch, or by the later
# of its HEAD commit and HEAD file: a copy made now from an old snapshot would pass
# for fresh, so the copy's HEAD file is dated by the snapshot itself, and
# maximum-db-staleness (deny.toml) measures the snapshot's real age.
prepare_advisories() {
  local source="$1" date
  if git -C "$source" rev-parse --git-dir >/dev/null 2>&1; then
    if [ "$(git -C "$ADVISORY_DIR" rev-parse HEAD 2>/dev/null)" != "$(git -C "$source" rev-parse HEAD)" ]; then
      rm -rf "$ADVISORY_DIR"
      git clone --quiet --depth 1 "file://$(cd "$source" && pwd)" "$ADVISORY_DIR"
    fi
    date="$(git -C "$ADVISORY_DIR" log -1 --format=%cI)"
  else
    # A plain copy of the database (its crates/ directory) says in SNAPSHOT-DATE when
    # it was taken (the upstream commit's date, RFC 3339): files' times say nothing.
    if [ ! -f "$source/SNAPSHOT-DATE" ]; then
      echo "$source has no SNAPSHOT-DATE: the database's age is unknown" >&2
      return 1
    fi
    date="$(cat "$source/SNAPSHOT-DATE")"
    rm -rf "$ADVISORY_DIR" && mkdir -p "$ADVISORY_DIR"
    cp -R "$source/crates" "$ADVISORY_DIR/"
    git -C "$ADVISORY_DIR" init --quiet
    git -C "$ADVISORY_DIR" add -A
    GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" git -C "$ADVISORY_DIR" \
      -c user.name=check-deploy -c user.email=check-deploy@localhost commit --quiet -m snapshot
  fi
  rm -f "$ADVISORY_DIR/.git/FETCH_HEAD"
  touch -d "$date" "$ADVISORY_DIR/.git/HEAD"
  git -C "$ADVISORY_DIR" log -1 --format='%h of %cs'
}

section "tools"
install_python_tools
install_node_tools
install_promtool
install_compose
install_cargo_deny
PY="$VENV/bin/python"
CHECKS=deploy/checks/deploy_checks.py
echo "  kubectl $("$VENV/bin/kubectl" version --client 2>/dev/null | tr '\n' ' ')"
echo "  $(promtool --version 2>&1 | head -1)"
echo "  $(cargo deny --version), node $(node --version)"

section "Kubernetes: kustomize build, Kubernetes schemas, KEDA and Prometheus operator CRDs"
"$PY" "$CHECKS" kubernetes --kubectl "$VENV/bin/kubectl" --node-modules "$NODE_DIR/node_modules"
"$PY" "$CHECKS" prometheusrule

section "docker-compose.yml"
"$PY" "$CHECKS" compose --node-modules "$NODE_DIR/node_modules"

section "Prometheus: alert rules, their unit tests, the scrape config, the dashboard's PromQL"
promtool check rules deploy/prometheus/alerts.yml | sed 's/^/  /'
promtool test rules deploy/prometheus/alerts_test.yml | sed 's/^/  /'
# prometheus.yml names the rules at their path in the container; check it with the
# repository's copy in that place.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp deploy/prometheus/alerts.yml "$scratch/alerts.yml"
sed "s#/etc/prometheus/alerts.yml#$scratch/alerts.yml#" deploy/prometheus/prometheus.yml > "$scratch/prometheus.yml"
promtool check config "$scratch/prometheus.yml" | sed "s#$scratch/##; s/^/  /"
"$PY" "$CHECKS" dashboard

section "cargo deny (offline)"
# cargo deny reads the graph with `cargo metadata`, which needs every crate downloaded.
cargo fetch --locked --quiet
advisories="NOT CHECKED: no RustSec database on this machine (set CXONE_ADVISORY_DB to a clone of rustsec/advisory-db)"
source="$(advisory_source)"
if [ -n "$source" ] || [ -d "$ADVISORY_DIR/.git" ]; then
  # Without a source, the copy a `cargo deny fetch` (with network) left in db-path.
  if [ -n "$source" ]; then
    snapshot="$(prepare_advisories "$source")" || exit 1
  else
    source="$ADVISORY_DIR" snapshot="$(git -C "$ADVISORY_DIR" log -1 --format='%h of %cs')"
  fi
  cargo deny --offline --color never check 2>&1 | sed 's/^/  /'
  advisories="checked against RustSec $snapshot ($source)"
else
  echo "  advisories $advisories"
  if [ "${CXONE_REQUIRE_ADVISORIES:-0}" = 1 ]; then
    exit 1
  fi
  cargo deny --offline --color never check bans licenses sources 2>&1 | sed 's/^/  /'
fi

section "all deployment checks passed in $((SECONDS - started))s; advisories $advisories"
