"""Times softmax.py (and optionally the article's original program) on this machine.

    python benchmarks/bench_softmax.py --runs 5 [--original DIR]

For each program it runs `python softmax.py` as a fresh process `--runs` times
and reports medians of the process wall time, the printed Total time and the
test accuracy, plus the mean accuracy. It also measures, in this process, the
load time of `data_helpers.load_data()` and the steps/second of the softmax
training loop with each sampler (from the difference of two run lengths, so
loading and graph set-up cancel out).

DIR is a folder holding the original `softmax.py` and `data_helpers.py` ported
to `tf.compat.v1` and a `cifar-10-batches-py` link; it is not part of this
project. Set $CIFAR10_DIR to the data first.
"""

import argparse
import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_program(folder, extra, script='softmax.py'):
    """One fresh process: (wall seconds, printed Total time, test accuracy)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, script] + extra, cwd=folder,
                         capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    return (wall, float(re.search(r'Total time: *([0-9.]+)s', out).group(1)),
            float(re.search(r'Test accuracy (\S+)', out).group(1)))


def report(name, walls, totals, accuracies):
    print('%-10s wall %6.2f s  Total time %6.2f s  accuracy median %.4f mean %.4f '
          '(min %.4f, max %.4f, %d runs)' % (
              name, statistics.median(walls), statistics.median(totals),
              statistics.median(accuracies), statistics.mean(accuracies),
              min(accuracies), max(accuracies), len(accuracies)))


def compare(ours, original):
    """Reports both programs' runs and the ratio of their median Total times."""
    report('ours', *zip(*ours))
    if original:
        report('original', *zip(*original))
        print('Total time ratio ours / original (medians): %.2f'
              % (statistics.median([r[1] for r in ours])
                 / statistics.median([r[1] for r in original])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--original', help='folder of the original program')
    args = parser.parse_args()

    # Fresh processes first, ours and the original taking turns, so that both
    # see the same machine conditions.
    ours, original = [], []
    for i in range(args.runs):
        ours.append(run_program(ROOT, ['--seed', str(i)]))
        if args.original:
            original.append(run_program(args.original, []))
    compare(ours, original)

    import softmax           # first: it prepares TensorFlow's loading as a run of it does
    import data_helpers

    loads = []
    for _ in range(args.runs):
        start = time.perf_counter()
        data_helpers.load_data()
        loads.append(time.perf_counter() - start)
    print('load_data (in one process, after the first) median %.2f s of %d'
          % (statistics.median(loads), args.runs))

    for sampler in ('feed', 'graph'):
        totals = {}
        for steps in (1, 10001):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                for _ in range(3):
                    softmax.main(softmax.parse_args(
                        ['--max-steps', str(steps), '--sampler', sampler, '--seed', '1']))
            times = [float(t) for t in re.findall(r'Total time: *([0-9.]+)s', out.getvalue())]
            totals[steps] = statistics.median(times)
        print('sampler %-5s %6.0f steps/s  (Total time 1 step %.2f s, 10001 steps %.2f s)'
              % (sampler, 10000 / (totals[10001] - totals[1]), totals[1], totals[10001]))


if __name__ == '__main__':
    main()
