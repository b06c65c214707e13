"""Test accuracy of the "universal workflow" article's batch-normalised model
when Keras itself trains it on the data you give it: the reference for
`python cnn.py --model batchnorm` (20 epochs, batch 128, Adam defaults, the
last 20% held out for validation), one run per seed.

    CIFAR10_DIR=... python benchmarks/keras_batchnorm_accuracy.py --runs 5
    KERAS_BACKEND=torch python benchmarks/keras_batchnorm_accuracy.py ...   # on a GPU

The model is bench_cnn_keras.py's (1,517,450 parameters). `--budget` stops
starting new runs after that many seconds.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
import data_helpers  # noqa: E402
from bench_cnn_keras import keras_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=cli.positive_int, default=5)
    parser.add_argument('--budget', type=cli.positive_float, default=float('inf'),
                        help='seconds after which no new run starts')
    parser.add_argument('--data-dir', default=None)
    args = parser.parse_args()
    import keras
    data = data_helpers.load_data(args.data_dir, normalization='scale', layout='nhwc')
    start, accuracies = time.time(), []
    for seed in range(args.runs):
        if time.time() - start > args.budget:
            break
        keras.utils.set_random_seed(seed)
        model = keras_model()
        began = time.time()
        history = model.fit(data['images_train'], data['labels_train'], batch_size=128,
                            epochs=20, validation_split=0.2, verbose=0)
        accuracy = model.evaluate(data['images_test'], data['labels_test'], verbose=0)[1]
        accuracies.append(accuracy)
        print('seed %d: test accuracy %.4f (last val %.4f) in %.0f s' % (
            seed, accuracy, history.history['val_accuracy'][-1], time.time() - began),
            flush=True)
    print('%d runs: mean %.4f, median %.4f, min %.4f, max %.4f' % (
        len(accuracies), np.mean(accuracies), np.median(accuracies), min(accuracies),
        max(accuracies)))


if __name__ == '__main__':
    main()
