#!/usr/bin/env bash
# End-to-end tests of the dashboard, the demo page, the browser client and the event-bus bridge (seed 004) in headless Chromium.
# Installs what is missing (Debian's chromium and redis-server, playwright-core from npm), then runs the tests
# against target/debug/herald (or $HERALD_BIN, or $CARGO_TARGET_DIR/debug/herald): build it first
# with `cargo build --bins`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if [ -z "${CHROMIUM_BIN:-}" ] && [ ! -x /usr/bin/chromium ]; then
  echo "e2e: installing chromium (Debian package)" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "e2e: installing redis-server (Debian package)" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q redis-server >/dev/null
fi

# embedded.test.mjs serves the pages under /live from the embedding example.
if [ -z "${EMBEDDED_BIN:-}" ]; then
  (cd ../.. && cargo build -q -p herald-server --example embedded)
fi

npm ci --no-audit --no-fund --loglevel=error
npm test
