#!/usr/bin/env bash
# Runs every benchmark in one go and prints the tables of BENCHMARKS.md:
# criterion benches, cold start, and statehost next to Airflow's own
# accessors (apache-airflow-task-sdk 1.3.2 from PyPI, in a venv under target/).
#
#   bench/run.sh            # files on tmpfs (/dev/shm), as the reference figures
#   STATEHOST_BENCH_DIR=/var/tmp bench/run.sh   # or on a disk
set -euo pipefail
cd "$(dirname "$0")/.."

export STATEHOST_BENCH_DIR="${STATEHOST_BENCH_DIR:-/dev/shm}"
venv=target/airflow-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import airflow.sdk' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'apache-airflow-task-sdk==1.3.2'
fi

rm -rf target/criterion
cargo bench -p statehost-tests
# The threads bench again with glibc's per-thread cache off (see BENCHMARKS.md).
GLIBC_TUNABLES=glibc.malloc.tcache_count=0 STATEHOST_BENCH_LABEL=tcache-off \
    cargo bench -p statehost-tests --bench threads
mkdir -p target/criterion/side_by_side
airflow_root="$(mktemp -d "$STATEHOST_BENCH_DIR/airflow-bench.XXXXXX")"
"$venv/bin/python" bench/airflow_state_bench.py "$airflow_root" 20000 > target/criterion/side_by_side/airflow.json
rm -rf "$airflow_root"

{
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); files in $STATEHOST_BENCH_DIR ($(df --output=fstype "$STATEHOST_BENCH_DIR" | tail -1))"
    echo
    python3 bench/report.py
} | tee target/bench-report.md
