#!/usr/bin/env bash
# Installs the servers that tests/sources.rs and tests/storage.rs start themselves:
#   moto_server   S3-compatible server, PyPI moto[server] (pip, into the machine's Python)
#   azurite-blob  Azure Blob emulator, npm azurite (into .tools/, nothing global)
# Both end up where the tests look: on PATH, or in .tools/bin and .tools/node_modules/.bin.
# Idempotent: a second run installs nothing. Needs python3 with pip, and node with npm
# (installed from Debian's packages when missing).
set -euo pipefail

MOTO_VERSION=5.2.1
AZURITE_VERSION=3.35.0

cd "$(dirname "$0")/.."
tools="$PWD/.tools"
mkdir -p "$tools/bin"

apt_install() {
    if ! command -v apt-get >/dev/null; then
        echo "test-servers: $* missing and no apt-get to install it" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- moto (S3) ---
if ! python3 -c "import moto, flask, werkzeug" 2>/dev/null \
    || [ "$(python3 -c 'import moto; print(moto.__version__)')" != "$MOTO_VERSION" ]; then
    command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 || apt_install python3 python3-pip
    # Debian's own Python refuses system-wide installs (PEP 668); a pyenv or venv Python does not.
    python3 -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "moto[server]==$MOTO_VERSION"
fi
# The script's directory may not be on PATH (pyenv shims wait for a rehash): link it.
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if [ -x "$scripts/moto_server" ]; then
    ln -sf "$scripts/moto_server" "$tools/bin/moto_server"
elif ! command -v moto_server >/dev/null; then
    echo "test-servers: moto_server was installed but cannot be found" >&2
    exit 1
fi

# --- Azurite (Azure Blob) ---
if [ ! -x "$tools/node_modules/.bin/azurite-blob" ] \
    || ! grep -q "\"version\": \"$AZURITE_VERSION\"" "$tools/node_modules/azurite/package.json"; then
    command -v npm >/dev/null || apt_install nodejs npm
    npm install --prefix "$tools" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
fi

"$tools/bin/moto_server" --help >/dev/null 2>&1 || moto_server --help >/dev/null
"$tools/node_modules/.bin/azurite-blob" --help >/dev/null
echo "test-servers: moto $MOTO_VERSION and azurite $AZURITE_VERSION ready"
