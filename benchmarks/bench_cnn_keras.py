"""Training and inference speed of cnn.py's `batchnorm` model, in float32 and in
bfloat16, against the same model in tf.keras (`model.fit` / `model.predict`,
float32), one script on this machine.

    python benchmarks/bench_cnn_keras.py [--steps 60] [--repeats 3] [--rounds 1]

bfloat16 is skipped on a CPU without it (`cli.cpu_has_bf16`: AVX-512 BF16 or
AMX; $ONEDNN_MAX_CPU_ISA=AVX2 counts as without), where oneDNN would emulate
it. The graph side runs TensorFlow's kernels as cnn.py does
(`cli.prepare_tensorflow`: oneDNN's on x86-64), Keras as TensorFlow picks
them for this CPU (on Linux oneDNN's only with VNNI, AVX-512 BF16 or AMX;
$TF_ENABLE_ONEDNN_OPTS ignored); where that is TensorFlow's own (Eigen)
kernels and the graph side runs oneDNN's, Keras is also timed on oneDNN's
(`keras-onednn`). Both train with batch 128 on the training set held in
memory; inference runs over 10,000 images. Reported: images/second (median of --repeats timings
after a warm-up), the ratio, and each side's GFLOP/s (1.22 GFLOP per
training image: the six convolutions' forward, input gradient and filter
gradient, the first one's input gradient left out: the images need none) as
a fraction of the ceiling measured here: the FLOP-weighted rate
of those convolutions' forward in float32 at batch 128, what a training step
would reach if both gradients ran as fast as the forward and nothing else
took time. The graph side also traces one step and sums its ops' times by
kind (convolution forward, input gradient, filter gradient, the rest).
With --rounds N every side is measured N times in turn (a fresh process
each; the ceiling first, the other sides in the opposite order every other
round) and the ratios,
taken within each round, are reported as their median: this machine's
speed drifts from minute to minute. Set $CIFAR10_DIR first.
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
# The batchnorm net's 4x4 'same' convolutions: (map side, channels in, channels out)
CONVOLUTIONS = [(32, 3, 64), (32, 64, 64), (16, 64, 128), (16, 128, 128),
                (8, 128, 128), (8, 128, 128)]
BATCH = 128


def forward_flops(side, channels_in, channels_out):
    """Multiplications and additions of one image through one convolution."""
    return 2 * side * side * 4 * 4 * channels_in * channels_out


# Forward, input gradient and filter gradient each do the forward's
# arithmetic, except the first convolution's input gradient, which is never
# taken; the two dense layers add 0.3%, left out.
GFLOP_FORWARD = sum(forward_flops(*c) for c in CONVOLUTIONS) / 1e9
GFLOP_PER_TRAINING_IMAGE = 3 * GFLOP_FORWARD - forward_flops(*CONVOLUTIONS[0]) / 1e9
MAX_STEPS = 40000 // BATCH - 1      # the held 40,000 images, in whole batches, and a warm-up


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


def time_it(function, repeats, summary=statistics.median):
    function()                                   # warm-up: graph building, tracing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return summary(times)


def measure_ceiling(repeats):
    """GFLOP/s of the six convolutions' forward in float32 at BATCH, FLOP-weighted,
    each at the fastest of its timings (a ceiling: the best these cores did)."""
    import tensorflow.compat.v1 as tf

    import sessions
    with tf.Graph().as_default(), tf.Session(config=sessions.session_config()) as sess:
        convolutions = []
        for side, channels_in, channels_out in CONVOLUTIONS:
            x = tf.Variable(tf.random.normal([BATCH, side, side, channels_in]))
            kernel = tf.Variable(tf.random.normal([4, 4, channels_in, channels_out]))
            convolutions.append(tf.nn.conv2d(x, kernel, 1, 'SAME').op)
        sess.run(tf.global_variables_initializer())
        seconds = sum(time_it(lambda: sess.run(op), max(5, repeats), summary=min)
                      for op in convolutions)
    return BATCH * GFLOP_FORWARD / seconds


# A traced step's ops by kind: TensorFlow's op types (oneDNN's _Mkl ones
# included), or (the gradients cnn.py takes by forward convolutions)
# convolutions.py's name scopes; the first match wins
KINDS = [('conv filter gradient', 'BackpropFilter', '/filter_gradient/'),
         ('conv input gradient', 'BackpropInput', '/input_gradient/'),
         ('conv forward (with bias and ReLU)', 'Conv2D', None), ('batch norm', 'BatchNorm', None)]


def trace_step(sess, run_step):
    """One training step traced: {kind: ms}, the kinds summing to the step
    (one op at a time on all cores: sessions.session_config())."""
    import tensorflow.compat.v1 as tf
    metadata = tf.RunMetadata()
    run_step(options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE),
             run_metadata=metadata)
    by_kind = dict.fromkeys([kind for kind, _, _ in KINDS] + ['the rest'], 0.0)
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            op_type = node.timeline_label.split('(')[0].split(' = ')[-1]
            kind = next((kind for kind, type_part, scope in KINDS
                         if type_part in op_type or (scope and scope in node.node_name)),
                        'the rest')
            by_kind[kind] += node.all_end_rel_micros / 1000
    return by_kind


def measure_graph(x, y, x_test, steps, repeats, precision):
    import tensorflow.compat.v1 as tf

    import cnn
    import data_helpers
    import sessions
    with tf.Graph().as_default():
        # cnn.py's own graph: the training tower and the inference tower
        ops = cnn.build_graph('batchnorm', x, y, BATCH, 1e-3, precision)
        with tf.Session(config=sessions.session_config()) as sess:
            sess.run(tf.global_variables_initializer())
            ops.sampler.initialize(sess)
            batches = data_helpers.epoch_indices(len(x), BATCH, 10 ** 9,
                                                 np.random.default_rng(0))

            def train_step(**trace):
                sess.run(ops.train_step, {ops.sampler.indices: next(batches)}, **trace)

            def train():
                for _ in range(steps):
                    train_step()

            def infer():
                for start in range(0, len(x_test), 500):
                    sess.run(ops.predictions, {ops.images: x_test[start:start + 500]})

            return (steps * BATCH / time_it(train, repeats),
                    len(x_test) / time_it(infer, repeats), trace_step(sess, train_step))


def measure_keras(x, y, x_test, steps, repeats):
    """Keras' images/s in its steps: from the end of a call's first batch to the
    end of its last, as the graph side times only its steps. A call of `fit`
    also pays a fixed cost outside its steps (on this 2-core VM, in some calls,
    15 s after its last step: BENCHMARKS.md, 2026-12-03), which a user's fit of
    20 epochs pays once and a timing of 20 steps would count 20 times over."""
    import keras

    class BatchEnds(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

        on_predict_batch_end = on_train_batch_end

    def images_per_second(run, batch_size):
        clock, rates = BatchEnds(), []
        for _ in range(1 + repeats):                # the first a warm-up: tracing
            clock.times = []
            run(clock)
            rates.append((len(clock.times) - 1) * batch_size / (clock.times[-1] - clock.times[0]))
        return statistics.median(rates[1:])

    model = keras_model()
    assert model.count_params() == 1517450, model.count_params()
    steps_x, steps_y = x[:(steps + 1) * BATCH], y[:(steps + 1) * BATCH]
    return (images_per_second(lambda clock: model.fit(steps_x, steps_y, batch_size=BATCH, epochs=1,
                                                      verbose=0, callbacks=[clock]), BATCH),
            images_per_second(lambda clock: model.predict(x_test, batch_size=500, verbose=0,
                                                          callbacks=[clock]), 500))


def graph_and_keras_sides(sides):
    """(cnn.py's graph sides, Keras' sides) among those measured."""
    return ([side for side in sides if side.startswith('graph')],
            [side for side in sides if side.startswith('keras')])


def print_round(results, sides):
    """One round's figures: the ceiling, each side's rates, the graph's step, the ratios."""
    ceiling = results['ceiling']
    print('ceiling: the convolutions\' forward, fp32, batch %d: %.1f GFLOP/s' % (BATCH, ceiling))
    for side in sides[1:]:
        train, infer = results[side][:2]
        print('%-12s training %6.0f images/s (%5.1f GFLOP/s, %3.0f%% of the ceiling)  '
              'inference %6.0f images/s' % (
                  side, train, train * GFLOP_PER_TRAINING_IMAGE,
                  100 * train * GFLOP_PER_TRAINING_IMAGE / ceiling, infer))
    graphs, kerases = graph_and_keras_sides(sides)
    for side in graphs:
        step = results[side][2]
        print('%s, a traced step of %.0f ms: %s' % (side, sum(step.values()), ', '.join(
            '%s %.0f%%' % (kind, 100 * ms / sum(step.values())) for kind, ms in step.items())))
        for keras_side in kerases:
            print('%s / %s: training %.2fx, inference %.2fx'
                  % (side, keras_side, results[side][0] / results[keras_side][0],
                     results[side][1] / results[keras_side][1]))


