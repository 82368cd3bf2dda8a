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
# Every package at the version of bench/airflow-constraints.txt; a venv made
# from other constraints is made again.
constraints=bench/airflow-constraints.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$constraints" "$venv/constraints.txt" \
    || ! "$venv/bin/python" -c 'import airflow.sdk' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -c "$constraints" 'apache-airflow-task-sdk==1.3.2'
    cp "$constraints" "$venv/constraints.txt"
fi

rm -rf target/criterion
# side_by_side runs a round of Airflow's accessors (bench/airflow_state_bench.py)
# after each of its own, so that both sides of each ratio see the same stretch
# of this machine.
STATEHOST_BENCH_ROUNDS="${STATEHOST_BENCH_ROUNDS:-7}" STATEHOST_BENCH_AIRFLOW_PYTHON="$PWD/$venv/bin/python" \
    cargo bench -p statehost-tests
# The threads bench again with glibc's per-thread cache off (see BENCHMARKS.md).
GLIBC_TUNABLES=glibc.malloc.tcache_count=0 STATEHOST_BENCH_LABEL=tcache-off \
    cargo bench -p statehost-tests --bench threads

# Airflow's accessors with each worker-side backend: none, Airflow-style
# Python ones, common-io's (if it installs), and statehost's Python package
# (a release wheel, with the release plugins cargo bench built) over the
# memory, fs and object-store plugins. One process per backend, every backend
# once per round; each figure is the median of the rounds, and the rounds are
# kept to compare backends measured in the same round.
"$venv/bin/pip" install --quiet -c "$constraints" 'maturin>=1.9,<2'
"$venv/bin/pip" install --quiet -c "$constraints" 'apache-airflow-providers-common-io==1.11.0' || echo "common-io did not install: its row is left out" >&2
rm -rf target/py-wheels-release
STATEHOST_PYTHON_PLUGINS="${CARGO_TARGET_DIR:-$PWD/target}/release" "$venv/bin/maturin" build --quiet --release \
    -m python/Cargo.toml -i "$venv/bin/python" --out target/py-wheels-release
"$venv/bin/pip" install --quiet --force-reinstall --no-deps target/py-wheels-release/statehost-*.whl
for round in $(seq "${STATEHOST_BENCH_BACKEND_ROUNDS:-3}"); do
    for backend in none airflow-memory airflow-fs common-io statehost-memory statehost-fs statehost-object-store; do
        backend_root="$(mktemp -d "$STATEHOST_BENCH_DIR/airflow-backends.XXXXXX")"
        "$venv/bin/python" bench/airflow_backends_bench.py "$backend_root" "$backend" 5000
        rm -rf "$backend_root"
    done
done > target/criterion/side_by_side/backends-rounds.jsonl

{
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); files in $STATEHOST_BENCH_DIR ($(df --output=fstype "$STATEHOST_BENCH_DIR" | tail -1))"
    echo
    python3 bench/report.py
} | tee target/bench-report.md
