"""Test accuracy of the "universal workflow" article's models when Keras
itself trains them on the data you give it: the reference for
`python cnn.py --model small|batchnorm` (20 epochs, batch 128, Adam defaults,
the last 20% held out for validation), one run per seed.

    CIFAR10_DIR=... python benchmarks/keras_accuracy.py --model small --runs 5
    KERAS_BACKEND=torch python benchmarks/keras_accuracy.py ...   # on a GPU

`batchnorm` is bench_cnn_keras.py's model (1,517,450 parameters); `small` is
the article's first net, conv 16/32/64 and dense 128, as cnn.py builds it.
`--budget` stops starting new runs after that many seconds. Keras runs
TensorFlow's kernels as TensorFlow picks them for the CPU, as a Keras user
gets them (not cli.prepare_tensorflow's choice).
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


def keras_small_model():
    """The article's small net: three 3x3 'same' conv + 2x2 max-pool, dense 128."""
    import keras
    from keras import layers
    model = keras.Sequential([keras.Input((32, 32, 3))])
    for filters in (16, 32, 64):
        model.add(layers.Conv2D(filters, 3, padding='same', activation='relu'))
        model.add(layers.MaxPooling2D())
    model.add(layers.Flatten())
    model.add(layers.Dense(128, activation='relu'))
    model.add(layers.Dense(10))
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'])
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=['small', 'batchnorm'], default='batchnorm')
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
        model = keras_small_model() if args.model == 'small' else keras_model()
        if seed == 0:
            print('Keras %s model: %s parameters' % (args.model, format(model.count_params(), ',')))
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
