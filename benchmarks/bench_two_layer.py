"""Times `two_layer_mlp.py --preset wolfib` against the article's original part-2
program (run_fc_model.py), in fresh processes taking turns.

    python benchmarks/bench_two_layer.py --runs 3 [--original DIR]

DIR holds the original run_fc_model.py, two_layer_fc.py and data_helpers.py
ported to tf.compat.v1 and a cifar-10-batches-py link; it is not part of this
project. Set $CIFAR10_DIR first.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_softmax import ROOT, compare, run_program  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--original', help='folder of the original program')
    args = parser.parse_args()
    logs = tempfile.mkdtemp(prefix='bench-two-layer-')
    ours, original = [], []
    for i in range(args.runs):
        ours.append(run_program(ROOT, ['--seed', str(i), '--train-dir', logs],
                                script='two_layer_mlp.py'))
        if args.original:
            original.append(run_program(args.original, ['--train_dir', logs],
                                        script='run_fc_model.py'))
    compare(ours, original)


if __name__ == '__main__':
    main()
