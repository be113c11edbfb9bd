#!/usr/bin/env bash
# The performance benchmark (docs/benchmarks.md): pgbb against core pg_basebackup, pgBackRest
# and a plain `cp -a`, alternating contenders in one run, on a throwaway cluster.
#
#   scripts/bench.sh [--link loopback|1gbit|200mbit] [--scale N] [--random-mb N]
#                    [--small-files N] [--dest-fs ext4|root] [--rounds N] [--out FILE]
#                    [--standby] [--warm-dest] [CONTENDER...]
#
# Dataset: pgbench at --scale (100 ≈ 1.5 GB) plus a table of --random-mb MB of random
# bytes (pgcrypto's gen_random_bytes: does not compress); or, with --small-files N, about N
# small files (tiny tables with an index and TOAST, 4 files each) for listing and per-file
# overhead. The copies go to a fresh journaled ext4 file system in a loop file (--dest-fs
# ext4, the default), like a backup volume: this VM's root file system has no journal, and
# there ext4 rescans every recently deleted inode for each file it creates, which makes the
# cost of creating files depend on what the previous round deleted (docs/benchmarks.md).
# Contenders (default: all):
#   cp                   cp -a of the data directory, then sync (the floor; loopback only)
#   basebackup           pg_basebackup -Fp -X stream -c fast (fsync and manifest on)
#   basebackup-lz4/-zstd the same with --compress=server-lz4 / server-zstd
#   pgbackrest-P-C       pgBackRest full backup, process-max P, compress-type C (none|lz4)
#   pgbb-J-C             pgbb -j J --compress C (none|zlib)
#   pgbb-delta-J-C       pgbb --delta -j J --compress C refreshing a copy taken before ~3 % of
#                        the blocks changed and a table was dropped (the seed, copied into
#                        place and evicted from the page cache before each timed run; with
#                        --warm-dest left in it)
#   pgbb-resume-J-C      pgbb --delta finishing a backup interrupted (SIGTERM, --no-clean) once
#                        half the bytes were copied
#   X@standby            contender X (basebackup… or pgbb-…) run against a hot standby of the
#                        cluster instead of the primary (needs --standby); the primary stays
#                        idle, so the stop segment never completes on the standby
# --standby makes a streaming standby of the cluster (pg_basebackup -R), on the same side of
# the link as the primary. For pgbb the table's "tail s" column is the time from the end of
# the data copy ("data files copied" in its -v log) to its exit: the stop, the WAL, the
# manifest and the final sync.
# On a shaped link the "wire MB" column counts what came over it (the veth's received bytes).
# With delta or resume contenders the run also reports the server's SHA-256 throughput
# (sha256(pg_read_binary_file()) over the largest relation file, 1 MiB reads, one core).
# --link 1gbit/200mbit puts the server in a network namespace behind a veth pair shaped with
# `tc qdisc tbf`; clients connect over it (pgBackRest and cp read the files locally, so they
# are left out there).
# Each round runs every contender once, in order; the table gives median/min/max wall time,
# throughput, client CPU and the largest resident set of one process (GNU time).
set -euo pipefail
cd "$(dirname "$0")/.."
LINK=loopback SCALE=100 RANDOM_MB=500 ROUNDS=5 OUT="" SMALL=0 DESTFS=ext4 STANDBY=0 WARM=0
while [ $# -gt 0 ]; do
  case $1 in
    --link) LINK=$2; shift 2 ;;
    --small-files) SMALL=$2; shift 2 ;;
    --dest-fs) DESTFS=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --random-mb) RANDOM_MB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --standby) STANDBY=1; shift ;;
    --warm-dest) WARM=1; shift ;;
    *) break ;;
  esac
