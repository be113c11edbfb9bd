#!/usr/bin/env bash
# Core benchmark: pgbb against pg_basebackup on a throwaway pgbench cluster, alternating
# contenders in one run, N rounds, reporting median/min/max wall time.
#
#   scripts/bench-core.sh [SCALE] [ROUNDS] [CONTENDER...]
#
# A contender is `basebackup` or `pgbb:<pgbb options>` (use + for spaces), for example
#   scripts/bench-core.sh 50 5 basebackup pgbb:-j+1 pgbb:-j+2
#   scripts/bench-core.sh 50 3 pgbb:-j+1+--chunk-size+64k pgbb:-j+1+--chunk-size+8M
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-50}; ROUNDS=${2:-5}; shift 2 || true
CONTENDERS=("$@")
[ ${#CONTENDERS[@]} -gt 0 ] || CONTENDERS=(basebackup pgbb:-j+1 pgbb:-j+2)
scripts/deps.sh
cargo build --release --locked -q
PGBB=$PWD/target/release/pgbb
BIN=${PGBB_PG_BIN:-/usr/lib/postgresql/15/bin}
CBIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d /tmp/pgbb-bench.XXXXXX); chmod 755 "$WORK"
RUN=(); if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; RUN=(runuser -u postgres --); fi
PORT=54341
cleanup() { "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
"${RUN[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --data-checksums --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = ''
max_wal_size = 2GB
shared_buffers = 256MB
CONF
"${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -o "-p $PORT -k $WORK" -l "$WORK/log" -w start >/dev/null
"$CBIN/pgbench" -h "$WORK" -p $PORT -U postgres -i -q -s "$SCALE" postgres 2>/dev/null
"$CBIN/psql" -h "$WORK" -p $PORT -U postgres -qAtc "CHECKPOINT"
SIZE=$("$CBIN/psql" -h "$WORK" -p $PORT -U postgres -qAtc "SELECT sum(size) FROM pg_ls_dir('base') d, LATERAL (SELECT sum((pg_stat_file('base/'||d||'/'||f)).size) AS size FROM pg_ls_dir('base/'||d) f) s")
echo "dataset: pgbench scale $SCALE, $((SIZE / 1048576)) MB in base/; $ROUNDS rounds" >&2
DSN="host=$WORK port=$PORT user=postgres dbname=postgres"
declare -A TIMES CPU RSS
for r in $(seq 1 "$ROUNDS"); do
  for c in "${CONTENDERS[@]}"; do
    rm -rf "$WORK/out"; sync
    # GNU time: wall seconds, user and system CPU of the client and its children, and the
    # largest resident set of any one process (kB).
    if [ "$c" = basebackup ]; then
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" \
        "$CBIN/pg_basebackup" -h "$WORK" -p $PORT -U postgres -D "$WORK/out" -Fp -X stream -c fast
    else
      opts=${c#pgbb:}; opts=${opts//+/ }
      # shellcheck disable=SC2086
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$PGBB" -c fast $opts "$DSN" "$WORK/out" >/dev/null
    fi
    read -r t u sy m < "$WORK/time"
    TIMES[$c]="${TIMES[$c]:-} $t"
    CPU[$c]="${CPU[$c]:-} $(echo "$u + $sy" | bc -l)"
    RSS[$c]="${RSS[$c]:-} $m"
    printf 'round %d  %-40s %6.2f s  cpu %5.2f s\n' "$r" "$c" "$t" "$(echo "$u + $sy" | bc -l)" >&2
  done
done
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; print m, a[1], a[NR]}'; }
printf '\n| contender | median s | min s | max s | MB/s (median) | client CPU s (median) | max RSS MiB |\n|---|---|---|---|---|---|---|\n'
for c in "${CONTENDERS[@]}"; do
  # shellcheck disable=SC2086
  read -r med min max < <(printf '%s\n' ${TIMES[$c]} | median)
  # shellcheck disable=SC2086
  read -r cpu _ _ < <(printf '%s\n' ${CPU[$c]} | median)
  # shellcheck disable=SC2086
  read -r _ _ rss < <(printf '%s\n' ${RSS[$c]} | median)
  printf '| %s | %.2f | %.2f | %.2f | %.0f | %.2f | %.0f |\n' "${c//+/ }" "$med" "$min" "$max" \
    "$(echo "$SIZE / 1048576 / $med" | bc -l)" "$cpu" "$(echo "$rss / 1024" | bc -l)"
done
