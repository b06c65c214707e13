"""A GPU speed-run recipe for CIFAR-10 on a laptop-class CPU, in TensorFlow 1 graph mode.

The articles stop at 78-83% after an hour. The GPU speed-runs show what a
good recipe does with far less compute (airbench94_muon: 94% in 2.6 seconds
on an A100; 0.283 PFLOP of training as counted here); this file is that
recipe, written out step by step so it can be read beside them; what it
reaches on a CPU, in what time, on which kind of CPU: BENCHMARKS.md,
"fast_cnn.py". Where each idea comes from:

* The default, `--recipe muon`: Keller Jordan's airbench94_muon.py
  (KellerJordan/cifar10-airbench, 94.01% in 8 epochs): the convolution
  filters trained by Muon, momentum whose update is orthogonalised by a few
  Newton-Schulz iterations (Keller Jordan et al., "Muon: an optimizer for
  hidden layers", 2024), the biases and the head by Nesterov SGD, batch
  2000, the learning rate falling linearly from the start, GELU, no weight
  averaging.
* `--recipe airbench94` (12 epochs of 1024 images a batch): airbench94
  ("94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv:2404.00498, 2024): Nesterov SGD for all, the batch-norm biases
  at 64x the learning rate, warm-up then linear decay, and lookahead weight
  averaging as airbench94 does it since its commit 74e145d (2024-03-26): from
  the first step, copied back into the network once, at the end.
* Both: the network, its widths (64/256/256), alternating flips and
  multi-crop test-time augmentation: airbench94. A first layer initialised
  from the whitening (ZCA-like) eigenvectors of 2x2 patches and then frozen:
  tysam-code's hlb-CIFAR10, after Coates & Ng (2011). Batch norm with frozen
  scales, Nesterov SGD with a large batch, label smoothing (Szegedy et al.
  2016), weight decay decoupled from the learning rate, random 2-pixel
  translations: David Page, "How to train your ResNet" (2018).
* This project's, for CPUs: oneDNN's kernels asked for on every x86-64 CPU
  (1.2x faster on an AVX2 AMD EPYC, where TensorFlow picks its own:
  cli.prepare_tensorflow); in bfloat16 training, the filter gradients of the
  convolutions on 7x7 and 3x3 maps taken as nine matrix products, faster
  with AMX and more exact than oneDNN's kernel; in float32 training on
  TensorFlow's own kernels, both gradients taken as forward convolutions,
  the input's 2x and the filter's 1.1x faster than Eigen's on that EPYC
  (both in convolutions.py).

    python fast_cnn.py                      # the default recipe, muon, 8 epochs (9 in fp32)
    python fast_cnn.py --epochs 6           # less accuracy in less time
    python fast_cnn.py --precision fp32     # float32 even where bfloat16 is fast
    python fast_cnn.py --recipe airbench94  # Nesterov SGD for all, 12 epochs of 1024

`--data-dir` may also name a folder of your own pictures (one sub-folder per
class, or train/ and test/ holding them; image_folders.py) at any
`--image-size` (the last pooling takes the maximum over what is left), with
the per-channel statistics and the whitening computed from its training
pictures; or CIFAR-100 (`--dataset cifar100`).

Each run writes `--train-dir/fast-<timestamp>/`: the final checkpoint,
model.json (for predict.py), history.json and result.json (and split.json
for a folder: which pictures trained and which tested).
"""

import argparse
import math
import os
import time

import numpy as np

import cli  # (no TensorFlow inside: it sets how TensorFlow loads)
cli.prepare_tensorflow()  # a quiet start; oneDNN's kernels on every x86-64 CPU
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import convolutions  # noqa: E402
import data_helpers  # noqa: E402
import run_folders  # noqa: E402
import sessions  # noqa: E402
import towers  # noqa: E402
from errors import DataError  # noqa: E402

tf.disable_eager_execution()  # TensorFlow 1 style: build a graph, then run it

