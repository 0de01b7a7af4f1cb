#!/usr/bin/env bash
# Build Mosquitto 2.1.x (broker and its persist-sqlite plugin) from Debian's copy of the upstream
# source tarball, checked against a pinned sha256 (GitHub and mosquitto.org are not needed).
# Why not Debian 12's mosquitto 2.0.11: it does not persist shared subscriptions across a
# restart; 2.1's persist-sqlite plugin does (docs/operations.md, "Known gaps").
# Installed at $CITYSTREAM_CACHE/mosquitto-<version>/{sbin/mosquitto,lib/mosquitto_persist_sqlite.so};
# a second run is a no-op. Needs: curl, cmake, make, gcc/g++, libssl-dev, libcjson-dev,
# libsqlite3-dev (deploy/local/bootstrap.sh installs them). Cold build: ~30 s on 2 cores.
set -euo pipefail

VERSION="${CITYSTREAM_MOSQUITTO_VERSION:-2.1.2}"
if [[ $VERSION == 2.1.2 ]]; then
  SHA256=a8e37cc4c1d4141e56c5a8729c5fa36b1f0b1ca95378a12131d68f0509de122a
else
  SHA256="${CITYSTREAM_MOSQUITTO_SHA256:-}"
  [[ -n $SHA256 ]] || {
    echo "error: mosquitto $VERSION: set CITYSTREAM_MOSQUITTO_SHA256 to the sha256 of its tarball" >&2
    exit 2
  }
fi
URL="${CITYSTREAM_MOSQUITTO_URL:-http://deb.debian.org/debian/pool/main/m/mosquitto/mosquitto_$VERSION.orig.tar.gz}"
CACHE="${CITYSTREAM_CACHE:-$HOME/.cache/citystream}"
PREFIX="$CACHE/mosquitto-$VERSION"
OUT="$PREFIX/sbin/mosquitto"
PLUGIN="$PREFIX/lib/mosquitto_persist_sqlite.so"
JOBS="${CITYSTREAM_BUILD_JOBS:-$(nproc)}"

cached() {
  if [[ -x "$OUT" && -f "$PLUGIN" ]]; then
    echo "mosquitto $VERSION: cached at $PREFIX"
    exit 0
  fi
}
cached

missing=()
for tool in curl sha256sum tar cmake make gcc g++; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
for header in openssl/ssl.h cjson/cJSON.h sqlite3.h; do
  [[ -f /usr/include/$header ]] || missing+=("$header")
done
if ((${#missing[@]})); then
  echo "error: building mosquitto $VERSION needs ${missing[*]}." >&2
  echo "       Run deploy/local/bootstrap.sh, or on Debian:" >&2
  echo "       apt-get install -y curl cmake build-essential libssl-dev libcjson-dev libsqlite3-dev" >&2
  exit 2
fi

mkdir -p "$PREFIX"
exec 9>"$PREFIX/.build.lock"
flock 9   # one build at a time per cache; a second caller waits and then finds the broker
cached

# The tarball is kept (2.7 MB) so a rebuild needs no network.
TARBALL="$CACHE/downloads/mosquitto_$VERSION.orig.tar.gz"
mkdir -p "$CACHE/downloads"
if [[ ! -f "$TARBALL" ]] || ! echo "$SHA256  $TARBALL" | sha256sum -c --status; then
  echo "mosquitto $VERSION: downloading $URL"
  if ! curl -fsSL --retry 3 --connect-timeout 20 -o "$TARBALL.part" "$URL"; then
    echo "error: could not download $URL." >&2
    echo "       Check the network or a proxy (http_proxy), or put the tarball at $TARBALL" >&2
    echo "       (or set CITYSTREAM_MOSQUITTO_URL to a mirror)." >&2
    rm -f "$TARBALL.part"
    exit 1
  fi
  got=$(sha256sum "$TARBALL.part" | cut -d' ' -f1)
  if [[ $got != "$SHA256" ]]; then
    echo "error: $URL has sha256 $got, expected $SHA256: refusing to build it." >&2
    echo "       A mirror or proxy served something else (an error page?): check" >&2
    echo "       CITYSTREAM_MOSQUITTO_URL or the proxy, then retry." >&2
    rm -f "$TARBALL.part"
    exit 1
  fi
  mv "$TARBALL.part" "$TARBALL"
fi
echo "mosquitto $VERSION: source verified (sha256 $SHA256)"

WORK=$(mktemp -d "$PREFIX/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Debian's .orig tarball is GitHub's archive: its top directory is named after the commit.
SRC="$WORK/src"
mkdir "$SRC"
tar -xzf "$TARBALL" -C "$SRC" --strip-components=1
[[ -f "$SRC/CMakeLists.txt" ]] || { echo "error: $TARBALL holds no CMakeLists.txt at its top" >&2; exit 1; }

# Only what the local stack runs: the broker and its plugins. No clients, apps (Debian's
# mosquitto_passwd and mosquitto_pub are used), docs, tests or websockets.
echo "mosquitto $VERSION: configuring (cmake)"
start=$(date +%s)
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_INSTALL_LIBDIR=lib \
  -DWITH_TESTS=OFF -DWITH_DOCS=OFF -DWITH_APPS=OFF -DWITH_CLIENTS=OFF -DWITH_CTRL_SHELL=OFF \
  -DWITH_PLUGIN_EXAMPLES=OFF -DWITH_PLUGIN_SPARKPLUG_AWARE=OFF -DWITH_WEBSOCKETS=OFF \
  -DWITH_LTO=OFF > "$WORK/cmake.log" 2>&1 || {
    cat "$WORK/cmake.log" >&2
    echo "error: cmake failed (output above); a missing -dev package is the usual cause." >&2
    exit 1
  }
echo "mosquitto $VERSION: compiling with $JOBS jobs (about 30 s on 2 cores)"
cmake --build "$WORK/build" -j "$JOBS"

# Install into a staging prefix, then move into place: the broker last, so a half-done install
# never looks cached.
STAGE="$WORK/stage"
cmake --install "$WORK/build" --prefix "$STAGE" --strip > /dev/null
[[ -x "$STAGE/sbin/mosquitto" && -f "$STAGE/lib/mosquitto_persist_sqlite.so" ]] || {
  echo "error: the build installed no sbin/mosquitto or lib/mosquitto_persist_sqlite.so" >&2; exit 1; }
rm -rf "$PREFIX/lib" "$PREFIX/include" "$PREFIX/sbin"
mv "$STAGE/lib" "$PREFIX/lib"
[[ -d "$STAGE/include" ]] && mv "$STAGE/include" "$PREFIX/include"
mv "$STAGE/sbin" "$PREFIX/sbin"
echo "mosquitto $VERSION: built in $(( $(date +%s) - start ))s -> $OUT"
"$OUT" -h 2>&1 | grep -m1 "^mosquitto version" || true
