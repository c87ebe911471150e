#!/usr/bin/env bash
# The checkpoint benchmarks of the running-sum workload (issue "Checkpoints and
# recovery"): throughput without and with 1 s checkpoints per mode and backend,
# checkpoint durations, recovery after a failure, and checkpoint durations under full
# backpressure. Prints the summary lines of each configuration; run on a quiet machine.
#
#     scripts/bench-checkpoints.sh            # RUNS=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
cargo bench --bench running_sum --no-run 2>/dev/null
bench() {
    echo "== $*"
    env "$@" WEIR_BENCH_RUNS="$runs" cargo bench --bench running_sum 2>/dev/null |
        grep -E '^(running_sum|checkpoint duration|recovery|checkpoints completed)'
}
for backend in memory rocksdb; do
    records=10000000
    [ "$backend" = rocksdb ] && records=3000000
    common=(WEIR_BENCH_BACKEND=$backend WEIR_BENCH_RECORDS=$records)
    bench "${common[@]}"
    for mode in aligned unaligned aligned_with_timeout at_least_once; do
        bench "${common[@]}" WEIR_BENCH_CHECKPOINT_MS=1000 WEIR_BENCH_MODE=$mode
    done
    bench "${common[@]}" WEIR_BENCH_CHECKPOINT_MS=1000 WEIR_BENCH_FAIL_AT=$((records / 2))
done
for mode in aligned unaligned aligned_with_timeout; do
    bench WEIR_BENCH_RECORDS=200000 WEIR_BENCH_SLOW_US=50 WEIR_BENCH_CHECKPOINT_MS=200 \
        WEIR_BENCH_MODE=$mode
done