# Two recipes on the same network and data pipeline (`--recipe`).
#
# airbench94: its hyper-parameters. Its learning rate and weight decay are
# given per 1024 images of a *summed* loss with the momentum's gain divided
# out; `learning_rates()` turns them into learning rates for our mean loss.
# Two changes, both measured (BENCHMARKS.md): ReLU instead of GELU, because
# oneDNN fuses ReLU into batch norm and a GELU step is 20-28% slower on a
# CPU; and 12 epochs instead of 9.9, which buy back GELU's accuracy in less time.
#
# muon: airbench94_muon.py (same repository, as at f1c599c, 2025-03): the convolution
# filters trained by Muon (momentum, then the update orthogonalised), the
# biases and the head by Nesterov SGD, 8 epochs of batch 2000, the learning
# rate falling linearly to 0, no weight averaging. One change, measured: in
# float32 (where `auto` picks it: CPUs without bfloat16) a ninth epoch, without
# which float32 lands just under 94%. Its SGD learning rates and
# weight decay are per image of a summed loss (multiplied by the batch for
# our mean loss); Muon's update does not depend on the gradient's scale.
RECIPES = {
    'airbench94': {
        'epochs': 12,
        'epochs_fp32': 12,          # float32 is as accurate here (BENCHMARKS.md)
        'batch_size': 1024,
        'optimizer': 'sgd',
        'lr': 11.5,                 # per 1024 images
        'momentum': 0.85,
        'weight_decay': 0.0153,     # per 1024 images, decoupled from the learning rate
        'bias_scaler': 64.0,        # batch-norm biases learn 64x faster (no extra decay)
        'warmup': 0.23,             # fraction of steps warming up from 0.2x to 1x, then
        'lr_end': 0.07,             # ... down to this
        'lookahead_every': 5,       # steps between weight-averaging updates (from the first)
        'activation': 'relu',
        'scaling_factor': 1 / 9,    # the logits are scaled down by this
        'head_init_std': None,      # None: PyTorch's default uniform initialisation
        'label_smoothing': 0.2,
        'whiten_bias_epochs': 3,    # the whitening layer's bias trains this long, then freezes
        'whiten_schedule': 'main',  # on the schedule of the others
        'translate': 2,             # pixels of random translation (reflect-padded)
        'widths': (64, 256, 256),
        'batchnorm_momentum': 0.6,  # weight of the old value in the moving averages
        'tta_level': 2,             # 0 none, 1 mirror, 2 mirror + 1-pixel translations
    },
    'muon': {
        'epochs': 8,                # airbench94_muon's; ours in bfloat16
        'epochs_fp32': 9,           # in float32 one more: 8 gave 93.98% (eight seeds), 9 94.13%
        'batch_size': 2000,
        'optimizer': 'muon',
        'filter_lr': 0.24,          # Muon, for the convolution filters
        'filter_momentum': 0.6,
        'newton_schulz_steps': 3,
        'bias_lr': 0.053,           # SGD, per image: batch-norm and whitening biases
        'head_lr': 0.67,            # SGD, per image: the linear head
        'momentum': 0.85,           # SGD's
        'weight_decay': 2e-6,       # per image, decoupled; not on the filters
        'warmup': 0.0,              # the learning rate falls linearly from 1x
        'lr_end': 0.0,              # ... to 0
        'lookahead_every': None,    # no weight averaging
        'activation': 'gelu',
        'scaling_factor': 1 / 256,  # the logits divided by the head's width
        'head_init_std': 1.0,       # the head's weights start with unit variance
        'label_smoothing': 0.2,
        'whiten_bias_epochs': 3,
        'whiten_schedule': 'linear',    # its learning rate falls to 0 over those epochs
        'translate': 2,
        'widths': (64, 256, 256),
        'batchnorm_momentum': 0.6,
        'tta_level': 2,
    },
}
DEFAULT_RECIPE = 'muon'
# Per-channel mean and standard deviation of the official CIFAR-10 training
# pixels (in [0, 1]), as airbench94 uses them; the JPEG copy's differ by < 0.002.
# A folder of your own pictures gets its own, from its training pictures.
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
IMAGE_SIZE, CHANNELS, CLASSES = 32, 3, 10       # CIFAR-10's; a folder's may differ
WHITEN_PATCH, WHITEN_SAMPLES = 2, 5000
PROGRESS_IMAGES = 2000      # test images scored after each epoch, for progress only
MAX_EPOCHS = 1000
MAX_STEPS = 10_000_000


# -----------------------------------------------------------------------------
# Data: CIFAR-10 (or your pictures) as uint8, normalised per channel in the graph
# -----------------------------------------------------------------------------

def normalize(images, stats=(CIFAR_MEAN, CIFAR_STD)):
    """[0, 1] pixels -> zero mean, unit variance per channel, given the
    training set's (mean, std) per channel."""
    mean, std = stats
    return (images - mean) / std


def channel_stats(images):
    """(mean, std) per channel of uint8 images [N, H, W, 3], as pixels in
    [0, 1], float32 (summed in float64, in chunks)."""
    total, squares, count = np.zeros(CHANNELS), np.zeros(CHANNELS), 0
    for start in range(0, len(images), 1000):
        chunk = images[start:start + 1000].reshape(-1, CHANNELS).astype(np.float64) / 255
        total += chunk.sum(0)
        squares += (chunk ** 2).sum(0)
        count += len(chunk)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def whitening_filters(images, eps=5e-4):
    """The first layer's weights: the whitening transform of 2x2 patches.

    The patches' (uncentred) covariance C = V diag(e) V^T; each eigenvector
    divided by sqrt(eigenvalue) is a filter whose outputs have unit variance
    and are uncorrelated with the others. The filters come in +/- pairs so
    the activation after them loses no information.

    Args:
      images: [N, 32, 32, 3] float32, already normalised.
      eps: added to the eigenvalues, so near-zero directions are not blown up.

    Returns:
      [2, 2, 3, 24] float32 convolution filters (HWIO).
    """
    k = WHITEN_PATCH
    n, height, width, channels = images.shape
    # Every 2x2 patch (stride 1) as a row of 12 numbers in H, W, C order
    covariance, count = np.zeros((k * k * channels,) * 2), 0
    for start in range(0, n, 500):     # in chunks: all patches at once take ~0.5 GB
        chunk = images[start:start + 500]
        patches = np.stack([chunk[:, i:height - k + 1 + i, j:width - k + 1 + j, :]
                            for i in range(k) for j in range(k)], axis=3)
        patches = patches.reshape(-1, k * k * channels).astype(np.float64)
        covariance += patches.T @ patches
        count += len(patches)
    covariance /= count
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = eigenvectors / np.sqrt(eigenvalues + eps)          # one per column
    filters = np.concatenate([filters, -filters], axis=1)
    return filters.reshape(k, k, channels, 2 * k * k * channels).astype(np.float32)


def augment(padded_images, flip, size=IMAGE_SIZE):
    """Training augmentation, per image, over the whole batch.

    Args:
      padded_images: [B, 32 + 2t, 32 + 2t, 3], reflect-padded by t pixels.
      flip: [B] bool, which images to mirror (alternating flips: see main()).
      size: the images' side without the padding (32 for CIFAR-10).

    Returns:
      [B, 32, 32, 3]: each image mirrored as asked and shifted by a random
      -t..t pixels in each direction.
    """
    batch = tf.shape(padded_images)[0]
    room = padded_images.shape[1] - size
    images = tf.where(flip, tf.reverse(padded_images, [2]), padded_images)
    if room:
        offsets = tf.random.uniform([batch, 2], 0, room + 1, dtype=tf.int32)
        window = tf.range(size)
        rows = offsets[:, :1] + window                          # [B, 32]
        columns = offsets[:, 1:] + window
        images = tf.gather(images, rows, axis=1, batch_dims=1)
        images = tf.gather(images, columns, axis=2, batch_dims=1)
    return images


# -----------------------------------------------------------------------------
# The network: inference()
# -----------------------------------------------------------------------------