done
CONTENDERS=("$@")
if [ ${#CONTENDERS[@]} -eq 0 ]; then
  CONTENDERS=(basebackup basebackup-lz4 basebackup-zstd pgbb-1-none pgbb-2-none pgbb-4-none pgbb-1-zlib pgbb-2-zlib pgbb-4-zlib)
  if [ "$LINK" = loopback ]; then
    CONTENDERS=(cp "${CONTENDERS[@]}" pgbackrest-1-none pgbackrest-2-none pgbackrest-1-lz4 pgbackrest-2-lz4)
  fi
fi
[ "$(id -u)" = 0 ] || { echo "bench: run as root (it starts the server as postgres and may create a network namespace)" >&2; exit 1; }
scripts/deps.sh
command -v pgbackrest >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null
cargo build --release --locked -q
PGBB=$PWD/target/release/pgbb
BIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d /tmp/pgbb-bench.XXXXXX); chmod 755 "$WORK"; chown postgres "$WORK"
PORT=54351 NS="" HOSTADDR="" LOOP=""
RUN=(runuser -u postgres --)
cleanup() {
  ${NS:+ip netns exec "$NS"} "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/standby" -m immediate stop >/dev/null 2>&1 || true
  ${NS:+ip netns exec "$NS"} "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  [ -n "$NS" ] && { ip link del pgbbh0 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; }
  if [ -n "$LOOP" ]; then umount "$WORK/dest" 2>/dev/null || true; losetup -d "$LOOP" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"${RUN[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --data-checksums --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
shared_buffers = 256MB
max_wal_size = 4GB
listen_addresses = ''
CONF
START=("$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w)
if [ "$LINK" != loopback ]; then
  case $LINK in 1gbit) RATE=1gbit ;; 200mbit) RATE=200mbit ;; *) echo "bench: --link loopback|1gbit|200mbit" >&2; exit 2 ;; esac
  NS=pgbb-bench-$$
  ip netns add "$NS"
  ip link add pgbbh0 type veth peer name pgbbn0
  ip link set pgbbn0 netns "$NS"
  ip addr add 10.251.0.1/30 dev pgbbh0; ip link set pgbbh0 up
  ip netns exec "$NS" ip addr add 10.251.0.2/30 dev pgbbn0
  ip netns exec "$NS" ip link set pgbbn0 up; ip netns exec "$NS" ip link set lo up
  # Shape both directions.
  tc qdisc add dev pgbbh0 root tbf rate "$RATE" burst 256kb latency 50ms
  ip netns exec "$NS" tc qdisc add dev pgbbn0 root tbf rate "$RATE" burst 256kb latency 50ms
  echo "host all all 10.251.0.0/30 trust" >> "$WORK/data/pg_hba.conf"
  echo "host replication all 10.251.0.0/30 trust" >> "$WORK/data/pg_hba.conf"
  HOSTADDR=10.251.0.2
  ip netns exec "$NS" "${RUN[@]}" "${START[@]}" -o "-p $PORT -k $WORK -c listen_addresses=$HOSTADDR" start >/dev/null
else
  "${RUN[@]}" "${START[@]}" -o "-p $PORT -k $WORK" start >/dev/null
fi
PSQL=("$BIN/psql" -h "$WORK" -p $PORT -U postgres -qAt postgres)
"${PSQL[@]}" -c "CREATE EXTENSION IF NOT EXISTS plpython3u"
if [ "$SMALL" -gt 0 ]; then
  echo "bench: building the dataset (about $SMALL small files)" >&2
  # Committed in batches: one transaction cannot lock that many new tables.
  "${PSQL[@]}" -c "CREATE PROCEDURE mk(n int) LANGUAGE plpgsql AS \$\$
    BEGIN FOR i IN 1..n LOOP
      EXECUTE format('CREATE TABLE s%s (id int PRIMARY KEY, t text); INSERT INTO s%s VALUES (1, %L)', i, i, repeat('x', 100));
      IF i % 500 = 0 THEN COMMIT; END IF;
    END LOOP; END \$\$" -c "CALL mk($((SMALL / 4)))" -c "CHECKPOINT"
  DATASET="$SMALL small files (tiny tables)"
else
  echo "bench: building the dataset (pgbench scale $SCALE, $RANDOM_MB MB random)" >&2
  "$BIN/pgbench" -h "$WORK" -p $PORT -U postgres -i -q -s "$SCALE" postgres 2>/dev/null
  "${PSQL[@]}" -c "CREATE EXTENSION IF NOT EXISTS pgcrypto" \
    -c "CREATE TABLE rnd (b bytea)" -c "ALTER TABLE rnd ALTER COLUMN b SET STORAGE EXTERNAL" \
    -c "INSERT INTO rnd SELECT gen_random_bytes(1024) FROM generate_series(1, $RANDOM_MB * 1024)" \
    -c "VACUUM ANALYZE" -c "CHECKPOINT"
  DATASET="pgbench scale $SCALE + $RANDOM_MB MB random"
