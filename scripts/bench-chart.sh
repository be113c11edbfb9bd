#!/usr/bin/env bash
# A clustered bar chart of several scripts/bench.sh runs (docs/bench-incr.png): one group of
# bars per contender, one bar per run, from the tables the runs printed on stdout.
#
#   scripts/bench-chart.sh --out FILE.png --title TITLE [--column "median s"] [--ylabel TEXT] \
#       RUNLABEL=RUN.md ... -- CONTENDER[=LABEL] ...
#
# RUN.md is a saved stdout of scripts/bench.sh (`scripts/bench.sh ... > RUN.md`); --column
# names the table's column to plot (default "median s"; "wire MB" for the bytes that came
# over a shaped link). A contender a run did not have, or a "-" cell, plots as 0 (say so in
# the run's label, e.g. "loopback (0: not run)").
#
# For example (docs/benchmarks.md, "Incremental backups"):
#   scripts/bench-chart.sh --out docs/bench-incr.png --title "Incremental, PostgreSQL 17" \
#     "1 Gbit/s link=incr-1gbit.md" "loopback=incr-loopback.md" -- \
#     "pgbb=full, pgbb" "basebackup=full, pg_basebackup" "pgbb-incr=pgbb -i" \
#     "basebackup-incr=pg_basebackup --incremental"
set -euo pipefail
OUT="" TITLE="" COLUMN="median s" YLABEL="" RUNS=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --title) TITLE=$2; shift 2 ;;
    --column) COLUMN=$2; shift 2 ;;
    --ylabel) YLABEL=$2; shift 2 ;;
    --) shift; break ;;
    *=*) RUNS+=("$1"); shift ;;
    *) echo "bench-chart: unexpected $1 (runs are LABEL=FILE, then -- and the contenders)" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] && [ ${#RUNS[@]} -gt 0 ] && [ $# -gt 0 ] \
  || { echo "usage: bench-chart.sh --out FILE.png --title TITLE [--column NAME] LABEL=RUN.md ... -- CONTENDER[=LABEL] ..." >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "bench-chart: gnuplot is not installed" >&2; exit 1; }
[ -n "$YLABEL" ] || case $COLUMN in
  "median s") YLABEL="median wall time, s (lower is better)" ;;
  *) YLABEL="$COLUMN (median, lower is better)" ;;
esac

# The cell of COLUMN in the row of CONTENDER of the table in FILE, or 0.
cell() {
  awk -F'|' -v col="$2" -v who="$3" '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    /^\|/ && !n { for (i = 2; i < NF; i++) if (trim($i) == col) n = i; next }
    /^\|/ && n && trim($2) == who { v = trim($n); found = 1 }
    END { if (!n) { print "bench-chart: no column \"" col "\" in " FILENAME > "/dev/stderr"; exit 1 }
          print (found && v != "-" && v != "") ? v : 0 }' "$1"
}

dat=$(mktemp); trap 'rm -f "$dat"' EXIT
{
  printf '"contender"'
  for r in "${RUNS[@]}"; do printf '\t"%s"' "${r%%=*}"; done
  printf '\n'
  for c in "$@"; do
    name=${c%%=*}; label=${c#*=}
    printf '"%s"' "$label"
    for r in "${RUNS[@]}"; do
      f=${r#*=}; [ -r "$f" ] || { echo "bench-chart: cannot read $f" >&2; exit 1; }
      printf '\t%s' "$(cell "$f" "$COLUMN" "$name")"
    done
    printf '\n'
  done
} > "$dat"
gnuplot <<GP
set terminal pngcairo size 900,480 noenhanced
set output "$OUT"
set datafile separator "\t"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key inside top right
set ylabel "$YLABEL"
set title "$TITLE"
set xtics rotate by 20 right
set bmargin 7
set rmargin 3
set yrange [0:*]
set offsets 0, 0, graph 0.2, 0
plot for [i=2:$(( ${#RUNS[@]} + 1 ))] "$dat" using i:xtic(1) title columnheader(i)
GP
echo "bench-chart: $OUT" >&2