def _uniform_dirac(shape, dtype=tf.float32, partition_info=None):
    """PyTorch's default conv initialisation, with the first in_channels
    filters set to the identity (airbench94: the block starts near a skip)."""
    height, width, channels_in, channels_out = shape
    bound = 1 / math.sqrt(height * width * channels_in)
    keep = np.ones(shape, np.float32)
    keep[..., :channels_in] = 0
    identity = np.zeros(shape, np.float32)
    identity[height // 2, width // 2, np.arange(channels_in), np.arange(channels_in)] = 1
    return tf.random.uniform(shape, -bound, bound, dtype) * keep + identity


def conv(x, filters, name, is_training=False):
    """3x3 'same' convolution, no bias (batch norm follows)."""
    kernel = tf.get_variable(name + '/kernel', [3, 3, x.shape[-1], filters],
                             initializer=_uniform_dirac)
    kernel = tf.cast(kernel, x.dtype)
    if not is_training:
        return tf.nn.conv2d(x, kernel, 1, 'SAME')
    # Each only where measured faster (BENCHMARKS.md, "The filter gradient as
    # nine matrix products", "On a real AVX2 CPU", "The filter gradient is a
    # convolution too" and "oneDNN's kernels on every x86-64 CPU"; on CPUs: a
    # GPU was never measured): in bfloat16, the filter gradient by taps on
    # maps of 8x8 or less; in float32 on TensorFlow's own (Eigen) kernels,
    # both gradients by forward convolutions (measured on an AVX2 EPYC)
    height, width = x.shape[1:3]
    if x.dtype == tf.bfloat16:
        if height is not None and width is not None and max(height, width) <= 8:
            return convolutions.conv2d_by_taps(x, kernel)
        return tf.nn.conv2d(x, kernel, 1, 'SAME')
    if convolutions.onednn_kernels():
        return tf.nn.conv2d(x, kernel, 1, 'SAME')
    return convolutions.conv2d_by_forward(x, kernel)


def gelu(x):
    """GELU, exact (Hendrycks & Gimpel 2016): x * Phi(x), as PyTorch's nn.GELU.
    (tf.compat.v1.nn has none; TensorFlow 2's is this same formula.)

    Its five elementwise ops, and the ten of its gradient, are compiled by
    XLA into one loop each: TensorFlow fuses only ReLU into batch norm on a
    CPU, and unfused GELU took 45% of a training step here (BENCHMARKS.md).
    They are one function, so every activation of a shape and type calls the
    same compiled loop (one per tower: each has its own device), and XLA
    compiles it once, not once per layer: a run's first step 4 s sooner.
    1/sqrt(2) is a float32 constant cast to x's type: written in bfloat16 it
    would stay rounded (0.70703) in an exported float32 model, where TFLite's
    converter, which has no Erf, then no longer recognises GELU. (Computing
    all of GELU in float32 instead made a training step 16% slower.)
    """
    graph = x.graph
    if not hasattr(graph, 'fast_cnn_gelu'):
        # One function per graph, kept by the graph: a tf.function keeps every
        # graph it was called in, so a single global one would keep them all
        graph.fast_cnn_gelu = tf.function(gelu_formula, jit_compile=True, autograph=False)
    with tf.name_scope('gelu'):
        return graph.fast_cnn_gelu(x)


def gelu_formula(x):
    rsqrt2 = tf.cast(tf.constant(1 / math.sqrt(2), tf.float32), x.dtype)
    return 0.5 * x * (1 + tf.math.erf(x * rsqrt2))


def batch_norm(x, is_training, name, momentum):
    """Batch norm with its scale fixed at 1 and only the bias learnt.

    In training it normalises with the batch statistics and moves the moving
    averages towards them, keeping `momentum` of the old value (the update
    ops go to UPDATE_OPS); in inference it uses the moving averages. (Its
    epsilon is 1e-5: TensorFlow's fused kernel allows no less, where
    airbench94_muon asks for 1e-12.)
    """
    channels = x.shape[-1]
    with tf.variable_scope(name):
        bias = tf.get_variable('bias', [channels], initializer=tf.zeros_initializer())
        moving_mean = tf.get_variable('moving_mean', [channels], trainable=False,
                                      initializer=tf.zeros_initializer())
        moving_variance = tf.get_variable('moving_variance', [channels], trainable=False,
                                          initializer=tf.ones_initializer())
    y, mean, variance = tf.nn.fused_batch_norm(
        x, tf.ones([channels]), bias, mean=moving_mean, variance=moving_variance,
        epsilon=1e-5, is_training=is_training,
        exponential_avg_factor=1 - momentum if is_training else 1.0)
    if is_training:
        tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, tf.assign(moving_mean, mean))
        tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, tf.assign(moving_variance, variance))
    return y


def inference(images, whitening, is_training, hyp, precision='fp32',
              stats=(CIFAR_MEAN, CIFAR_STD), num_classes=CLASSES):
    """Builds the network up to its logits; call again to share the weights.

    Args:
      images: [batch, 32, 32, 3] float32 pixels in [0, 1] (or another square
        size: the last pooling takes the maximum over whatever is left).
      whitening: [2, 2, 3, 24] first-layer filters from whitening_filters().
      is_training: Python bool: batch statistics (and their moving-average
        updates) in training, moving averages in inference.
      hyp: a recipe of RECIPES (widths, activation, head).
      precision: 'fp32', or 'bf16' to run convolutions, batch norm and
        activations in bfloat16 (the weights stay float32).
      stats: the training set's (mean, std) per channel (`normalize`).
      num_classes: the logits' width.

    Returns:
      logits: [batch, num_classes] float32.
    """
    dtype = tf.bfloat16 if precision == 'bf16' else tf.float32
    activation = {'relu': tf.nn.relu, 'gelu': gelu}[hyp['activation']]
    momentum = hyp['batchnorm_momentum']
    with tf.variable_scope('net', reuse=tf.AUTO_REUSE):
        x = tf.cast(normalize(images, stats), dtype)

        # The whitening layer: fixed 2x2 filters, a learnt bias (for a while)
        with tf.variable_scope('whiten'):
            kernel = tf.get_variable('kernel', initializer=whitening, trainable=False)
            bias = tf.get_variable('bias', [whitening.shape[-1]],
                                   initializer=tf.zeros_initializer())
            x = tf.nn.conv2d(x, tf.cast(kernel, dtype), 1, 'VALID') + tf.cast(bias, dtype)
            x = activation(x)

        # Three blocks: conv, pool, norm, activation, conv, norm, activation
        for block, width in enumerate(hyp['widths'], 1):
            with tf.name_scope('block%d' % block):
                name = 'block%d/' % block
                x = conv(x, width, name + 'conv1', is_training)
                x = tf.nn.max_pool2d(x, 2, 2, 'VALID')
                x = activation(batch_norm(x, is_training, name + 'norm1', momentum))
                x = conv(x, width, name + 'conv2', is_training)
                x = activation(batch_norm(x, is_training, name + 'norm2', momentum))

        # Global max-pool (3x3 left), a linear layer without bias, scaled down.
        # Uniform weights: PyTorch's default bound, or the bound that gives them
        # the recipe's standard deviation (a uniform on +-b has std b / sqrt(3))
        with tf.name_scope('head'):
            x = tf.reduce_max(x, axis=[1, 2])
            std = hyp['head_init_std']
            bound = 1 / math.sqrt(x.shape[-1]) if std is None else std * math.sqrt(3)
            weights = tf.get_variable('head/weights', [x.shape[-1], num_classes],
                                      initializer=tf.random_uniform_initializer(-bound, bound))
            logits = tf.matmul(x, tf.cast(weights, dtype))
            return tf.cast(logits, tf.float32) * hyp['scaling_factor']


