#!/usr/bin/env bash
# predict.py against run folders that are still training, and after kill -9:
# cnn.py checkpoints after every step (keeping 3), predict.py reads the folder
# while it trains, then the run is killed mid-write and predict.py reads again.
#   bash benchmarks/kill_and_predict.sh CIFAR_DIR [RUNS]   (the tests' fake data will do)
set -u
data=$(cd "$1" && pwd); runs=${2:-10}; work=$(mktemp -d); pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$(dirname "$0")/.."
for i in $(seq 1 "$runs"); do
    python cnn.py --model augmented --max-steps 100000 --log-every 1 --batch-size 8 \
        --data-dir "$data" --train-dir "$work/$i" --no-plots >/dev/null 2>&1 &
    pid=$!
    sleep "$(python -c 'import random; print(round(random.uniform(5, 9), 2))')"
    live=$(python predict.py "$work/$i" --test-index 0 --data-dir "$data" 2>&1 | tail -1)
    kill -9 "$pid"; wait "$pid" 2>/dev/null; pid=
    killed=$(python predict.py "$work/$i" --test-index 0 --data-dir "$data" 2>&1 | tail -1)
    echo "run $i live: $live | killed: $killed"
done
