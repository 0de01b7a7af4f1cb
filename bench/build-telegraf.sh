#!/usr/bin/env bash
# Build Telegraf from its Go module, with only the plugins the benchmark uses (no binary
# downloads), the way deploy/local/build-influxd.sh builds influxd. Used by `python -m bench`
# for its Telegraf peer, never by the test suite.
# Cached at $CITYSTREAM_CACHE/telegraf-<version>/bin/telegraf with the plugin tags it was
# built with beside it; a second run with the same tags is a no-op.
set -euo pipefail

VERSION="${CITYSTREAM_TELEGRAF_VERSION:-1.37.2}"
CACHE="${CITYSTREAM_CACHE:-$HOME/.cache/citystream}"
PREFIX="$CACHE/telegraf-$VERSION"
OUT="$PREFIX/bin/telegraf"
# Telegraf's custom build: the `custom` tag plus one tag per plugin (docs/CUSTOMIZATION.md).
# The direct layout: mqtt_consumer (JSON) -> influxdb_v2. The Kafka layout adds
# outputs.kafka and inputs.kafka_consumer, line protocol between them.
TAGS="custom,inputs.mqtt_consumer,outputs.influxdb_v2,parsers.json,outputs.kafka"
TAGS="$TAGS,inputs.kafka_consumer,parsers.influx,serializers.influx"
STAMP="$OUT.tags"

cached() { [[ -x "$OUT" && "$(cat "$STAMP" 2>/dev/null)" == "$TAGS" ]]; }
if cached; then
  echo "telegraf $VERSION: cached at $OUT"
  exit 0
fi
command -v go >/dev/null || { echo "error: 'go' not found; building Telegraf needs Go." >&2; exit 2; }

mkdir -p "$PREFIX/bin"
exec 9>"$PREFIX/.build.lock"
flock 9
if cached; then
  echo "telegraf $VERSION: cached at $OUT"
  exit 0
fi

export GOTOOLCHAIN=local
export CGO_ENABLED=0  # static, like Telegraf's own release builds
export GOFLAGS="${GOFLAGS:--buildvcs=false} -mod=mod"
echo "telegraf $VERSION: downloading Go module (cached in $(go env GOMODCACHE))"
DIR=$(go mod download -json "github.com/influxdata/telegraf@v$VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[[ -d "$DIR" ]] || { echo "error: go mod download gave no source dir for telegraf v$VERSION" >&2; exit 1; }

SRC=$(mktemp -d "$PREFIX/src.XXXXXX")
trap 'rm -rf "$SRC"' EXIT
cp -r "$DIR/." "$SRC"
chmod -R u+w "$SRC"
cd "$SRC"

echo "telegraf $VERSION: building with tags $TAGS"
start=$(date +%s)
go build -tags "$TAGS" -ldflags "-X github.com/influxdata/telegraf/internal.Version=$VERSION" \
  -o "$OUT.tmp" ./cmd/telegraf
mv "$OUT.tmp" "$OUT"
echo "$TAGS" > "$STAMP"
echo "telegraf $VERSION: built in $(( $(date +%s) - start ))s -> $OUT"
"$OUT" --version