fi
SIZE=$("${PSQL[@]}" -c "SELECT sum(pg_database_size(oid)) FROM pg_database")
SBPORT=$((PORT + 1))
if [ "$STANDBY" = 1 ]; then
  # Over the socket (not network-namespaced): the shaped link is for the contenders only.
  "${RUN[@]}" "$BIN/pg_basebackup" -h "$WORK" -p $PORT -U postgres -D "$WORK/standby" -R -X stream -c fast
  if [ -n "$NS" ]; then
    ip netns exec "$NS" "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/standby" -l "$WORK/standby.log" -w \
      -o "-p $SBPORT -k $WORK -c listen_addresses=$HOSTADDR" start >/dev/null
  else
    "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/standby" -l "$WORK/standby.log" -w -o "-p $SBPORT -k $WORK" start >/dev/null
  fi
  [ "$("$BIN/psql" -h "$WORK" -p $SBPORT -U postgres -qAt postgres -c 'SELECT pg_is_in_recovery()')" = t ] \
    || { echo "bench: the standby is not in recovery" >&2; exit 1; }
fi
NFILES=$(find "$WORK/data" -type f | wc -l)
echo "bench: $((SIZE / 1048576)) MB in databases, $NFILES files, link $LINK, $ROUNDS rounds" >&2
# Where the copies go (and pgBackRest's repository).
OUTFS=$WORK
if [ "$DESTFS" = ext4 ]; then
  truncate -s $(( SIZE * 5 / 1048576 + 4096 ))M "$WORK/dest.img"
  mkfs.ext4 -q -F "$WORK/dest.img"
  LOOP=$(losetup --find --show --direct-io=on "$WORK/dest.img")
  mkdir -p "$WORK/dest"; mount "$LOOP" "$WORK/dest"; chown postgres "$WORK/dest"; chmod 755 "$WORK/dest"
  OUTFS=$WORK/dest
fi
if [ -n "$HOSTADDR" ]; then BBHOST=$HOSTADDR; else BBHOST=$WORK; fi
for c in "${CONTENDERS[@]}"; do
  case $c in *@standby) [ "$STANDBY" = 1 ] || { echo "bench: $c needs --standby" >&2; exit 2; } ;; esac
done

# pgBackRest: a local repository, no WAL archiving (backups check nothing of it).
cat > "$WORK/pgbackrest.conf" <<CONF
[global]
repo1-path=$OUTFS/repo
log-level-console=warn
log-path=$WORK
lock-path=$WORK
start-fast=y
archive-check=n
repo1-retention-full=1
[bench]
pg1-path=$WORK/data
pg1-port=$PORT
pg1-socket-path=$WORK
CONF
chown postgres "$WORK/pgbackrest.conf"
BR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)

# The seeds of the delta and resume contenders (untimed), taken before the contenders run.
PSQLH=("$BIN/psql" -h "$WORK" -p $PORT -U postgres -qAt postgres)
if printf '%s\n' "${CONTENDERS[@]}" | grep -q '^pgbb-delta-'; then
  echo "bench: the delta seed: a copy, then ~3 % of the blocks changed and a table dropped" >&2
  "${PSQLH[@]}" -c "CREATE TABLE dropme AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 200000) g" -c CHECKPOINT
  "$PGBB" -c fast "host=$WORK port=$PORT user=postgres dbname=postgres" "$OUTFS/delta-seed" >/dev/null
  # One page of rows (61) in every 66 of pgbench_accounts updated: 1.5 % of its pages, and
  # the new row versions fill about as many new ones.
  "${PSQLH[@]}" -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 4026 < 61" \
    -c "DROP TABLE dropme" -c CHECKPOINT