def tta_logits(images, network, level):
    """Test-time augmentation: the mean of the logits over several views.

    Args:
      images: [batch, 32, 32, 3] in [0, 1].
      network: images -> logits, in inference mode.
      level: 0 the images alone; 1 also their mirror images; 2 also mirrored
        pairs of the images moved one pixel up-left and down-right
        (reflect-padded), weighted as airbench94 does.

    Returns:
      [batch, 10] logits.
    """
    def mirrored(x):
        return 0.5 * network(x) + 0.5 * network(tf.reverse(x, [2]))

    if level == 0:
        return network(images)
    if level == 1:
        return mirrored(images)
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode='REFLECT')
    size = images.shape[1]
    shifted = [padded[:, :size, :size], padded[:, 2:, 2:]]
    return 0.5 * mirrored(images) + 0.25 * mirrored(shifted[0]) + 0.25 * mirrored(shifted[1])


# -----------------------------------------------------------------------------
# Loss, optimiser, weight averaging, evaluation
# -----------------------------------------------------------------------------

def loss(logits, labels, label_smoothing):
    """Cross-entropy against labels smoothed towards the uniform distribution.

    (1 - s) * CE(one-hot) + s * CE(uniform): the first term is the usual
    sparse cross-entropy, the second the mean of -log p over the classes.
    """
    with tf.name_scope('loss'):
        hard = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        uniform = -tf.reduce_mean(tf.nn.log_softmax(logits), axis=1)
        return tf.reduce_mean((1 - label_smoothing) * hard + label_smoothing * uniform,
                              name='smoothed_cross_entropy')


def parameter_groups(variables):
    """The recipes' parameter groups, by variable name.

    Returns:
      {'biases': the batch-norm biases, 'whiten': the whitening layer's bias,
       'filters': the convolution kernels, 'head': the linear head}.
    """
    groups = {'biases': [], 'whiten': [], 'filters': [], 'head': []}
    for var in variables:
        if '/norm' in var.op.name:
            groups['biases'].append(var)
        elif var.op.name.startswith('net/whiten'):
            groups['whiten'].append(var)
        elif var.op.name.startswith('net/head'):
            groups['head'].append(var)
        else:
            groups['filters'].append(var)
    return groups


def learning_rates(hyp, batch_size):
    """Each group's learning rate for our mean loss, and the weight decay per step.

    airbench94 divides its learning rate by 1024 * (1 + 1 / (1 - momentum))
    for a loss summed over the batch; muon gives SGD's per image of a summed
    loss. For our mean loss, multiply by the batch. Muon's own learning rate
    (the filters') needs no change: its step does not depend on the
    gradient's scale.

    Returns:
      ({group name: learning rate}, decay): one SGD step shrinks each weight
      by lr_scale * decay * w, whatever its group's learning rate.
    """
    if hyp['optimizer'] == 'muon':
        bias_lr = hyp['bias_lr'] * batch_size
        return ({'biases': bias_lr, 'whiten': bias_lr, 'head': hyp['head_lr'] * batch_size,
                 'filters': hyp['filter_lr']}, hyp['weight_decay'] * batch_size)
    kilostep_scale = 1024 * (1 + 1 / (1 - hyp['momentum']))
    lr = hyp['lr'] * batch_size / kilostep_scale
    decay = hyp['weight_decay'] * batch_size / kilostep_scale
    return {'biases': lr * hyp['bias_scaler'], 'whiten': lr, 'filters': lr, 'head': lr}, decay


