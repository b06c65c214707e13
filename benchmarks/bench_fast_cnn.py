"""Where fast_cnn.py's training time goes, against what these cores can do, in one script.

    CIFAR10_DIR=... python benchmarks/bench_fast_cnn.py [--recipe airbench94] [--precision bf16]

1. The ceiling: a 4096 x 4096 matmul and each of the network's 3x3
   convolutions at its own shape (forward, batch --batch), in the run's
   precision; their FLOP-weighted rate is the most the network's
   convolutions could reach here.
2. The model: training steps of the recipe's batch on the real graph
   (fast_cnn.build_graph, real images), images/s and GFLOP/s at
   fast_cnn.training_flops_per_image(), as a fraction of that ceiling.
3. A step trace (RunMetadata, FULL_TRACE): each op's time summed by kind:
   convolution forward, input gradient and filter gradient (the ops in
   convolutions.py's name scopes count as the gradient they serve, their
   transposes included), oneDNN layout reorders, batch norm, activation,
   pooling, the optimiser, the rest.
   With one op at a time on both cores (the session config), the kinds add
   up to the step.
4. With --gradients: each convolution's forward, its input gradient as
   TensorFlow takes it and as fast_cnn takes it in float32 on TensorFlow's
   own kernels (a forward convolution of the kernel turned), and its filter
   gradient as TensorFlow takes it, as fast_cnn takes it in bfloat16 on
   small maps (by taps), and as a forward convolution
   (convolutions.conv2d_by_forward), in ms.

TensorFlow runs the kernels fast_cnn.py runs (`cli.prepare_tensorflow`:
oneDNN's on x86-64; $TF_ENABLE_ONEDNN_OPTS=0 for its own). Median of
--repeats timings after a warm-up; nothing else should run.
"""

import argparse
import collections
import os
import re
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cli  # noqa: E402  (no TensorFlow inside)
cli.prepare_tensorflow()  # TensorFlow's kernels as fast_cnn.py runs them
import tensorflow.compat.v1 as tf  # noqa: E402

import convolutions  # noqa: E402
import data_helpers  # noqa: E402
import fast_cnn  # noqa: E402
import sessions  # noqa: E402

tf.disable_eager_execution()


def median_seconds(run, repeats):
    run()                                   # warm-up: kernels chosen, memory allocated
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_shapes(widths, batch):
    """(name, input shape, kernel shape) of the network's 3x3 convolutions."""
    shapes, side, channels = [], fast_cnn.IMAGE_SIZE - 1, 24
    for block, width in enumerate(widths, 1):
        shapes.append(('block%d/conv1' % block, [batch, side, side, channels], [3, 3, channels, width]))
        side //= 2
        shapes.append(('block%d/conv2' % block, [batch, side, side, width], [3, 3, width, width]))
        channels = width
    return shapes


def measure_ceiling(widths, batch, dtype, repeats):
    """GFLOP/s of a square matmul and of each convolution (forward)."""
    results = {}
    with tf.Graph().as_default(), tf.Session(config=sessions.session_config()) as sess:
        n = 4096
        a = tf.Variable(tf.random.normal([n, n]), dtype=tf.float32)
        product = tf.matmul(tf.cast(a, dtype), tf.cast(a, dtype))
        convs = []
        for name, input_shape, kernel_shape in conv_shapes(widths, batch):
            x = tf.Variable(tf.cast(tf.random.normal(input_shape), dtype))
            k = tf.Variable(tf.cast(tf.random.normal(kernel_shape), dtype))
            flops = 2 * np.prod(input_shape[:3]) * np.prod(kernel_shape)
            convs.append((name, tf.nn.conv2d(x, k, 1, 'SAME').op, flops))
        sess.run(tf.global_variables_initializer())
        seconds = median_seconds(lambda: sess.run(product.op), repeats)
        results['matmul %d' % n] = 2 * n ** 3 / seconds / 1e9
        total_flops, total_seconds = 0, 0
        for name, op, flops in convs:
            seconds = median_seconds(lambda: sess.run(op), repeats)
            results[name] = flops / seconds / 1e9
            total_flops, total_seconds = total_flops + flops, total_seconds + seconds
        results['convolutions, FLOP-weighted'] = total_flops / total_seconds / 1e9
    return results