fi
if printf '%s\n' "${CONTENDERS[@]}" | grep -q '^pgbb-resume-'; then
  echo "bench: the resume seed: a backup interrupted half way" >&2
  "$PGBB" -c fast -r $((SIZE / 20 / 1024 + 1)) --no-clean "host=$WORK port=$PORT user=postgres dbname=postgres" "$OUTFS/resume-seed" >/dev/null 2>&1 &
  pid=$!
  until [ "$(du -sb "$OUTFS/resume-seed" 2>/dev/null | cut -f1)" -ge $((SIZE / 2)) ] 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { echo "bench: the interrupted backup ended first" >&2; exit 1; }
    sleep 0.2
  done
  # SIGTERM: a background job of a script ignores SIGINT.
  kill -TERM $pid; wait $pid || true
  [ ! -e "$OUTFS/resume-seed/global/pg_control" ] || { echo "bench: the resume seed is complete" >&2; exit 1; }
fi
if printf '%s\n' "${CONTENDERS[@]}" | grep -q -e '^pgbb-delta-' -e '^pgbb-resume-'; then
  f=$("${PSQLH[@]}" -c "SELECT pg_relation_filepath('pgbench_accounts')")
  t0=$(date +%s.%N)
  "${PSQLH[@]}" -c "SELECT count(pg_catalog.sha256(pg_catalog.pg_read_binary_file('$f', o, 1048576))) FROM generate_series(0, (pg_stat_file('$f')).size - 1, 1048576) o" >/dev/null
  t1=$(date +%s.%N)
  HASHRATE=$(echo "$(stat -c %s "$WORK/data/$f") / 1048576 / ($t1 - $t0)" | bc -l)
fi
# Copies SEED to out and drops it from the page cache: the refresh reads DEST from disk
# (with --warm-dest it stays cached).
seed() {
  cp -a "$1" "$OUTFS/out" && sync
  [ "$WARM" = 1 ] && return
  find "$OUTFS/out" -type f -print0 | python3 -c '
import os, sys
for p in sys.stdin.buffer.read().split(b"\0"):
    if p:
        fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)'
}

run() {
  local c=$1 port=$PORT
  case $c in *@standby) c=${c%@standby}; port=$SBPORT ;; esac
  local DSN="host=$BBHOST port=$port user=postgres dbname=postgres"
  rm -rf "$OUTFS/out" "$OUTFS/repo"; sync
  : > "$WORK/stderr"
  case $c in
    cp) /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" sh -c "cp -a '$WORK/data' '$OUTFS/out' && sync" ;;
    basebackup) /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$BIN/pg_basebackup" -h "$BBHOST" -p $port -U postgres -D "$OUTFS/out" -Fp -X stream -c fast ;;
    basebackup-lz4|basebackup-zstd)
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$BIN/pg_basebackup" -h "$BBHOST" -p $port -U postgres -D "$OUTFS/out" -Fp -X stream -c fast --compress=server-${c#basebackup-} ;;
    pgbackrest-*)
      local p=${c#pgbackrest-}; local procs=${p%-*} comp=${p#*-}
      mkdir -p "$OUTFS/repo"; chown postgres "$OUTFS/repo"
      "${RUN[@]}" "${BR[@]}" stanza-create >/dev/null
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "${RUN[@]}" "${BR[@]}" --type=full --process-max="$procs" --compress-type="$comp" backup ;;
    pgbb-delta-*|pgbb-resume-*)
      local p=${c#pgbb-*-}; local jobs=${p%-*} comp=${p#*-}
      case $c in pgbb-delta-*) seed "$OUTFS/delta-seed" ;; *) seed "$OUTFS/resume-seed" ;; esac
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$PGBB" --delta -v -c fast -j "$jobs" --compress "$comp" "$DSN" "$OUTFS/out" >/dev/null 2>"$WORK/stderr"
      date +%s.%N > "$WORK/end" ;;
    pgbb-*)
      local p=${c#pgbb-}; local jobs=${p%-*} comp=${p#*-}
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$PGBB" -v -c fast -j "$jobs" --compress "$comp" "$DSN" "$OUTFS/out" >/dev/null 2>"$WORK/stderr"
      date +%s.%N > "$WORK/end" ;;
    *) echo "bench: unknown contender $c" >&2; exit 2 ;;
  esac
}