def main():
    import cli
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--steps', type=cli.positive_int, default=60,
                        help='training steps per timing (at most %d)' % MAX_STEPS)
    parser.add_argument('--repeats', type=cli.positive_int, default=3,
                        help='timings per side (median)')
    parser.add_argument('--rounds', type=cli.positive_int, default=1,
                        help='times every side is measured in turn (median of the ratios)')
    parser.add_argument('--only', choices=['ceiling', 'graph', 'graph-bf16', 'keras',
                                           'keras-onednn'],
                        help=argparse.SUPPRESS)    # measure one thing in this process
    args = parser.parse_args()
    if args.steps > MAX_STEPS:
        parser.error('--steps %d: the 40,000 training images held give at most %d'
                     % (args.steps, MAX_STEPS))
    if args.only is None:
        # Each side in a fresh process: cnn.py switches TensorFlow to graph
        # mode for its whole process, and Keras needs eager mode.
        sides = ['ceiling', 'graph', 'graph-bf16', 'keras', 'keras-onednn']
        if not cli.cpu_has_bf16():
            sides.remove('graph-bf16')
            print('graph-bf16 skipped: this CPU has no native bfloat16 (AVX-512 BF16 or AMX), '
                  'so oneDNN would emulate it, slower than fp32; cnn.py picks fp32 here')
        if tensorflow_picks_onednn():
            sides.remove('keras-onednn')
            print("keras runs oneDNN's kernels here, as TensorFlow picks them for this CPU")
        elif not cli.asks_for_onednn():
            sides.remove('keras-onednn')
            print("keras and the graph run TensorFlow's own (Eigen) kernels here")
        else:
            print("keras: TensorFlow's own (Eigen) kernels, as it picks them for this CPU; "
                  "keras-onednn: oneDNN's, asked for as cnn.py asks")
        rounds = []         # one {side: result} per round
        for round_number in range(1, args.rounds + 1):
            results = {}
            order = sides if round_number % 2 else sides[:1] + sides[:0:-1]
            for side in order:
                results[side] = measure_in_a_process(side, args)
            rounds.append(results)
            print('round %d of %d' % (round_number, args.rounds))
            print_round(results, sides)
        graphs, kerases = graph_and_keras_sides(sides)
        if args.rounds > 1:
            print('median over %d rounds:' % args.rounds)
            for side in graphs:
                for keras_side in kerases:
                    print('%s / %s: training %.2fx, inference %.2fx' % (side, keras_side, *(
                        statistics.median(r[side][i] / r[keras_side][i] for r in rounds)
                        for i in (0, 1))))
        default = 'graph-bf16' if cli.precision('auto') == 'bf16' else 'graph'
        for keras_side in kerases:
            print("cnn.py's default here (auto: %s) / %s: training %.2fx" % (
                default, keras_side,
                statistics.median(r[default][0] / r[keras_side][0] for r in rounds)))
        return
    # The kernels, chosen before TensorFlow loads: cnn.py's, or Keras' as a user gets them
    if args.only == 'keras':
        os.environ.pop('TF_ENABLE_ONEDNN_OPTS', None)
        os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    else:
        if args.only == 'keras-onednn':
            os.environ['TF_ENABLE_ONEDNN_OPTS'] = '1'
        cli.prepare_tensorflow()
    if args.only == 'ceiling':
        print(RESULT + json.dumps(measure_ceiling(args.repeats)))
        return
    import data_helpers
    data = data_helpers.load_data(normalization='scale', layout='nhwc')
    x, y = data['images_train'][:40000], data['labels_train'][:40000]
    test = data['images_test']
    if args.only.startswith('keras'):
        result = measure_keras(x, y, test, args.steps, args.repeats)
    else:
        result = measure_graph(x, y, test, args.steps, args.repeats,
                               'bf16' if args.only == 'graph-bf16' else 'fp32')
    print(RESULT + json.dumps(result))


