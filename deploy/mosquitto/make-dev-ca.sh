#!/usr/bin/env bash
# Make a local certificate authority and a server certificate for Mosquitto's TLS listener,
# for development and tests only. Usage: deploy/mosquitto/make-dev-ca.sh OUT_DIR [HOSTNAME]
# Writes ca.crt/ca.key, server.crt/server.key (CN and SAN = HOSTNAME, default 127.0.0.1 and
# localhost), and client.crt/client.key for tests of certificate authentication.
# Clients then set CITYSTREAM_MQTT__TLS_CA=OUT_DIR/ca.crt.
set -euo pipefail
out=${1:?usage: make-dev-ca.sh OUT_DIR [HOSTNAME]}
host=${2:-127.0.0.1}
command -v openssl >/dev/null || { echo "error: openssl not found (apt-get install -y openssl)" >&2; exit 2; }
mkdir -p "$out"
cd "$out"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=citystream dev CA" \
  -keyout ca.key -out ca.crt 2>/dev/null
san="subjectAltName=IP:127.0.0.1,DNS:localhost"
[[ $host != 127.0.0.1 && $host != localhost ]] && san="$san,DNS:$host"
for name in server client; do
  cn=$host; [[ $name == client ]] && cn=citystream
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile <(printf '%s\n' "$san") -out "$name.crt" 2>/dev/null
  rm -f "$name.csr"
done
chmod 644 ca.crt server.crt client.crt
echo "dev CA in $out: ca.crt, server.crt/key (for $host), client.crt/key"
