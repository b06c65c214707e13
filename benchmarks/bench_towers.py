"""Training images/s of cnn.py on one device, on N towers, and on a local cluster.

    CIFAR10_DIR=... python benchmarks/bench_towers.py [--model batchnorm] [--steps 60]

Three fresh processes (or process groups), one after the other, all with the
same global batch (--batch-size, default the model's): `cnn.py` on one
device; `cnn.py --num-devices 2` (two towers, on virtual CPU devices without
GPUs); `distributed.py` with 1 parameter server and 2 workers on 127.0.0.1,
each worker taking half the batch. Images/s is measured over the steps after
the first (start-up left out): cnn.py's own figure for its report interval,
and for the cluster the global steps/s the chief prints times the global batch.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cnn  # noqa: E402
import distributed  # noqa: E402


def cnn_images_per_second(args, num_devices, work):
    """cnn.py's images/s over its second report interval (the first holds the start-up)."""
    out = subprocess.run(
        [sys.executable, 'cnn.py', '--model', args.model, '--batch-size', str(args.batch_size),
         '--max-steps', str(2 * args.steps), '--log-every', str(args.steps), '--seed', '0',
         '--num-devices', str(num_devices), '--train-dir', work, '--no-plots',
         '--precision', 'fp32'],           # as distributed.py's workers compute
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return float(re.findall(r'(\d+) images/s', out)[-1])


def cluster_images_per_second(args, work):
    ps, w0, w1 = distributed.local_addresses(3)
    hosts = ['--ps-hosts', ps, '--worker-hosts', w0 + ',' + w1]
    flags = ['--model', args.model, '--batch-size', str(args.batch_size // 2),
             '--max-steps', str(2 * args.steps), '--log-every', str(args.steps),
             '--seed', '0', '--train-dir', work]
    processes = [subprocess.Popen([sys.executable, 'distributed.py'] + hosts + job, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for job in (['--job-name', 'ps', '--task-index', '0'],
                             ['--job-name', 'worker', '--task-index', '1'] + flags,
                             ['--job-name', 'worker', '--task-index', '0'] + flags)]
    try:
        out = processes[2].communicate(timeout=3600)[0]
        for process in processes[:2]:
            process.wait(timeout=120)
    finally:
        for process in processes:
            process.kill()
    steps_per_second = float(re.findall(r'([\d.]+) global steps/s', out)[-1])
    return steps_per_second * args.batch_size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='batchnorm', choices=sorted(cnn.MODELS))
    parser.add_argument('--batch-size', type=int)
    parser.add_argument('--steps', type=int, default=60, help='steps per timed interval')
    args = parser.parse_args()
    args.batch_size = args.batch_size or cnn.MODELS[args.model]['batch_size']
    with tempfile.TemporaryDirectory() as work:
        one = cnn_images_per_second(args, 1, work)
        two = cnn_images_per_second(args, 2, work)
        cluster = cluster_images_per_second(args, work)
    print('%s, global batch %d:' % (args.model, args.batch_size))
    print('  one process, one device   %6.0f images/s' % one)
    print('  one process, 2 towers     %6.0f images/s  (%.2fx)' % (two, two / one))
    print('  1 ps + 2 workers          %6.0f images/s  (%.2fx)' % (cluster, cluster / one))


if __name__ == '__main__':
    main()
