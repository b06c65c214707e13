"""Training and inference speed of cnn.py's `batchnorm` model, in float32 and in
bfloat16, against the same model in tf.keras (`model.fit` / `model.predict`,
float32), one script on this machine.

    python benchmarks/bench_cnn_keras.py [--steps 60] [--repeats 3]

bfloat16 is skipped on a CPU without it (`cli.cpu_has_bf16`: AVX-512 BF16 or
AMX; $ONEDNN_MAX_CPU_ISA=AVX2 counts as without), where oneDNN would emulate
it. Both train with batch 128 on the training set held in memory; inference runs
over 10,000 images. Reported: images/second (median of --repeats timings
after a warm-up), the ratio, and the fraction of the 2-core fp32 convolution
ceiling (~425 GFLOP/s, the issue's figure) reached at about 1.23 GFLOP per
training image (forward and backward). Set $CIFAR10_DIR first.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GFLOP_PER_TRAINING_IMAGE = 1.23
CEILING_GFLOPS = 425.0


def keras_model():
    import keras
    from keras import layers
    model = keras.Sequential([keras.Input((32, 32, 3))])
    for filters, rate in [(64, 0.2), (128, 0.25), (128, 0.35)]:
        for _ in range(2):
            model.add(layers.Conv2D(filters, 4, padding='same', activation='relu'))
            model.add(layers.BatchNormalization())
        model.add(layers.MaxPooling2D())
        model.add(layers.Dropout(rate))
    model.add(layers.Flatten())
    model.add(layers.Dense(256, activation='relu'))
    model.add(layers.BatchNormalization())
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(10))
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'])
    return model


def time_it(function, repeats):
    function()                                   # warm-up: graph building, tracing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_graph(x, y, x_test, batch, steps, repeats, precision):
    import tensorflow.compat.v1 as tf

    import cnn
    import data_helpers
    import sessions
    with tf.Graph().as_default():
        # cnn.py's own graph: the training tower and the inference tower
        ops = cnn.build_graph('batchnorm', x, y, batch, 1e-3, precision)
        with tf.Session(config=sessions.session_config()) as sess:
            sess.run(tf.global_variables_initializer())
            ops.sampler.initialize(sess)
            batches = data_helpers.epoch_indices(len(x), batch, 10 ** 9,
                                                 np.random.default_rng(0))

            def train():
                for _ in range(steps):
                    sess.run(ops.train_step, {ops.sampler.indices: next(batches)})

            def infer():
                for start in range(0, len(x_test), 500):
                    sess.run(ops.predictions, {ops.images: x_test[start:start + 500]})

            return (steps * batch / time_it(train, repeats),
                    len(x_test) / time_it(infer, repeats))


def measure_keras(x, y, x_test, batch, steps, repeats):
    model = keras_model()
    assert model.count_params() == 1517450, model.count_params()
    steps_x, steps_y = x[:steps * batch], y[:steps * batch]
    fit = lambda: model.fit(steps_x, steps_y, batch_size=batch, epochs=1, verbose=0)
    predict = lambda: model.predict(x_test, batch_size=500, verbose=0)
    return (steps * batch / time_it(fit, repeats), len(x_test) / time_it(predict, repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=60, help='training steps per timing')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--only', choices=['graph', 'graph-bf16', 'keras'],
                        help='(internal) measure one side in this process')
    args = parser.parse_args()
    if args.only is None:
        # Each side in a fresh process: cnn.py switches TensorFlow to graph
        # mode for its whole process, and Keras needs eager mode.
        import cli
        sides = ['graph', 'graph-bf16', 'keras']
        if not cli.cpu_has_bf16():
            sides.remove('graph-bf16')
            print('graph-bf16 skipped: this CPU has no native bfloat16 (AVX-512 BF16 or AMX), '
                  'so oneDNN would emulate it, slower than fp32; cnn.py picks fp32 here')
        results = {}
        for side in sides:
            out = subprocess.run([sys.executable, __file__, '--only', side, '--steps',
                                  str(args.steps), '--repeats', str(args.repeats)],
                                 capture_output=True, text=True, check=True).stdout
            results[side] = json.loads(out.strip().splitlines()[-1])
        for name, (train, infer) in results.items():
            print('%-10s training %6.0f images/s (%5.1f GFLOP/s, %2.0f%% of the fp32 ceiling)  '
                  'inference %6.0f images/s' % (
                      name, train, train * GFLOP_PER_TRAINING_IMAGE,
                      100 * train * GFLOP_PER_TRAINING_IMAGE / CEILING_GFLOPS, infer))
        for side in sides[:-1]:
            print('%s / keras: training %.2fx, inference %.2fx'
                  % (side, results[side][0] / results['keras'][0],
                     results[side][1] / results['keras'][1]))
        default = 'graph-bf16' if cli.precision('auto') == 'bf16' else 'graph'
        print("cnn.py's default here (auto: %s) / keras: training %.2fx"
              % (default, results[default][0] / results['keras'][0]))
        return
    import data_helpers
    data = data_helpers.load_data(normalization='scale', layout='nhwc')
    x, y = data['images_train'][:40000], data['labels_train'][:40000]
    test = data['images_test']
    if args.only == 'keras':
        result = measure_keras(x, y, test, 128, args.steps, args.repeats)
    else:
        result = measure_graph(x, y, test, 128, args.steps, args.repeats,
                               'bf16' if args.only == 'graph-bf16' else 'fp32')
    print(json.dumps(result))


if __name__ == '__main__':
    main()