RESULT = 'result: '      # the line of a child's output that holds its result


def tensorflow_picks_onednn():
    """Whether TensorFlow, left to itself, runs oneDNN's kernels on this CPU
    (asked of a fresh process without $TF_ENABLE_ONEDNN_OPTS)."""
    env = {name: value for name, value in os.environ.items() if name != 'TF_ENABLE_ONEDNN_OPTS'}
    child = subprocess.run([sys.executable, '-c', 'import convolutions; '
                            'print(convolutions.onednn_kernels())'],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    if child.returncode != 0 or child.stdout.split() not in (['True'], ['False']):
        last = (child.stderr.strip().splitlines() or ['(no output)'])[-1]
        sys.exit('bench_cnn_keras.py: error: asking TensorFlow for its kernels failed: ' + last)
    return child.stdout.split() == ['True']


def measure_in_a_process(side, args):
    """One side's result, measured in a fresh process; its error in one line."""
    child = subprocess.run([sys.executable, __file__, '--only', side, '--steps', str(args.steps),
                            '--repeats', str(args.repeats)], capture_output=True, text=True)
    lines = [line for line in child.stdout.splitlines() if line.startswith(RESULT)]
    if child.returncode != 0 or not lines:
        last = (child.stderr.strip().splitlines() or ['(no output)'])[-1]
        sys.exit('bench_cnn_keras.py: error: measuring %s failed (exit %d): %s'
                 % (side, child.returncode, last))
    return json.loads(lines[-1][len(RESULT):])


if __name__ == '__main__':
    main()
