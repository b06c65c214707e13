"""convolutions.py: the same output and gradients as TensorFlow's own
convolution, at every kernel size it is used with; the bfloat16 filter
gradient rounded once; no graph held."""

import gc
import weakref

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import convolutions
from conftest import needs_native_bf16


def conv_and_gradients(conv2d, x, kernel, dy, dtype=tf.float32):
    """conv2d(x, kernel) and the gradients of sum(conv2d(x, kernel) * dy) for
    x and kernel (arrays, computed in dtype), as float32 arrays."""
    with tf.Graph().as_default():
        x, kernel, dy = (tf.constant(value, dtype) for value in (x, kernel, dy))
        y = conv2d(x, kernel)
        gradients = tf.gradients(y, [x, kernel], grad_ys=dy)
        with tf.Session() as sess:
            return sess.run([tf.cast(t, tf.float32) for t in [y] + gradients])


def tensorflows_conv2d(x, kernel):
    return tf.nn.conv2d(x, kernel, 1, 'SAME')


# fast_cnn's 3x3, cnn.py's 3x3, 4x4 (which 'SAME' pads one more after than
# before) and 5x5, and a kernel of two sizes: on maps of odd and even sides
@pytest.mark.parametrize('conv2d, kernel_size', [
    ('conv2d_by_taps', (3, 3)),
    ('conv2d_by_forward', (3, 3)),
    ('conv2d_by_forward', (4, 4)),
    ('conv2d_by_forward', (5, 5)),
    ('conv2d_by_forward', (2, 3))])
def test_conv2d_with_other_gradients_is_conv2d_with_tensorflows_gradients(conv2d, kernel_size):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape) for shape in
              [(5, 7, 6, 3), kernel_size + (3, 4), (5, 7, 6, 4)]]
    expected = conv_and_gradients(tensorflows_conv2d, *arrays)
    result = conv_and_gradients(getattr(convolutions, conv2d), *arrays)
    for name, want, got in zip(['output', 'input gradient', 'filter gradient'], expected, result):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_the_gradients_are_forward_convolutions():
    # Not TensorFlow's gradient kernels under other names
    with tf.Graph().as_default() as graph:
        x, kernel = tf.zeros([2, 8, 8, 3]), tf.zeros([4, 4, 3, 5])
        dx, dkernel = tf.gradients(convolutions.conv2d_by_forward(x, kernel), [x, kernel])
    types = [op.type for op in graph.get_operations()]
    assert 'Conv2DBackpropInput' not in types and 'Conv2DBackpropFilter' not in types
    assert types.count('Conv2D') == 3
    assert dx.op.type == 'Conv2D'
    # (the filter's by channel, transposed back to [kernel h, kernel w, in, out])
    assert dkernel.op.type == 'Transpose' and dkernel.op.inputs[0].op.type == 'Conv2D'
    assert dkernel.shape == kernel.shape
    # Each in its name scope, which the benchmarks' traces count by
    scopes = [op.name.split('/')[-2] for op in graph.get_operations()
              if op.type == 'Conv2D' and op.name.startswith('gradients/')]
    assert sorted(scopes) == ['filter_gradient', 'input_gradient']
    assert dx.op.name.split('/')[-2] == 'input_gradient'
    assert dkernel.op.name.split('/')[-2] == 'filter_gradient'


@needs_native_bf16
def test_conv2d_by_taps_in_bfloat16_rounds_its_filter_gradient_once():
    # Inputs exact in bfloat16; each tap's products summed in float32, then
    # rounded once to bfloat16. (oneDNN's bfloat16 filter-gradient kernel,
    # measured beside it: 14x the mean error of a correct rounding; BENCHMARKS.md)
    rng = np.random.default_rng(1)
    bfloat16 = tf.bfloat16.as_numpy_dtype
    arrays = [rng.standard_normal(shape).astype(bfloat16).astype(np.float64)
              for shape in [(64, 8, 8, 64), (3, 3, 64, 64), (64, 8, 8, 64)]]
    exact = conv_and_gradients(tensorflows_conv2d, *arrays, dtype=tf.float64)[2]
    result = conv_and_gradients(convolutions.conv2d_by_taps, *arrays, dtype=tf.bfloat16)[2]
    rounded = exact.astype(np.float32).astype(bfloat16).astype(np.float32)
    assert np.mean(result == rounded) > 0.99          # (a sum within float32's error of a tie)
    np.testing.assert_allclose(result, exact, rtol=2 ** -7, atol=2 ** -8 * np.abs(exact).max())


@pytest.mark.parametrize('conv2d', ['conv2d_by_taps', 'conv2d_by_forward'])
def test_a_graph_whose_gradients_went_otherwise_is_freed_with_it(conv2d):
    # (a tf.custom_gradient would register a gradient, holding its graph, for
    # the life of the process)
    graph = tf.Graph()
    with graph.as_default():
        x, kernel = tf.zeros([2, 4, 4, 3]), tf.zeros([3, 3, 3, 5])
        tf.gradients(getattr(convolutions, conv2d)(x, kernel), [x, kernel])
    graph_alive = weakref.ref(graph)
    del graph, x, kernel
    gc.collect()
    assert graph_alive() is None
