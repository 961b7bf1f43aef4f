#!/bin/sh
# The 10-minute atheris campaign of fuzz/README.md: five 2-minute libFuzzer runs sharing one
# corpus (a process of the custom-mutator harness grows ~0.25 KB per execution inside atheris,
# see the README), each with a 1 s timeout and a 512 MB RSS limit; then the summary lines.
set -u
corpus=${1:-fuzz/corpus_pjz}
log=${2:-fuzz-campaign.log}
here=$(dirname "$0")
: > "$log"
for i in 1 2 3 4 5; do
  python "$here/atheris_pjz.py" -max_total_time=120 -timeout=1 -rss_limit_mb=512 -print_final_stats=1 \
    "$corpus" >> "$log" 2>&1
  echo "segment $i exit $?" >> "$log"
done
grep -E "^segment|stat::(number_of_executed_units|slowest_unit_time_sec|peak_rss_mb)|ERROR|Traceback" "$log"
