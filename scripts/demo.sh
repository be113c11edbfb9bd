#!/usr/bin/env bash
# A throwaway end-to-end run: start a local cluster in a temp dir, seed it with pgbench,
# back it up with pgbb while pgbench writes, start the copy and query it. Cleans up after.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --locked -q
PGBB=$PWD/target/release/pgbb
BIN=${PGBB_PG_BIN:-/usr/lib/postgresql/15/bin}
CBIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d /tmp/pgbb-demo.XXXXXX)
chmod 755 "$WORK"
RUN=()
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; RUN=(runuser -u postgres --); fi
cleanup() {
  "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/copy" -m immediate stop >/dev/null 2>&1 || true
  "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }

say "creating a throwaway cluster in $WORK/data"
"${RUN[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --data-checksums --no-sync >/dev/null
"${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -o "-p 54329 -k $WORK -c listen_addresses=''" -l "$WORK/data.log" -w start >/dev/null
DSN="host=$WORK port=54329 user=postgres dbname=postgres"
"$CBIN/pgbench" -h "$WORK" -p 54329 -U postgres -i -q -s 10 postgres 2>/dev/null

say "backing it up with pgbb -j 2 while pgbench writes"
"$CBIN/pgbench" -h "$WORK" -p 54329 -U postgres -n -c 2 -T 30 postgres >/dev/null 2>&1 &
LOAD=$!
sleep 1
"$PGBB" -j 2 -c fast -v "$DSN" "$WORK/copy"
kill -INT $LOAD 2>/dev/null || true; wait $LOAD 2>/dev/null || true

say "starting the copy"
[ "$(id -u)" = 0 ] && chown -R postgres "$WORK/copy"
"${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/copy" -o "-p 54330 -k $WORK -c listen_addresses=''" -l "$WORK/copy.log" -w start >/dev/null
"$CBIN/psql" -h "$WORK" -p 54330 -U postgres -X -c \
  "SELECT count(*) AS accounts,
          sum(abalance) = (SELECT sum(delta) FROM pgbench_history) AS balances_match
     FROM pgbench_accounts"
say "done: the copy answered; everything in $WORK is removed now"
