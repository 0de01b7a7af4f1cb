#!/usr/bin/env bash
# Prepare a fresh machine for citystream: Debian packages and the project's Python venv (.venv).
# Idempotent and quick when nothing changed. Services themselves are installed by
# `citystream install` / `citystream up` (cached under ~/.cache/citystream).
set -euo pipefail
cd "$(dirname "$0")/../.."

# mosquitto: only for its mosquitto_passwd (the broker run is 2.1, built by
# deploy/local/build-mosquitto.sh from cmake ... libsqlite3-dev, below); mosquitto-clients:
# mosquitto_pub for the tests. chromium and fonts-inter: the dashboard's browser tests
# (headless, driven by playwright).
apt_packages=(mosquitto mosquitto-clients pkg-config chromium fonts-inter
              curl cmake make gcc g++ libssl-dev libcjson-dev libsqlite3-dev)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
for tool in go cargo gcc; do
  command -v "$tool" >/dev/null || echo "bootstrap: warning: '$tool' not found; building influxd needs Go, Rust (rustup) and gcc" >&2
done

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "bootstrap: error: Python >= 3.11 needed (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
stamp=.venv/.citystream-deps
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "bootstrap: installing Python dependencies into .venv"
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e '.[dev]'; } > .venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    echo "bootstrap: error: pip install failed (log above, also in .venv/pip.log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
