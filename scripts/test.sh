#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every unit and integration test
# against real PostgreSQL clusters that the harness creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo test --locked "$@"
