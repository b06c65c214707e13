"""Stride-1 'SAME' convolutions whose gradients are taken otherwise than by
TensorFlow's own kernels, where that was measured faster on a CPU
(BENCHMARKS.md). The forward is tf.nn.conv2d(x, kernel, 1, 'SAME') as ever;
only the gradient changes, through the graph's gradient_override_map, so a
graph built without gradients (evaluation, predict.py, exports) is plain
convolutions, and no gradient function holds a graph alive.

* conv2d_by_forward: both gradients as forward convolutions, for where
  TensorFlow runs its own (Eigen) kernels (`onednn_kernels()` False). There,
  on an AVX2 AMD EPYC (Zen 3), its gradient kernels ran 1.2-9x slower than
  its forward at cnn.py's and fast_cnn.py's shapes; taken so, the input
  gradient summed over their convolutions 2.8x and 2x faster, the filter
  gradient 2x and 1.1x, a training step 1.41x and 1.05x faster than with the
  input gradient alone so. With oneDNN's kernels (the scripts ask for them on
  x86-64: cli.prepare_tensorflow) its filter gradient is 1.9x slower than
  oneDNN's own there, its input gradient no faster: the scripts then take
  TensorFlow's gradients.
* conv2d_by_taps: a 3x3 kernel's filter gradient as nine matrix products;
  faster than oneDNN's with AMX on maps of 8x8 or less, and more exact in
  bfloat16; used by fast_cnn.py in bfloat16 training.
* onednn_kernels(): whether this process runs oneDNN's kernels.
"""

import tensorflow.compat.v1 as tf


def onednn_kernels():
    """Whether TensorFlow runs oneDNN's kernels on this process's CPU (decided
    once, as it loads, from the CPU and $TF_ENABLE_ONEDNN_OPTS), rather than
    its own (Eigen) ones. (A GPU runs its own either way; there the gradients
    by forward convolutions, taken where this is False, were never measured.)"""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:       # (a private module: if it moves, assume TensorFlow's own)
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def conv2d_by_forward(x, kernel):
    """tf.nn.conv2d(x, kernel, 1, 'SAME'), any kernel size: the same forward,
    both its gradients taken by forward convolutions (_conv2d_gradients_by_forward).

    Args:
      x: [batch, height, width, channels in].
      kernel: [kernel height, kernel width, channels in, channels out], x's type.

    Returns:
      [batch, height, width, channels out].
    """
    return _conv2d_with_gradient(x, kernel, 'Conv2DByForward')


def _conv2d_gradients_by_forward(op, dy):
    """The gradients of conv2d_by_forward: the input's by
    _input_gradient_by_forward, the filter's by _filter_gradient_by_forward."""
    x, kernel = op.inputs
    return _input_gradient_by_forward(kernel, dy), _filter_gradient_by_forward(x, kernel, dy)


def _same_padding(kernel):
    """[before, after] of a stride-1 'SAME' convolution along each side of
    the map: an even kernel pads one pixel more after than before (cnn.py's 4x4)."""
    return [[(size - 1) // 2, size - 1 - (size - 1) // 2] for size in kernel.shape[:2]]


def _input_gradient_by_forward(kernel, dy):
    """The input gradient as the convolution of the output gradient with the
    kernel turned by 180 degrees and its channels in and out swapped (each
    input pixel gets back what each tap sent forward from it). Turned, the
    kernel needs the 'SAME' padding the other way round."""
    with tf.name_scope('input_gradient'):        # (what a traced step's ops are for)
        turned = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
        pads = [[after, before] for before, after in _same_padding(kernel)]
        padding = ('SAME' if all(after == before for after, before in pads)
                   else [[0, 0]] + pads + [[0, 0]])
        return tf.nn.conv2d(dy, turned, 1, padding)


def _filter_gradient_by_forward(x, kernel, dy):
    """The filter gradient, dkernel[i, j, c, d] = the sum over images n and
    positions (h, w) of padded_x[n, h + i, w + j, c] * dy[n, h, w, d]: a
    'VALID' convolution of x with its images and channels swapped ([c, height,
    width, n], padded as 'SAME' pads x) by dy as the kernel ([height, width,
    n, d]), giving [c, i, j, d]."""
    with tf.name_scope('filter_gradient'):
        pads = [[0, 0]] + _same_padding(kernel) + [[0, 0]]
        by_channel = tf.nn.conv2d(tf.transpose(x, [3, 1, 2, 0]),
                                  tf.transpose(dy, [1, 2, 0, 3]), 1, pads)
        dkernel = tf.transpose(by_channel, [1, 2, 0, 3])
        dkernel.set_shape(kernel.shape)      # (known even where x's height and width are not)
        return dkernel


def conv2d_by_taps(x, kernel):
    """tf.nn.conv2d(x, kernel, 1, 'SAME') for a 3x3 kernel and a map of known
    height and width: the same forward and input gradient, its filter
    gradient taken as nine matrix products (_conv2d_gradient_by_taps).

    Args:
      x: [batch, height, width, channels in], height and width known.
      kernel: [3, 3, channels in, channels out], x's type.

    Returns:
      [batch, height, width, channels out].
    """
    return _conv2d_with_gradient(x, kernel, 'Conv2DByTaps')


def _conv2d_gradient_by_taps(op, dy):
    """The gradients of conv2d_by_taps: the input's as TensorFlow takes it;
    the filter's one matrix product per tap, the tap (i, j) getting the input
    shifted by (i, j) as [images * height * width, channels in], transposed,
    times the output gradient as [images * height * width, channels out].
    oneDNN's filter-gradient kernel with AMX is 2-5x slower on small maps,
    and its bfloat16 result errs 14x a correct rounding (BENCHMARKS.md)."""
    x, kernel = op.inputs
    dx = tf.nn.conv2d_backprop_input(tf.shape(x), kernel, dy, [1, 1, 1, 1], 'SAME')
    height, width = x.shape[1:3]
    channels_in, channels_out = kernel.shape[2:]
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    dy_rows = tf.reshape(dy, [-1, channels_out])
    taps = [tf.matmul(tf.reshape(padded[:, i:i + height, j:j + width], [-1, channels_in]),
                      dy_rows, transpose_a=True)
            for i in range(3) for j in range(3)]
    return dx, tf.reshape(tf.stack(taps), kernel.shape)


def _conv2d_with_gradient(x, kernel, gradient_name):
    """tf.nn.conv2d(x, kernel, 1, 'SAME'), its gradients the function
    registered as gradient_name (_register_gradients)."""
    with tf.get_default_graph().gradient_override_map({'Conv2D': gradient_name}):
        return tf.nn.conv2d(x, kernel, 1, 'SAME')


def _register_gradients():
    """Registers the two gradients (TensorFlow takes a name once a process:
    a reload of this module finds them registered and skips them)."""
    for name, gradient in [('Conv2DByTaps', _conv2d_gradient_by_taps),
                           ('Conv2DByForward', _conv2d_gradients_by_forward)]:
        try:
            tf.RegisterGradient(name)(gradient)
        except KeyError:
            pass


_register_gradients()
