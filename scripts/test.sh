#!/usr/bin/env bash
# Runs every Herald test, installing what the tests need on a fresh Debian machine:
# redis-server, nats-server, PostgreSQL and chromium (apt-get), npm packages (npm ci). The tests
# start their own servers on free ports (never the machine's own on standard ports). One cargo build, then the Rust
# tests (unit and integration, against real herald and redis-server processes), the TypeScript
# client's tests against a real hub, and the browser end-to-end tests in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# redis-cli makes the Redis Cluster of the cluster tests (`redis-cli --cluster create`).
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ -x /usr/bin/chromium ] || [ -n "${CHROMIUM_BIN:-}" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
fi

# The TypeScript client's packages first: `herald codegen`'s test type-checks its output with
# the client's TypeScript compiler.
echo "== npm ci (TypeScript client)" >&2
(cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error)
echo "== cargo build" >&2
cargo build --bins --tests
echo "== cargo test" >&2
cargo test --workspace

echo "== TypeScript client" >&2
(cd clients/typescript && npm test)

echo "== browser end-to-end" >&2
bash tests/e2e/run.sh
echo "test.sh: all tests passed" >&2