def measure_gradients(widths, batch, dtype, repeats):
    """{name: ms of the forward; the input gradient as TensorFlow takes it and
    by a forward convolution; the filter gradient as TensorFlow takes it, by
    taps and by a forward convolution}."""
    results = {}
    with tf.Graph().as_default(), tf.Session(config=sessions.session_config()) as sess:
        ops = []
        for name, input_shape, kernel_shape in conv_shapes(widths, batch):
            x = tf.Variable(tf.cast(tf.random.normal(input_shape), dtype))
            k = tf.Variable(tf.cast(tf.random.normal(kernel_shape), dtype))
            dy = tf.Variable(tf.cast(tf.random.normal(input_shape[:3] + kernel_shape[3:]), dtype))
            ops.append((name, [
                tf.nn.conv2d(x, k, 1, 'SAME').op,
                tf.nn.conv2d_backprop_input(tf.shape(x), k, dy, [1, 1, 1, 1], 'SAME').op,
                tf.gradients(convolutions.conv2d_by_forward(x, k), x, dy)[0].op,
                tf.nn.conv2d_backprop_filter(x, tf.shape(k), dy, [1, 1, 1, 1], 'SAME').op,
                tf.gradients(convolutions.conv2d_by_taps(x, k), k, dy)[0].op,
                tf.gradients(convolutions.conv2d_by_forward(x, k), k, dy)[0].op]))
        sess.run(tf.global_variables_initializer())
        for name, timed in ops:
            results[name] = [1000 * median_seconds(lambda: sess.run(op), repeats) for op in timed]
    return results


KINDS = [   # (kind, test on the op's type and name), first match wins
    ('optimiser', lambda t, n: n.startswith(('filters/', 'biases/', 'head/', 'whiten/',
                                              'lookahead/'))),
    # (in bfloat16 fast_cnn takes it on small maps by taps: slices of the
    # padded input, nine MatMuls; in float32 on TensorFlow's own kernels as
    # a forward convolution, in the name scope filter_gradient)
    ('conv filter gradient', lambda t, n: 'BackpropFilter' in t or '/filter_gradient/' in n or (
        t in ('MatMul', 'StridedSlice', 'Pad') and re.search(r'/Conv2D(_\d+)?_grad/', n))),
    # (in float32 on TensorFlow's own kernels fast_cnn takes it as a forward
    # convolution, in input_gradient)
    ('conv input gradient', lambda t, n: 'BackpropInput' in t or '/input_gradient/' in n),
    ('conv forward', lambda t, n: 'Conv2D' in t),
    ('layout reorder / transpose', lambda t, n: 'Reorder' in t or 'Transpose' in t
     or 'ToTf' in t),
    ('batch norm', lambda t, n: 'FusedBatchNorm' in t),
    # GELU forward and backward are calls of XLA-compiled functions, named gelu
    ('activation', lambda t, n: t in ('Relu', 'ReluGrad', 'Erf', '_MklRelu', '_MklReluGrad')
     or '/Gelu' in n or 'gelu' in n.lower()),
    ('pooling', lambda t, n: 'MaxPool' in t or 'Max' == t),
    ('data and augmentation', lambda t, n: 'sampler' in n or 'GatherV2' in t),
]


def kind_of(op_type, name):
    for kind, test in KINDS:
        if test(op_type, name):
            return kind
    return 'other'


