#!/usr/bin/env bash
# Build InfluxDB OSS 2.x `influxd` from its Go module (no Docker, no binary downloads).
# Cached at $CITYSTREAM_CACHE/influxdb-<version>/bin/influxd; a second run is a no-op.
# Needs: go, cargo (rustup "stable"), pkg-config, gcc/g++. Cold build: ~15-25 min on 2 cores.
set -euo pipefail

VERSION="${CITYSTREAM_INFLUXDB_VERSION:-2.7.12}"
CACHE="${CITYSTREAM_CACHE:-$HOME/.cache/citystream}"
PREFIX="$CACHE/influxdb-$VERSION"
OUT="$PREFIX/bin/influxd"

if [[ -x "$OUT" ]]; then
  echo "influxd $VERSION: cached at $OUT"
  exit 0
fi

for tool in go cargo pkg-config gcc g++; do
  command -v "$tool" >/dev/null || {
    echo "error: '$tool' not found; building influxd needs Go, Rust (cargo), pkg-config and gcc/g++." >&2
    echo "       On Debian: apt-get install -y golang pkg-config build-essential, and rustup for cargo." >&2
    exit 2
  }
done

mkdir -p "$PREFIX"
exec 9>"$PREFIX/.build.lock"
flock 9   # one build at a time per cache; a second caller waits and then finds the binary
if [[ -x "$OUT" ]]; then
  echo "influxd $VERSION: cached at $OUT"
  exit 0
fi

export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:--buildvcs=false} -mod=mod"
mkdir -p "$PREFIX/bin"
echo "influxd $VERSION: downloading Go module (cached in $(go env GOMODCACHE))"
DIR=$(go mod download -json "github.com/influxdata/influxdb/v2@v$VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[[ -d "$DIR" ]] || { echo "error: go mod download gave no source dir for influxdb v$VERSION" >&2; exit 1; }

SRC=$(mktemp -d "$PREFIX/src.XXXXXX")
trap 'rm -rf "$SRC"' EXIT
cp -r "$DIR/." "$SRC"
chmod -R u+w "$SRC"
cd "$SRC"

echo "influxd $VERSION: building the pkg-config wrapper that builds libflux (Rust)"
go build -o "$PREFIX/bin/pkg-config-flux" github.com/influxdata/pkg-config

# Flux pins Rust 1.72 (rust-toolchain.toml) and its crates `deny(warnings)`, which newer rustc
# turns into errors. Use the local stable toolchain and cap lints at "warn" for every rustc call.
# RUSTFLAGS=--cap-lints=warn is not enough: with `cargo build --target` (which the wrapper passes)
# RUSTFLAGS skips build-dependencies, and flux's build script compiles flux-core for the host.
export PKG_CONFIG="$PREFIX/bin/pkg-config-flux"
export RUSTUP_TOOLCHAIN="${RUSTUP_TOOLCHAIN:-stable}"
cat > "$PREFIX/bin/rustc-cap-lints" <<'WRAP'
#!/bin/sh
rustc="$1"; shift
case " $* " in *" --cap-lints "*|*" --cap-lints="*) exec "$rustc" "$@";; esac
exec "$rustc" "$@" --cap-lints warn
WRAP
chmod +x "$PREFIX/bin/rustc-cap-lints"
export RUSTC_WRAPPER="$PREFIX/bin/rustc-cap-lints"

echo "influxd $VERSION: building influxd (libflux + Go; expect 15-25 min cold)"
start=$(date +%s)
ldflags="-X main.version=v$VERSION -X main.commit=gomodule"
if ! go build -tags sqlite_foreign_keys,sqlite_json -ldflags "$ldflags" -o "$OUT.tmp" ./cmd/influxd; then
  echo "influxd $VERSION: retrying with -checklinkname=0 (newer Go linkers reject old go:linkname uses)"
  go build -tags sqlite_foreign_keys,sqlite_json -ldflags "$ldflags -checklinkname=0" -o "$OUT.tmp" ./cmd/influxd
fi
mv "$OUT.tmp" "$OUT"
echo "influxd $VERSION: built in $(( $(date +%s) - start ))s -> $OUT"
"$OUT" version