declare -A T CPU RSS LIST TAIL WIRE
rx() { if [ -n "$NS" ]; then cat /sys/class/net/pgbbh0/statistics/rx_bytes; else echo 0; fi; }
for r in $(seq 1 "$ROUNDS"); do
  for c in "${CONTENDERS[@]}"; do
    rx0=$(rx)
    run "$c"
    WIRE[$c]="${WIRE[$c]:-} $(( ($(rx) - rx0) / 1048576 ))"
    read -r t u s m < "$WORK/time"
    T[$c]="${T[$c]:-} $t"; CPU[$c]="${CPU[$c]:-} $(echo "$u + $s" | bc -l)"; RSS[$c]="${RSS[$c]:-} $m"
    # pgbb -v: how long the master's one listing query took.
    l=$(sed -n 's/.*listed in \([0-9]*\) ms.*/\1/p' "$WORK/stderr" | head -1)
    [ -n "$l" ] && LIST[$c]="${LIST[$c]:-} $l"
    # pgbb -v: from the end of the data copy to the exit.
    d=$(sed -n 's/^\([0-9T:.-]*\)Z .*data files copied.*/\1/p' "$WORK/stderr" | head -1)
    [ -n "$d" ] && TAIL[$c]="${TAIL[$c]:-} $(echo "$(cat "$WORK/end") - $(date -u -d "$d" +%s.%N)" | bc -l)"
    printf 'round %d  %-20s %7.2f s\n' "$r" "$c" "$t" >&2
  done
done
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; print m, a[1], a[NR]}'; }
table=$(
  printf '| contender | median s | min s | max s | MB/s | client CPU s | max RSS MiB | listing ms | tail s (max) | wire MB |\n|---|---|---|---|---|---|---|---|---|---|\n'
  for c in "${CONTENDERS[@]}"; do
    lst=- tail=-
    # shellcheck disable=SC2086
    [ -n "${LIST[$c]:-}" ] && read -r lst _ _ < <(printf '%s\n' ${LIST[$c]} | median)
    # shellcheck disable=SC2086
    [ -n "${TAIL[$c]:-}" ] && { read -r tm _ tx < <(printf '%s\n' ${TAIL[$c]} | median); tail=$(printf '%.2f (%.2f)' "$tm" "$tx"); }
    # shellcheck disable=SC2086
    read -r med min max < <(printf '%s\n' ${T[$c]} | median)
    # shellcheck disable=SC2086
    read -r cpu _ _ < <(printf '%s\n' ${CPU[$c]} | median)
    # shellcheck disable=SC2086
    read -r _ _ rss < <(printf '%s\n' ${RSS[$c]} | median)
    wire=-
    # shellcheck disable=SC2086
    [ -n "$NS" ] && read -r wire _ _ < <(printf '%s\n' ${WIRE[$c]} | median)
    printf '| %s | %.2f | %.2f | %.2f | %.0f | %.2f | %.0f | %s | %s | %s |\n' "$c" "$med" "$min" "$max" \
      "$(echo "$SIZE / 1048576 / $med" | bc -l)" "$cpu" "$(echo "$rss / 1024" | bc -l)" "$lst" "$tail" "$wire"
  done
)
echo
echo "dataset: $((SIZE / 1048576)) MB, $NFILES files ($DATASET), link $LINK, DEST on $DESTFS, $ROUNDS rounds, $(date -u +%F)"
echo "$table"
[ -n "${HASHRATE:-}" ] && printf '\nserver sha256(pg_read_binary_file()) throughput, one core: %.0f MB/s\n' "$HASHRATE"
if [ -n "$OUT" ]; then
  printf '%s\n' "$table" | awk -F'|' 'NR>2 {gsub(/ /,"",$2); print $2, $3}' > "$WORK/chart.dat"
  if command -v gnuplot >/dev/null; then
    gnuplot <<GP
set terminal pngcairo size 900,480
set output "$OUT"
set style data histograms
set style fill solid 0.8
set ylabel "median wall time, s (lower is better)"
set title "Base backup of $((SIZE / 1048576)) MB in $NFILES files, link $LINK"
set xtics rotate by 45 right
set bmargin 8
set yrange [0:*]
plot "$WORK/chart.dat" using 2:xtic(1) notitle
GP
    echo "bench: chart in $OUT" >&2
  fi
fi