def measure_model(args, hyp, data_dir, steps, repeats):
    """Training images/s, and one step's op times by kind (ms)."""
    train_images, train_labels, _, _ = data_helpers.load_raw(data_dir)
    count = min(10000, len(train_images))
    train_images = data_helpers.to_nhwc(train_images)[:count]
    pad = hyp['translate']
    padded = np.pad(train_images, [(0, 0), (pad, pad), (pad, pad), (0, 0)], mode='reflect')
    sample = fast_cnn.normalize(train_images[:fast_cnn.WHITEN_SAMPLES].astype(np.float32) / 255)
    rng = np.random.default_rng(0)
    with tf.Graph().as_default() as graph:
        ops = fast_cnn.build_graph(args, hyp, padded, train_labels[:count],
                                   fast_cnn.whitening_filters(sample))
        with tf.Session(config=sessions.session_config()) as sess:
            sess.run(tf.global_variables_initializer())
            ops.sampler.initialize(sess)

            def feed():
                indices = rng.choice(count, args.batch_size, replace=count < args.batch_size)
                return {ops.sampler.indices: indices, ops.flip: rng.random(args.batch_size) < 0.5,
                        ops.lr_scale: 0.5, ops.whiten_lr_scale: 0.5}

            def train():
                for _ in range(steps):
                    sess.run(ops.train_step, feed())

            images_per_second = steps * args.batch_size / median_seconds(train, repeats)
            metadata = tf.RunMetadata()
            sess.run(ops.train_step, feed(), options=tf.RunOptions(
                trace_level=tf.RunOptions.FULL_TRACE), run_metadata=metadata)
        # The graph's op types; nodes oneDNN added (reorders) by their label
        types = {op.name: op.type for op in graph.get_operations()}
    by_kind, others = collections.Counter(), collections.Counter()
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            name = node.node_name.split(':')[0]
            op_type = (types.get(name) or node.timeline_label.split('(')[0].split(' = ')[-1]).strip()
            kind = kind_of(op_type, name)
            by_kind[kind] += node.all_end_rel_micros / 1000
            if kind == 'other':
                others[op_type] += node.all_end_rel_micros / 1000
    return images_per_second, by_kind, others


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--recipe', choices=sorted(fast_cnn.RECIPES),
                        default=fast_cnn.DEFAULT_RECIPE)
    cli.add_precision_flag(parser, 'auto')
    parser.add_argument('--batch', type=cli.positive_int, default=500,
                        help='batch of the ceiling convolutions (default: 500)')
    parser.add_argument('--steps', type=cli.positive_int, default=5,
                        help='training steps per timing (default: 5)')
    parser.add_argument('--repeats', type=cli.positive_int, default=3)
    parser.add_argument('--batch-size', type=cli.positive_int,
                        help="the model's batch (default: the recipe's)")
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--gradients', action='store_true',
                        help="also time each convolution's gradients (batch --batch)")
    options = parser.parse_args()
    hyp = fast_cnn.RECIPES[options.recipe]
    precision = cli.precision(options.precision)
    args = fast_cnn.parse_args(['--recipe', options.recipe, '--precision', precision] + (
        ['--batch-size', str(options.batch_size)] if options.batch_size else []))
    dtype = tf.bfloat16 if precision == 'bf16' else tf.float32

    ceiling = measure_ceiling(hyp['widths'], options.batch, dtype, options.repeats)
    print('Ceiling (%s, forward, batch %d):' % (precision, options.batch))
    for name, gflops in ceiling.items():
        print('  %-30s %6.0f GFLOP/s' % (name, gflops))

    images_per_second, by_kind, others = measure_model(args, hyp, options.data_dir,
                                               options.steps, options.repeats)
    gflops = images_per_second * fast_cnn.training_flops_per_image(hyp['widths']) / 1e9
    bound = ceiling['convolutions, FLOP-weighted']
    print('Model (%s recipe, batch %d, %s): %.0f images/s = %.0f GFLOP/s, %.0f%% of the '
          'convolutions\' ceiling' % (options.recipe, args.batch_size, precision,
                                      images_per_second, gflops, 100 * gflops / bound))
    total = sum(by_kind.values())
    print('One step, traced (%.0f ms of op time):' % total)
    for kind, ms in by_kind.most_common():
        print('  %-28s %7.1f ms  %5.1f%%' % (kind, ms, 100 * ms / total))
    print('  other, by op type: ' + ', '.join('%s %.1f ms' % item for item in others.most_common(6)))

    if options.gradients:
        print('Each convolution and its gradients (%s, batch %d), ms: forward; input gradient '
              "as TensorFlow takes it / by a forward convolution; filter gradient as "
              'TensorFlow takes it / by taps / by a forward convolution'
              % (precision, options.batch))
        results = measure_gradients(hyp['widths'], options.batch, dtype, options.repeats)
        results['all six'] = [sum(column) for column in zip(*results.values())]
        for name, (forward, *gradients) in results.items():
            print('  %-14s %7.1f   %7.1f / %7.1f   %7.1f / %7.1f / %7.1f'
                  % ((name, forward) + tuple(gradients)))


if __name__ == '__main__':
    main()