def orthogonalize(matrix, steps, dtype=tf.float32):
    """Muon's Newton-Schulz iteration: roughly U V^T, where matrix = U S V^T.

    X <- a X + (b X X^T + c (X X^T)^2) X, from X = matrix / |matrix|: an odd
    polynomial in X, so it keeps the singular vectors and maps each singular
    value s to p(s). The coefficients (3.4445, -4.7750, 2.0315; Keller Jordan,
    airbench94_muon.py and "Muon", 2024) push small values up fast; after 3
    steps they land somewhere around 0.5-1.5 (airbench's comment; 0.6-1.25 in
    the tests) rather than at exactly 1, which trains as well. Only matrix
    products: cheap next to the convolutions.

    Args:
      matrix: [m, n] float32.
      steps: iterations.
      dtype: the products' type (bfloat16 as airbench does, or float32).

    Returns:
      [m, n] float32.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = tf.cast(matrix / (tf.norm(matrix) + 1e-7), dtype)    # singular values <= 1
    wide = matrix.shape[0] <= matrix.shape[1]
    if not wide:                          # X X^T the smaller Gram matrix
        x = tf.transpose(x)
    for _ in range(steps):
        gram = tf.matmul(x, x, transpose_b=True)
        x = a * x + tf.matmul(b * gram + c * tf.matmul(gram, gram), x)
    return tf.cast(x if wide else tf.transpose(x), tf.float32)


def muon(gradients, lr, momentum, steps, dtype=tf.float32):
    """Muon on convolution kernels, as airbench94_muon.py takes its step.

    Nesterov momentum on the gradient; the kernel rescaled to a norm of
    sqrt(its number of filters); then a step of `lr` along the update
    orthogonalised as a matrix of one column per filter (HWIO kernels
    reshaped to [h * w * in, out]: PyTorch's [out, in * h * w] up to a
    transpose and an order of rows, which orthogonalisation does not mind).

    Args:
      gradients: [(gradient, kernel variable)].
      lr: scalar, the learning rate of this step.
      momentum: Nesterov momentum.
      steps: Newton-Schulz iterations.
      dtype: for orthogonalize().

    Returns:
      The op that updates the kernels.
    """
    updates = []
    for gradient, var in gradients:
        buffer = tf.Variable(tf.zeros(var.shape), trainable=False,
                             name=var.op.name.replace('/', '_') + '_momentum')
        buffer_now = tf.assign(buffer, momentum * buffer + gradient)
        direction = gradient + momentum * buffer_now
        filters = int(var.shape[-1])
        update = orthogonalize(tf.reshape(direction, [-1, filters]), steps, dtype)
        rescaled = var * (math.sqrt(filters) / tf.norm(var))
        updates.append(tf.assign(var, rescaled - lr * tf.reshape(update, var.shape)))
    return tf.group(*updates)


def training(loss, hyp, batch_size, lr_scale, whiten_lr_scale, precision='fp32',
             tower_gradients=None):
    """One step of the recipe's optimisers; batch-norm averages updated with it.

    airbench94: Nesterov SGD for every group, the batch-norm biases 64x
    faster. muon: Muon for the convolution filters, Nesterov SGD for the
    rest. SGD's weight decay is decoupled: added to the gradient divided by
    the group's learning rate, which the optimiser multiplies back in.

    Args:
      loss: the batch's mean loss, from `loss()` (one backward pass for all
        groups).
      hyp: a recipe of RECIPES.
      batch_size: images per step (SGD's learning rates grow with it).
      lr_scale: scalar tensor, the schedule's factor for this step.
      whiten_lr_scale: scalar tensor, the whitening bias's factor (0 once it
        freezes: a zero learning rate freezes it, momentum and all).
      precision: 'bf16' runs Muon's matrix products in bfloat16.
      tower_gradients: with several devices, [(gradient, variable)] averaged
        over the towers (towers.py), used instead of the loss's own.

    Returns:
      The op that takes one step (and updates the batch-norm averages).
    """
    gradients = tower_gradients
    if gradients is None:            # one device: the loss's own gradients
        variables = tf.trainable_variables()
        gradients = list(zip(tf.gradients(loss, variables), variables))
    group_lr, decay = learning_rates(hyp, batch_size)
    variables = [v for _, v in gradients]
    gradients = {v.op.name: g for g, v in gradients}
    train_ops = []
    for name, group in parameter_groups(variables).items():
        if not group:
            continue
        with tf.name_scope(name):
            lr = group_lr[name] * (whiten_lr_scale if name == 'whiten' else lr_scale)
            if name == 'filters' and hyp['optimizer'] == 'muon':
                train_ops.append(muon(
                    [(gradients[v.op.name], v) for v in group], lr, hyp['filter_momentum'],
                    hyp['newton_schulz_steps'], tf.bfloat16 if precision == 'bf16' else tf.float32))
                continue
            pairs = [(gradients[v.op.name] + (decay / group_lr[name]) * v, v) for v in group]
            optimizer = tf.train.MomentumOptimizer(lr, hyp['momentum'], use_nesterov=True)
            train_ops.append(optimizer.apply_gradients(pairs))
    with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
        return tf.group(*train_ops, name='train_step')


def lookahead(variables):
    """Weight averaging (lookahead): an average that pulls the weights back.

    Every few steps the average moves towards the weights, then the weights
    are set to the average: avg += (1 - decay) * (w - avg); w = avg. With
    decay growing from 0 to ~0.77 over the run, late steps are averaged more.

    Returns:
      (start op: copies the weights into the averages, run once after
      initialisation; update op; its decay placeholder). Run the update with
      decay 1 at the end to leave the averaged weights in the network.
    """
    decay = tf.placeholder(tf.float32, [], name='lookahead_decay')
    starts, updates = [], []
    with tf.name_scope('lookahead'):
        for var in variables:
            average = tf.Variable(tf.zeros(var.shape), trainable=False,
                                  name=var.op.name.replace('/', '_') + '_average')
            starts.append(tf.assign(average, var))
            new = average + (1 - decay) * (var - average)
            updates += [tf.assign(average, new), tf.assign(var, new)]
    return tf.group(*starts), tf.group(*updates, name='lookahead_update'), decay


def lookahead_decay(step, total_steps, every):
    """The decay of the weight-averaging update after `step`, None between updates.

    An update every `every` steps, from the first step to the last
    (airbench94 since its commit 74e145d); the decay grows with the cube of
    the progress, so the early weights are soon forgotten and the last ones
    averaged strongly.
    """
    if step % every:
        return None
    return 0.95 ** every * (step / total_steps) ** 3


def evaluation(logits, labels):
    """Number of images whose top class is the label (a count, as mnist.py's
    evaluation(): the loop adds them up over an epoch)."""
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.int32))


def lr_schedule(hyp, total_steps):
    """Per-step learning-rate factor: warm up 0.2 -> 1 (airbench94: over the
    first 23% of the steps; muon: not at all), then fall linearly to lr_end."""
    warmup = int(total_steps * hyp['warmup'])
    steps = np.arange(total_steps + 1)
    return np.where(steps < warmup,
                    np.interp(steps, [0, max(warmup, 1)], [0.2, 1.0]),
                    np.interp(steps, [warmup, total_steps], [1.0, hyp['lr_end']]))


def whiten_lr_factor(hyp, step, whiten_steps, schedule):
    """The whitening bias's learning-rate factor at `step`: for its first
    `whiten_steps` steps the main schedule's (airbench94) or falling
    linearly from 1 to 0 (muon); then 0, frozen."""
    if step >= whiten_steps:
        return 0.0
    return 1 - step / whiten_steps if hyp['whiten_schedule'] == 'linear' else schedule[step]


# -----------------------------------------------------------------------------
# The runner
# -----------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='A fast-training CNN for CIFAR-10 (airbench recipes, graph mode).')
    parser.add_argument('--recipe', choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                        help='muon: airbench94_muon, Muon for the filters, 8 epochs of '
                             '2000 (9 in fp32); airbench94: Nesterov SGD for all, 12 '
                             'epochs of 1024, weight averaging (default: %(default)s)')
    parser.add_argument('--epochs', type=cli.positive_float,
                        help="passes over the training set, fractions allowed; fewer "
                             "trade accuracy for time (default: the recipe's: muon 8 in bf16 "
                             "and 9 in fp32, airbench94 12)")
    parser.add_argument('--batch-size', type=cli.positive_int,
                        help="images per step; the learning rates scale with it "
                             "(default: the recipe's: 2000 muon, 1024 airbench94)")
    cli.add_precision_flag(parser, 'auto', note=' (measured with airbench94: 1.45x, '
                                                'no less accurate)')
    parser.add_argument('--tta', type=int, choices=[0, 1, 2],
                        help='test-time augmentation: 0 none, 1 mirror, 2 mirror and '
                             "translations (default: the recipe's, 2)")
    cli.add_common_flags(parser, train_dir='runs', pictures=True)
    cli.add_dataset_flags(parser)
    cli.add_num_devices_flag(parser)
    args = parser.parse_args(argv)
    hyp = RECIPES[args.recipe]
    args.batch_size_given = args.batch_size is not None   # (else fitted to a small folder)
    for flag, key in (('batch_size', 'batch_size'), ('tta', 'tta_level')):
        if getattr(args, flag) is None:
            setattr(args, flag, hyp[key])
    args.epochs_note = ''
    if args.epochs is None:     # the recipe's, for the precision this run will train in
        fp32 = cli.precision(args.precision) == 'fp32'
        args.epochs = hyp['epochs_fp32'] if fp32 else hyp['epochs']
        if args.epochs != hyp['epochs']:
            args.epochs_note = ', %d more in fp32' % (args.epochs - hyp['epochs'])
    cli.check_num_devices(parser, args)
    if args.epochs > MAX_EPOCHS:    # the schedule holds one number per step
        parser.error('argument --epochs: at most %d, not %g' % (MAX_EPOCHS, args.epochs))
    return args


def count_steps(args, train_count):
    """(steps per epoch, total steps): the last partial batch of an epoch is
    dropped, and a fraction of an epoch is rounded up to a whole step."""
    steps_per_epoch = train_count // args.batch_size
    total_steps = max(1, math.ceil(args.epochs * steps_per_epoch))
    if total_steps > MAX_STEPS:     # the schedule holds one number per step
        raise DataError('--epochs %g of --batch-size %d is %d steps; at most %d'
                        % (args.epochs, args.batch_size, total_steps, MAX_STEPS))
    return steps_per_epoch, total_steps


def training_flops_per_image(widths, size=IMAGE_SIZE, classes=CLASSES):
    """Floating-point operations to train on one image (2 per multiply-add).

    Forward: the whitening layer, the six 3x3 convolutions at their output
    sizes (for 32x32 images: 31, 15; 15, 7; 7, 3 pixels square) and the
    head. Backward: twice
    the forward (input and weight gradients), less the whitening layer,
    which needs neither. Batch norm, pooling and activations are left out.
    """
    channels = 2 * CHANNELS * WHITEN_PATCH ** 2
    side = size - WHITEN_PATCH + 1
    whiten = 2 * side * side * WHITEN_PATCH ** 2 * CHANNELS * channels
    convolutions = 0
    for width in widths:
        convolutions += 2 * side * side * 9 * channels * width      # conv1, before its pool
        side //= 2
        convolutions += 2 * side * side * 9 * width * width         # conv2
        channels = width
    forward = whiten + convolutions + 2 * widths[-1] * classes
    return forward + 2 * (forward - whiten)


def load_data(args, translate):
    """CIFAR-10, or a folder of your own pictures, as this recipe wants it.

    Returns:
      A namespace: padded_train uint8 [50000, 36, 36, 3], the training
      images (4x smaller than float) reflect-padded once for the random
      translations; train_labels; test_images float32 [10000, 32, 32, 3] in
      [0, 1]; test_labels; stats, the (mean, std) per channel (CIFAR-10's
      published ones, or the folder's training pictures'); whitening, the
      first layer's filters from the first 5000 training images; data_sets,
      what data_helpers.load_images returned (classes, and a folder's split).
    """
    data_sets = data_helpers.load_images(args.data_dir, args.image_size, args.crop,
                                         args.test_split, args.seed, args.dataset, args.labels)
    train_images = data_sets['images_train']
    stats = ((CIFAR_MEAN, CIFAR_STD) if data_sets['dataset'] == 'cifar10'
             else channel_stats(train_images))
    padded_train = np.pad(train_images, [(0, 0), (translate, translate),
                                         (translate, translate), (0, 0)], mode='reflect')
    sample = normalize(train_images[:WHITEN_SAMPLES].astype(np.float32) / 255, stats)
    return argparse.Namespace(
        padded_train=padded_train, train_labels=data_sets['labels_train'],
        test_images=data_sets['images_test'].astype(np.float32) / 255,
        test_labels=data_sets['labels_test'], stats=stats,
        whitening=whitening_filters(sample), data_sets=data_sets)


def build_graph(args, hyp, padded_train, train_labels, whitening,
                stats=(CIFAR_MEAN, CIFAR_STD), num_classes=CLASSES):
    """The training graph and, sharing its weights, the evaluation graph.

    The images' size comes from padded_train; stats and num_classes are the
    data's (`load_data`; CIFAR-10's by default).

    Returns:
      A namespace of what the loop runs: sampler, flip, lr_scale,
      whiten_lr_scale (the fed inputs of a step), loss, train_step,
      train_correct, the lookahead's average_start, average_update and
      average_decay (None where the recipe averages no weights); images and
      labels (evaluation's inputs) with their plain_predictions and
      tta_predictions; saver.
    """
    # Training batches: the padded uint8 set lives in the graph; each step
    # feeds the batch's indices and which images to mirror.
    sampler = data_helpers.InGraphSampler(padded_train, train_labels, args.batch_size)
    flip = tf.placeholder(tf.bool, [None], name='flip')
    lr_scale = tf.placeholder(tf.float32, [], name='lr_scale')
    whiten_lr_scale = tf.placeholder(tf.float32, [], name='whiten_lr_scale')
    size = padded_train.shape[1] - 2 * hyp['translate']

    # The training network: augmentation, the network, the loss; the
    # recipe's optimisers; the number of the batch's images predicted right
    if args.num_devices == 1:
        images = augment(tf.cast(sampler.images, tf.float32) / 255, flip, size)
        logits = inference(images, whitening, True, hyp, args.precision, stats, num_classes)
        loss_op = loss(logits, sampler.labels, hyp['label_smoothing'])
        net_variables = tf.global_variables(scope='net')   # weights, batch-norm averages
        train_step = training(loss_op, hyp, args.batch_size, lr_scale, whiten_lr_scale,
                              args.precision)
        train_correct = evaluation(logits, sampler.labels)
    else:
        # The same, once per device on its slice of the batch (towers.py),
        # the towers' gradients averaged into one step
        def training_tower(images, labels, tower_flip):
            logits = inference(augment(tf.cast(images, tf.float32) / 255, tower_flip, size),
                               whitening, True, hyp, args.precision, stats, num_classes)
            return (loss(logits, labels, hyp['label_smoothing']),
                    evaluation(logits, labels))

        loss_op, gradients, tower_correct = towers.tower_gradients(
            training_tower, [sampler.images, sampler.labels, flip],
            towers.devices(args.num_devices))
        net_variables = tf.global_variables(scope='net')
        train_step = training(loss_op, hyp, args.batch_size, lr_scale, whiten_lr_scale,
                              args.precision, tower_gradients=gradients)
        train_correct = tf.add_n(tower_correct)
    average_start = average_update = average_decay = None
    if hyp['lookahead_every']:
        average_start, average_update, average_decay = lookahead(net_variables)

    # Evaluation: images in [0, 1] fed in batches; the moving averages of
    # batch norm; test-time augmentation for the final score.
    images = tf.placeholder(tf.float32, [None, size, size, CHANNELS], name='images')
    labels = tf.placeholder(tf.int64, [None], name='labels')

    def network(x):
        return inference(x, whitening, False, hyp, args.precision, stats, num_classes)

    plain_logits = network(images)
    plain_predictions = tf.argmax(plain_logits, 1)
    # (without test-time augmentation, the plain network above: not built again)
    logits = tta_logits(images, network, args.tta) if args.tta else plain_logits
    tf.nn.softmax(logits, name='probabilities')     # the name predict.py looks for
    tf.nn.softmax(plain_logits, name='plain_probabilities')     # export.py's default
    return argparse.Namespace(
        sampler=sampler, flip=flip, lr_scale=lr_scale, whiten_lr_scale=whiten_lr_scale,
        loss=loss_op, train_step=train_step, train_correct=train_correct,
        average_start=average_start,
        average_update=average_update, average_decay=average_decay, images=images,
        labels=labels, plain_predictions=plain_predictions,
        tta_predictions=tf.argmax(logits, 1), saver=checkpoints.saver(net_variables))


def train_epoch(sess, ops, args, hyp, state, schedule, flips, rng):
    """One pass over the shuffled training set, weight averaging as it goes
    (where the recipe averages).

    `state` carries step and epoch across epochs; the run stops mid-epoch at
    the last step of the schedule.

    Returns:
      (mean loss, training accuracy) of the epoch.
    """
    train_count = len(flips)
    steps_per_epoch, total_steps = train_count // args.batch_size, len(schedule) - 1
    whiten_steps = hyp['whiten_bias_epochs'] * steps_per_epoch
    order = rng.permutation(train_count)
    sum_loss, correct, seen = 0.0, 0, 0
    for batch in range(steps_per_epoch):
        if state.step == total_steps:
            break
        indices = order[batch * args.batch_size:(batch + 1) * args.batch_size]
        _, batch_loss, batch_correct = sess.run(
            [ops.train_step, ops.loss, ops.train_correct],
            {ops.sampler.indices: indices, ops.flip: flips[indices],
             ops.lr_scale: schedule[state.step],
             ops.whiten_lr_scale: whiten_lr_factor(hyp, state.step, whiten_steps, schedule)})
        state.step += 1
        sum_loss += batch_loss * len(indices)
        correct += batch_correct
        seen += len(indices)
        if not hyp['lookahead_every']:
            continue
        decay = lookahead_decay(state.step, total_steps, hyp['lookahead_every'])
        if decay is not None:
            sess.run(ops.average_update, {ops.average_decay: decay})
    state.epoch += 1
    return sum_loss / seen, correct / seen


def do_eval(sess, ops, predictions, images, labels):
    """The accuracy of `predictions` (plain or with test-time augmentation)
    on a whole set, in batches.

    Args:
      sess: the session holding the trained network.
      ops: build_graph()'s namespace (the images and labels fed).
      predictions: ops.plain_predictions or ops.tta_predictions.
      images, labels: the set (or its first images, for progress).

    Returns:
      The fraction predicted right.
    """
    return sessions.evaluate(sess, predictions, ops.images, ops.labels, images,
                            labels)['accuracy']


def flop_text(flop):
    """A training's arithmetic as printed: '0.283 PFLOP' for CIFAR-10's
    default; a small folder's in TFLOP or GFLOP (not '0.000 PFLOP')."""
    for unit, scale in (('PFLOP', 1e15), ('TFLOP', 1e12)):
        if flop >= 0.01 * scale:
            return '%.3f %s' % (flop / scale, unit)
    return '%.3f GFLOP' % (flop / 1e9)


def print_progress(history, images_per_second, test_count):
    """The epoch's line: training loss and accuracy, progress on the test
    set (its first PROGRESS_IMAGES of `test_count`)."""
    scored = ('test acc (first %d)' % PROGRESS_IMAGES if test_count > PROGRESS_IMAGES
              else 'test acc')
    print('epoch {epoch:5.2f}  loss {loss:.4f}  train acc {accuracy:.4f}  {scored} '
          '{progress_accuracy:.4f}  {speed:4.0f} images/s  {elapsed:6.1f}s'.format(
              scored=scored, speed=images_per_second, **history.last()), flush=True)


def save_run(sess, ops, run_dir, state, history, result):
    """Fills the run folder: the final checkpoint, history, result."""
    checkpoints.save_checkpoint(ops.saver, sess, run_dir, state.step)
    history.save(run_dir)
    run_folders.write_json(os.path.join(run_dir, 'result.json'), result)
    print('Saved to {}'.format(run_dir))


def main(args):
    begin_time = time.time()
    chosen, args.precision = args.precision, cli.precision(args.precision)
    rng = sessions.fresh_graph(args.seed)   # the same seed gives the same run
    hyp = RECIPES[args.recipe]

    # Load the data (CIFAR-10, or a folder of your own pictures), and compute
    # the whitening filters from it
    data = load_data(args, hyp['translate'])
    test_images, test_labels = data.test_images, data.test_labels
    train_count = len(data.train_labels)
    size, classes = test_images.shape[1], data.data_sets['classes']
    cli.fit_batch_size(args, train_count, "the recipe's")
    cli.check_batch_size(args.batch_size, train_count)
    steps_per_epoch, total_steps = count_steps(args, train_count)

    # The run folder, created before training so a bad --train-dir costs nothing
    run_dir = run_folders.start_run_dir(
        args.train_dir, 'fast-', classes, data.data_sets['dataset'], 'nhwc',
        split=data_helpers.split_record(data.data_sets), script='fast_cnn',
        output_without_tta='plain_probabilities:0', channel_stats=data.stats,
        **data_helpers.picture_info(data.data_sets))
    print('Writing to {}'.format(run_dir))

    # The graph (only defined here; nothing is computed yet)
    ops = build_graph(args, hyp, data.padded_train, data.train_labels, data.whitening,
                      data.stats, len(classes))
    training_pflop = (total_steps * args.batch_size
                      * training_flops_per_image(hyp['widths'], size, len(classes)) / 1e15)
    print('fast_cnn: recipe {}, {} steps of {} ({} epochs{}, {}), {}, {:,} '
          'parameters'.format(args.recipe, total_steps, args.batch_size, args.epochs,
                              args.epochs_note,
                              flop_text(training_pflop * 1e15),
                              cli.precision_note(chosen, args.precision),
                              sum(int(np.prod(v.shape)) for v in tf.trainable_variables())),
          flush=True)

    # Run it. Alternating flips: each image gets a random mirror in the first
    # epoch, then the opposite of its previous one in every epoch after.
    schedule = lr_schedule(hyp, total_steps)
    first_flips = rng.random(train_count) < 0.5
    history = run_folders.History()
    with tf.Session(config=towers.session_config(args.num_devices)) as sess:
        sess.run(tf.global_variables_initializer())
        if ops.average_start is not None:
            sess.run(ops.average_start)       # the averages start at the initial weights
        ops.sampler.initialize(sess)
        train_start = time.time()
        state = argparse.Namespace(step=0, epoch=0)
        while state.step < total_steps:
            train_loss, train_accuracy = train_epoch(
                sess, ops, args, hyp, state, schedule, first_flips ^ bool(state.epoch % 2), rng)
            # Progress: without test-time augmentation, on the first 2000 test images
            history.record(epoch=state.step / steps_per_epoch, loss=train_loss,
                           accuracy=train_accuracy,
                           progress_accuracy=do_eval(sess, ops, ops.plain_predictions,
                                                     test_images[:PROGRESS_IMAGES],
                                                     test_labels[:PROGRESS_IMAGES]),
                           elapsed=time.time() - begin_time)
            print_progress(history, state.step * args.batch_size / (time.time() - train_start),
                           len(test_labels))

        # Leave the averaged weights in the network, then score the test set
        if ops.average_update is not None:
            sess.run(ops.average_update, {ops.average_decay: 1.0})
        train_seconds = time.time() - train_start
        plain = do_eval(sess, ops, ops.plain_predictions, test_images, test_labels)
        tta = (do_eval(sess, ops, ops.tta_predictions, test_images, test_labels) if args.tta
               else plain)          # (--tta 0: the same predictions, not scored again)
        total_seconds = time.time() - begin_time
        print('Test accuracy {:.4f} (without test-time augmentation {:.4f})'.format(tta, plain))
        print('Total time: {:.1f}s (training {:.1f}s, {:.0f} images/s, {} at {:.0f} '
              'GFLOP/s)'.format(total_seconds, train_seconds,
                                total_steps * args.batch_size / train_seconds,
                                flop_text(training_pflop * 1e15),
                                training_pflop * 1e6 / train_seconds), flush=True)
        save_run(sess, ops, run_dir, state, history, {
            'test_accuracy': tta, 'test_accuracy_without_tta': plain, 'recipe': args.recipe,
            'epochs': args.epochs, 'training_pflop': training_pflop,
            'steps': total_steps, 'batch_size': args.batch_size, 'precision': args.precision,
            'tta': args.tta, 'seed': args.seed, 'train_seconds': train_seconds,
            'total_seconds': total_seconds})
    return tta


if __name__ == '__main__':
    cli.exit_on_error(main, parse_args())
