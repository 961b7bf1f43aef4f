#!/bin/sh
# The 10-minute atheris run of fuzz/README.md: one libFuzzer run of the .pjz harness with a
# 1 s timeout and a 512 MB RSS limit (the harness itself checks 1 s of CPU and each input's
# own RSS rise, fuzz/limits.py); then the summary lines and the harness's own maxima.
set -u
corpus=${1:-fuzz/corpus_pjz}
log=${2:-fuzz-campaign.log}
here=$(dirname "$0")
PENJING_FUZZ_STATS="$log.stats.json" python "$here/atheris_pjz.py" -max_total_time=600 -timeout=1 \
  -rss_limit_mb=512 -print_final_stats=1 "$corpus" > "$log" 2>&1
echo "exit $?" >> "$log"
grep -E "^exit|stat::(number_of_executed_units|slowest_unit_time_sec)|ERROR|Traceback|LimitExceeded" "$log"
cat "$log.stats.json"
