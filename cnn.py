"""Convolutional networks for CIFAR-10, as the CNN articles build them, in graph mode.

* `--model augmented` (default): "Image Classification using Deep Neural
  Networks", whose pre-processing comes from Hvass-Labs' CIFAR-10 tutorial.
  Training images are randomly cropped to 24x24, flipped and colour-jittered
  inside the graph; 3 conv layers (5x5; 64, 64, 128 filters; each followed by
  2x2 max-pooling), 2 fully connected layers (256, 128), Adam 1e-4, batch 64,
  150,000 steps. Article: 78.4% (the Hvass tutorial: 79.3% after 15 h on a
  laptop CPU).
* `--model small`: "Identifying images using the universal workflow of
  machine learning": conv 16/32/64, dense 128, Adam, batch 128, 20 epochs,
  the last 20% of the training set held out. Article: 68%.
* `--model batchnorm`: the same article's batch-normalised net (1,517,450
  parameters, dropout 0.2-0.5), Adam, batch 128, 20 epochs. Article: 83.18%.

`--precision auto` (the default for small and batchnorm) computes the layers
in bfloat16 on CPUs with AVX-512 BF16 or AMX, with float32 weights, loss and
batch-norm statistics; augmented stays fp32 (its bfloat16 accuracy has not
been measured). On x86-64 CPUs TensorFlow is asked for oneDNN's kernels
(cli.prepare_tensorflow; it picks its own, slower, on CPUs without VNNI or
AMX); on its own kernels, float32 training takes each convolution's
gradients as forward convolutions (convolutions.py): the same numbers,
faster there. What each model reaches, in what time, per precision and CPU:
BENCHMARKS.md, "cnn.py".

`--data-dir` may also name a folder of your own pictures (one sub-folder per
class, or train/ and test/ holding them; image_folders.py), read at
`--image-size` (32 by default; 64 and 96 work for small and batchnorm), or
CIFAR-100 (`--dataset cifar100`, `--labels fine|coarse`).

Each run writes to `--train-dir/<model>-<timestamp>/`: checkpoints every epoch
(every `--log-every` steps for `augmented`), the history as JSON, the
article's accuracy and loss curves, sample predictions, misclassified images,
a confusion matrix and a per-class precision / recall / F1 table.

    python cnn.py --model small                # the article's 16-32-64 net, 20 epochs
    python cnn.py --model batchnorm            # the 1,517,450-parameter net
    python cnn.py                              # augmented, 150,000 steps (hours on a CPU)
    python cnn.py --max-steps 70000 --learning-rate 1e-3 --lr-schedule linear
                                               # augmented in under half the steps
    python cnn.py --restore runs/small-...     # evaluate a saved run
"""

import argparse
import json
import os
import time

import numpy as np

import cli  # (no TensorFlow inside: it sets how TensorFlow loads)
cli.prepare_tensorflow()  # a quiet start; oneDNN's kernels on every x86-64 CPU
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import convolutions  # noqa: E402
import data_helpers  # noqa: E402
import reporting  # noqa: E402
import run_folders  # noqa: E402
import sessions  # noqa: E402
import towers  # noqa: E402
from errors import DataError, error_line, short_list, write_file_atomically  # noqa: E402

tf.disable_eager_execution()  # TensorFlow 1 style: build a graph, then run it

# Each model with the schedule of its article; flags override. `precision`:
# 'auto' (bfloat16 on CPUs with AVX-512 BF16 or AMX) where bf16 was measured
# as accurate as fp32 (BENCHMARKS.md), fp32 where it was not measured.
MODELS = {
    'augmented': dict(batch_size=64, learning_rate=1e-4, adam_epsilon=1e-8,
                      epochs=None, max_steps=150_000, validation_split=0.0, precision='fp32'),
    'small': dict(batch_size=128, learning_rate=1e-3, adam_epsilon=1e-7,
                  epochs=20, max_steps=None, validation_split=0.2, precision='auto'),
    'batchnorm': dict(batch_size=128, learning_rate=1e-3, adam_epsilon=1e-7,
                      epochs=20, max_steps=None, validation_split=0.2, precision='auto'),
}
IMAGE_SIZE, CROP_SIZE, CHANNELS, CLASSES = 32, 24, 3, 10   # CIFAR-10's; a folder's may differ


# -----------------------------------------------------------------------------
# Pre-processing (the augmented model): random per image, over the whole batch
# -----------------------------------------------------------------------------

def _per_image(batch, minval, maxval):
    """One uniform random number per image, shaped to broadcast over it."""
    return tf.random.uniform([batch, 1, 1, 1], minval, maxval)


def augment(images, colour_jitter=True):
    """Hvass-Labs' training distortions, each drawn per image.

    Random 24x24 crop (3/4 of the side for other sizes), random left-right
    flip, then hue (max delta 0.05),
    contrast (0.3-1.0), brightness (max delta 0.2) and saturation (0.0-2.0),
    clipped to [0, 1]. The tutorial applied tf.image.random_* to one image at
    a time through tf.map_fn; here every operation works on the whole batch
    with one random value per image, which is the same distribution.

    Args:
      images: [batch, 32, 32, 3] float32 in [0, 1] (or another square size).
      colour_jitter: False stops after the crop and flip (for tests).

    Returns:
      [batch, 24, 24, 3] float32 in [0, 1].
    """
    size, crop = crop_sizes(images)
    with tf.name_scope('augment'):
        batch = tf.shape(images)[0]
        # Random crop: crop_and_resize with boxes on whole pixels copies the
        # pixels exactly (no interpolation happens).
        offsets = tf.cast(tf.random.uniform([batch, 2], 0, size - crop + 1,
                                            dtype=tf.int32), tf.float32)
        scale = 1.0 / (size - 1)
        boxes = tf.concat([offsets * scale, (offsets + crop - 1) * scale], axis=1)
        images = tf.image.crop_and_resize(images, boxes, box_indices=tf.range(batch),
                                          crop_size=[crop, crop], method='nearest')
        # Random left-right flip.
        flip = _per_image(batch, 0.0, 1.0) < 0.5
        images = tf.where(tf.broadcast_to(flip, tf.shape(images)),
                          tf.reverse(images, axis=[2]), images)
        if not colour_jitter:
            return images
        # Hue: rotate the hue channel in HSV space.
        hsv = tf.image.rgb_to_hsv(images)
        hue = tf.math.floormod(hsv[..., :1] + _per_image(batch, -0.05, 0.05), 1.0)
        images = tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1))
        # Contrast: scale each channel's distance from its mean.
        mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        images = (images - mean) * _per_image(batch, 0.3, 1.0) + mean
        # Brightness: add one delta to every pixel.
        images = images + _per_image(batch, -0.2, 0.2)
        # Saturation: scale the saturation channel in HSV space.
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(images, 0.0, 1.0))
        saturation = tf.clip_by_value(hsv[..., 1:2] * _per_image(batch, 0.0, 2.0), 0.0, 1.0)
        images = tf.image.hsv_to_rgb(tf.concat([hsv[..., :1], saturation, hsv[..., 2:]],
                                               axis=-1))
        return tf.clip_by_value(images, 0.0, 1.0)


def centre_crop(images):
    """The test-time pre-processing: the central 24x24 pixels."""
    size, crop = crop_sizes(images)
    start = (size - crop) // 2
    return images[:, start:start + crop, start:start + crop, :]


def crop_sizes(images):
    """(side of the images, side of the crop): 32 and 24 for CIFAR-10, the
    same 3/4 for other sizes."""
    size = int(images.shape[1])
    return size, CROP_SIZE if size == IMAGE_SIZE else size * 3 // 4


# -----------------------------------------------------------------------------
# Layers
# -----------------------------------------------------------------------------

def conv(x, filters, kernel, name, is_training=False, activation=tf.nn.relu):
    """A 'same'-padded convolution with Glorot-uniform weights and zero biases,
    computed in x's type (the float32 weights cast to bfloat16 for a bf16 x).
    In the float32 training tower (is_training) on TensorFlow's own kernels
    both its gradients are taken by forward convolutions (convolutions.py);
    elsewhere, and in the evaluation tower, which predict.py and export.py
    take, it is the plain convolution."""
    with tf.variable_scope(name):
        weights = tf.get_variable('weights', [kernel, kernel, x.shape[-1], filters],
                                  initializer=tf.glorot_uniform_initializer())
        biases = tf.get_variable('biases', [filters], initializer=tf.zeros_initializer())
        weights = tf.cast(weights, x.dtype)
        if is_training and x.dtype == tf.float32 and not convolutions.onednn_kernels():
            # The same convolution, its gradients taken as forward ones:
            # TensorFlow's own (Eigen) took 2.6x (input) and 2.1-2.4x
            # (filter) its forward's time over this net on an AVX2 EPYC;
            # oneDNN's, where they run, beat these (BENCHMARKS.md)
            y = convolutions.conv2d_by_forward(x, weights)
        else:
            y = tf.nn.conv2d(x, weights, strides=1, padding='SAME')
        x = tf.nn.bias_add(y, tf.cast(biases, x.dtype))
        return activation(x) if activation else x


def dense(x, units, name, activation=tf.nn.relu):
    """A fully connected layer with Glorot-uniform weights and zero biases, in x's type."""
    with tf.variable_scope(name):
        weights = tf.get_variable('weights', [x.shape[-1], units],
                                  initializer=tf.glorot_uniform_initializer())
        biases = tf.get_variable('biases', [units], initializer=tf.zeros_initializer())
        x = tf.matmul(x, tf.cast(weights, x.dtype)) + tf.cast(biases, x.dtype)
        return activation(x) if activation else x


def max_pool(x):
    return tf.nn.max_pool2d(x, ksize=2, strides=2, padding='VALID')


def flatten(x):
    return tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])


def batch_norm(x, is_training, name, momentum=0.99, epsilon=1e-3):
    """Fused batch normalisation with Keras' defaults.

    The training tower normalises with the batch's statistics and moves the
    moving averages towards them (the update ops go to UPDATE_OPS, which the
    training op depends on); the inference tower normalises with the moving
    averages and changes nothing. A bfloat16 x gives a bfloat16 output; the
    scale, offset and statistics stay float32.
    """
    with tf.variable_scope(name):
        channels = x.shape[-1]
        gamma = tf.get_variable('gamma', [channels], initializer=tf.ones_initializer())
        beta = tf.get_variable('beta', [channels], initializer=tf.zeros_initializer())
        moving_mean = tf.get_variable(
            'moving_mean', [channels], initializer=tf.zeros_initializer(), trainable=False,
            collections=[tf.GraphKeys.GLOBAL_VARIABLES,
                         tf.GraphKeys.MOVING_AVERAGE_VARIABLES])
        moving_variance = tf.get_variable(
            'moving_variance', [channels], initializer=tf.ones_initializer(),
            trainable=False, collections=[tf.GraphKeys.GLOBAL_VARIABLES,
                                          tf.GraphKeys.MOVING_AVERAGE_VARIABLES])
        rank2 = x.shape.ndims == 2
        if rank2:       # fused batch norm wants 4-D input
            x = x[:, None, None, :]
        if is_training:
            y, mean, variance = tf.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon,
                                                       is_training=True)
            for average, value in ((moving_mean, mean), (moving_variance, variance)):
                tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, tf.assign_sub(
                    average, (average - value) * (1 - momentum)))
        else:
            y, _, _ = tf.nn.fused_batch_norm(x, gamma, beta, mean=moving_mean,
                                             variance=moving_variance, epsilon=epsilon,
                                             is_training=False)
        return y[:, 0, 0, :] if rank2 else y


def dropout(x, rate, is_training):
    return tf.nn.dropout(x, rate=rate) if is_training else x


# -----------------------------------------------------------------------------
# The three models: inference()
# -----------------------------------------------------------------------------

def inference(images, model, is_training, precision='fp32', num_classes=CLASSES):
    """Builds a model up to its logits.

    Args:
      images: [batch, 32, 32, 3] float32 in [0, 1] (or another square size).
      model: 'augmented', 'small' or 'batchnorm'.
      is_training: True builds the training tower (augmentation, batch
        statistics, dropout), False the inference tower. Build the training
        tower first; build the other inside a reusing variable scope
        (`build_graph`) to share its weights.
      precision: 'fp32', or 'bf16' to compute the layers in bfloat16 (the
        augmentation, the weights, batch-norm statistics and the logits stay
        float32).
      num_classes: the logits' width.

    Returns:
      logits: [batch, num_classes] float32.
    """
    dtype = tf.bfloat16 if precision == 'bf16' else tf.float32
    if model == 'augmented':
        x = augment(images) if is_training else centre_crop(images)
        x = tf.cast(x, dtype)
        x = max_pool(conv(x, 64, 5, 'conv1', is_training))
        x = max_pool(conv(x, 64, 5, 'conv2', is_training))
        x = max_pool(conv(x, 128, 5, 'conv3', is_training))
        x = dense(flatten(x), 256, 'fc1')
        x = dense(x, 128, 'fc2')
    elif model == 'small':
        x = max_pool(conv(tf.cast(images, dtype), 16, 3, 'conv1', is_training))
        x = max_pool(conv(x, 32, 3, 'conv2', is_training))
        x = max_pool(conv(x, 64, 3, 'conv3', is_training))
        x = dense(flatten(x), 128, 'fc1')
    elif model == 'batchnorm':
        x = tf.cast(images, dtype)
        for block, (filters, rate) in enumerate([(64, 0.2), (128, 0.25), (128, 0.35)], 1):
            x = conv(x, filters, 4, 'conv%da' % block, is_training)
            x = batch_norm(x, is_training, 'bn%da' % block)
            x = conv(x, filters, 4, 'conv%db' % block, is_training)
            x = batch_norm(x, is_training, 'bn%db' % block)
            x = dropout(max_pool(x), rate, is_training)
        x = batch_norm(dense(flatten(x), 256, 'fc1'), is_training, 'bn_fc1')
        x = dropout(x, 0.5, is_training)
    else:
        raise ValueError('unknown model %r' % model)
    return tf.identity(tf.cast(dense(x, num_classes, 'logits', activation=None), tf.float32),
                       name='logits')


def loss(logits, labels):
    """Mean cross-entropy of the logits against the int64 labels."""
    with tf.name_scope('loss'):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            logits=logits, labels=labels), name='cross_entropy')


def training(loss, learning_rate, epsilon, wrap_optimizer=None, tower_gradients=None):
    """Adam on the loss; batch-norm averages updated with every step.

    Args:
      loss: the batch's mean loss, from `loss()`.
      learning_rate: a number, or a scalar tensor (a schedule).
      epsilon: Adam's epsilon (the articles': 1e-8 augmented, 1e-7 Keras).
      wrap_optimizer: optional, optimizer -> optimizer (distributed.py makes
        Adam synchronous across machines with it).
      tower_gradients: with several devices, [(gradient, variable)] averaged
        over the towers (towers.py), used instead of the loss's own.

    Returns:
      The op that takes one step.
    """
    gradients = tower_gradients
    if gradients is None:            # one device: the loss's own gradients
        variables = tf.trainable_variables()
        gradients = list(zip(tf.gradients(loss, variables), variables))
    global_step = tf.train.get_or_create_global_step()
    optimizer = tf.train.AdamOptimizer(learning_rate, epsilon=epsilon)
    if wrap_optimizer:
        optimizer = wrap_optimizer(optimizer)
    # The batch-norm updates ride on the gradients, so that they run with each
    # step and with nothing else (a wrapping optimizer's set-up ops included)
    with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
        gradients = [(tf.identity(g), v) if g is not None else (g, v) for g, v in gradients]
    return optimizer.apply_gradients(gradients, global_step=global_step, name='train_step')


def evaluation(logits, labels):
    """Fraction of images whose top class is the label."""
    with tf.name_scope('accuracy'):
        return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32),
                              name='accuracy')


def count_parameters():
    """Parameters as Keras counts them: trainable ones plus batch-norm averages."""
    return sum(int(np.prod(v.shape.as_list()))
               for v in tf.trainable_variables() + tf.moving_average_variables())


# -----------------------------------------------------------------------------
# The runner
# -----------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convolutional networks on CIFAR-10 (graph mode).')
    parser.add_argument('--model', choices=sorted(MODELS), default=None,
                        help="which article to reproduce (default: augmented; with "
                             "--restore, the run's)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument('--epochs', type=cli.positive_int,
                        help='passes over the training set (default: the article\'s)')
    length.add_argument('--max-steps', type=cli.positive_int,
                        help='training steps instead of epochs')
    parser.add_argument('--batch-size', type=cli.positive_int,
                        help='images per step (default: 64 augmented, 128 the others)')
    parser.add_argument('--learning-rate', type=cli.positive_float,
                        help='Adam step size (default: 1e-4 augmented, 1e-3 the others)')
    parser.add_argument('--lr-schedule', choices=['constant', 'linear'], default='constant',
                        help="'linear': decay the learning rate to zero over the run "
                             "(for shortened runs; default: constant, as the articles)")
    parser.add_argument('--log-every', type=cli.positive_int, default=1000,
                        help='steps between reports and checkpoints for step-counted '
                             'runs (default: 1000)')
    cli.add_precision_flag(parser, None, default_help="the model's: auto for small and "
                           "batchnorm, fp32 for augmented")
    cli.add_common_flags(parser, train_dir='runs', pictures=True)
    cli.add_dataset_flags(parser)
    cli.add_num_devices_flag(parser)
    parser.add_argument('--restore', metavar='RUN_DIR',
                        help='only evaluate the latest checkpoint of RUN_DIR on the test set')
    parser.add_argument('--no-plots', action='store_true',
                        help='skip the PNG pictures at the end')
    args = parser.parse_args(argv)
    trained = trained_settings(args.restore)     # {} without --restore
    script = trained.get('script', 'cnn')
    if script != 'cnn':
        parser.error('argument --restore: %s holds a %s.py run: restore it with %s.py '
                     '(predict.py and export.py read any run)' % (args.restore, script, script))
    args.model = args.model or trained.get('model', 'augmented')
    args.trained_classes = trained.get('classes')     # (restore_and_evaluate checks the data's)
    if 'labels' in trained and (not args.data_dir or data_helpers.is_cifar100_folder(
            args.data_dir)):        # a CIFAR-100 run on CIFAR-100: with its labels
        if args.labels not in (None, trained['labels']):
            parser.error('argument --labels: %s was trained on the %s labels'
                         % (args.restore, trained['labels']))
        args.dataset, args.labels = 'cifar100', trained['labels']
    defaults = MODELS[args.model]
    args.batch_size_given = args.batch_size is not None   # (else fitted to a small folder)
    if args.epochs is None and args.max_steps is None:
        args.epochs, args.max_steps = defaults['epochs'], defaults['max_steps']
    for key in ('batch_size', 'learning_rate'):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.precision is None:    # --restore: as the run trained; older runs fp32
        args.precision = (trained.get('precision', 'fp32') if args.restore
                          else defaults['precision'])
    cli.check_num_devices(parser, args)
    return args


def split_validation(data_sets, validation_split):
    """The training images and the set reported during training.

    The epoch-counted articles hold out the last `validation_split` of the
    training set; the augmented article trains on all 50,000 and reports the
    test set.

    Returns:
      (train_images, train_labels, report_images, report_labels, report name).
    """
    held_out = int(len(data_sets['images_train']) * validation_split)
    train_count = len(data_sets['images_train']) - held_out
    images, labels = data_sets['images_train'], data_sets['labels_train']
    if held_out:
        return (images[:train_count], labels[:train_count], images[train_count:],
                labels[train_count:], 'val')
    return images, labels, data_sets['images_test'], data_sets['labels_test'], 'test'


def build_graph(model, train_images, train_labels, batch_size, learning_rate, precision,
                num_devices=1, num_classes=CLASSES, sampler_device=None, wrap_optimizer=None):
    """The model's graph, fed from the training set held in it.

    Args:
      model: a key of MODELS (its Adam epsilon is read from there).
      train_images, train_labels: the training set (its images' size sets
        the network's input; CIFAR-10: 32).
      batch_size: images per step, split evenly over num_devices.
      learning_rate: Adam's step size, a float or a tensor (learning_rate()).
      precision: 'fp32' or 'bf16' (inference()).
      num_devices: towers the batch is split over (towers.py), 1 for none.
      num_classes: the logits' width (CIFAR-10: 10).
      sampler_device (where the training set lives), wrap_optimizer (see
        `training()`): for distributed.py.

    Returns:
      A namespace of what the loop runs: sampler (and its train_count),
      loss, train_step and accuracy (of the training batch); images, labels
      (inference's inputs), eval_loss (their mean loss), predictions; saver.
    """
    # The training graph: batches gathered inside the graph from the training
    # set held in memory (only indices are fed), augmented, batch statistics
    # and dropout on; the loss; Adam (on a linear schedule to zero when
    # asked); the batch's accuracy.
    adam_epsilon = MODELS[model]['adam_epsilon']
    sampler = data_helpers.InGraphSampler(train_images, train_labels, batch_size,
                                          device=sampler_device)
    if num_devices == 1:
        logits = inference(sampler.images, model, is_training=True, precision=precision,
                           num_classes=num_classes)
        train_loss = loss(logits, sampler.labels)
        train_step = training(train_loss, learning_rate, adam_epsilon, wrap_optimizer)
        accuracy = evaluation(logits, sampler.labels)
    else:
        # The same, once per device on its slice of the batch (towers.py),
        # the towers' gradients averaged into one step
        def training_tower(images, labels):
            logits = inference(images, model, is_training=True, precision=precision,
                               num_classes=num_classes)
            return loss(logits, labels), evaluation(logits, labels)

        train_loss, gradients, accuracies = towers.tower_gradients(
            training_tower, [sampler.images, sampler.labels], towers.devices(num_devices))
        train_step = training(train_loss, learning_rate, adam_epsilon, wrap_optimizer,
                              tower_gradients=gradients)
        accuracy = tf.add_n(accuracies) / len(accuracies)

    # The inference tower, sharing the weights: images fed as they are (a
    # centre crop for `augmented`), the moving averages of batch norm, no
    # dropout; its probabilities under the name predict.py looks for.
    images = tf.placeholder(tf.float32, [None] + list(train_images.shape[1:]), name='images')
    labels = tf.placeholder(tf.int64, [None], name='labels')
    with tf.variable_scope(tf.get_variable_scope(), reuse=True), tf.name_scope('inference'):
        logits = inference(images, model, is_training=False, precision=precision,
                           num_classes=num_classes)
    tf.nn.softmax(logits, name='probabilities')
    return argparse.Namespace(
        sampler=sampler, train_count=len(train_images), images=images, labels=labels,
        loss=train_loss, train_step=train_step, accuracy=accuracy,
        eval_loss=loss(logits, labels),
        predictions=tf.argmax(logits, 1, name='predictions'),
        saver=checkpoints.saver(max_to_keep=3))


def learning_rate(base, schedule, max_steps):
    """--learning-rate `base`, or with --lr-schedule 'linear' a tensor
    falling from it to zero over max_steps."""
    if schedule == 'linear':
        return tf.train.polynomial_decay(
            base, tf.train.get_or_create_global_step(), max_steps, 0.0)
    return base


def trained_settings(run_dir):
    """What the model.json of a run folder (or of the newest run in it) says
    the run was trained with: {'script', 'model', 'precision'} (the precision
    written since cnn.py chose it per model), each only where it says one
    this script knows, its 'classes', and for a CIFAR-100 run 'labels'
    ('fine' or 'coarse', by their number); {} without a run folder."""
    if not run_dir:
        return {}
    try:
        info = run_folders.read_model_info(checkpoints.checkpoint_folder(run_dir))
    except (DataError, OSError):     # the restore itself says what is wrong with the folder
        return {}
    known = {'model': MODELS, 'precision': ('fp32', 'bf16'),
             'script': ('cnn', 'fast_cnn', 'softmax', 'two_layer_mlp')}
    trained = {key: info[key] for key, values in known.items() if info.get(key) in values}
    trained['classes'] = info['classes']
    if info.get('dataset') == 'cifar100':
        trained['labels'] = 'coarse' if len(info.get('classes', ())) == 20 else 'fine'
    return trained


def restored_split(args):
    """For --restore of a run trained on a folder of pictures: its split.json,
    and its image size and crop (model.json) put into args, so that the run is
    scored on the pictures it was tested on, prepared as it trained; without
    --data-dir, the folder it trained on. None for other runs.

    Raises:
      DataError: no --data-dir, and the folder the run trained on is gone or
        not known (its split.json unreadable).
    """
    if not args.restore:
        return None
    try:
        folder = checkpoints.checkpoint_folder(args.restore)
        info = run_folders.read_model_info(folder)
    except (DataError, OSError):    # the restore itself says what is wrong with the folder
        return None
    if info['dataset'] != 'folder':
        return None
    path = os.path.join(folder, run_folders.SPLIT)
    try:
        with open(path, encoding='utf-8') as f:
            split = json.load(f)
        if not isinstance(split['root'], str):
            raise ValueError('its root is not a folder name')
    except (OSError, ValueError, KeyError, TypeError) as e:
        if args.data_dir is not None:      # the folder given: split afresh, as before
            return None
        raise DataError('cannot read %s (%s), which names the folder of pictures the run '
                        'trained on: give it with --data-dir' % (path, error_line(e))) from None
    args.image_size, args.crop = info['image_size'], info.get('crop', 'center')
    if args.data_dir is None:
        if not os.path.isdir(split['root']):
            raise DataError('%s was trained on the pictures in %s, which is not there now; '
                            'give their folder with --data-dir' % (args.restore, split['root']))
        args.data_dir = split['root']
    return split


def do_eval(sess, ops, images, labels):
    """Runs one evaluation against a whole set, in batches, in inference mode.

    Args:
      sess: the session in which the model has been trained (or restored).
      ops: build_graph()'s namespace.
      images, labels: the set (validation or test).

    Returns:
      {'accuracy', 'loss' (the mean), 'predictions'} (sessions.evaluate).
    """
    return sessions.evaluate(sess, ops.predictions, ops.images, ops.labels, images, labels,
                            means={'loss': ops.eval_loss})


def restore_and_evaluate(sess, ops, args, data_sets):
    """Scores the latest checkpoint of --restore on the test set.

    Raises:
      DataError: the run learnt other classes than the data's (as many, so
        that its weights would load: its scores would mean nothing).
    """
    trained = args.trained_classes      # (None: a folder the restore itself refuses)
    if trained is not None and trained != data_sets['classes']:
        raise DataError('%s was trained on the classes %s, and this data has %s: give the data '
                        'it was trained on' % (args.restore, short_list(trained),
                                               short_list(data_sets['classes'])))
    checkpoint = checkpoints.restore(ops.saver, sess, args.restore, '--model ' + args.model)
    accuracy = do_eval(sess, ops, data_sets['images_test'], data_sets['labels_test'])['accuracy']
    print('Restored {}\nTest accuracy {:.4f}'.format(checkpoint, accuracy))
    return accuracy


def print_report(label, history, report_name):
    """Prints the history's latest entry as Keras prints an epoch."""
    print('{} - loss: {loss:.4f} - accuracy: {accuracy:.4f} - {name}_loss: {val_loss:.4f} - '
          '{name}_accuracy: {val_accuracy:.4f} - {images_per_second:.0f} images/s - '
          '{elapsed:.0f}s'.format(label, name=report_name, **history.last()), flush=True)


def finish_run(args, run_dir, data_sets, history, test, train_seconds):
    """The per-class table, result.json and the article's pictures."""
    classes = data_sets['classes']
    table = reporting.per_class_table(data_sets['labels_test'], test['predictions'], classes)
    print(table)
    write_file_atomically(os.path.join(run_dir, 'per_class.txt'), (table + '\n').encode())
    run_folders.write_json(os.path.join(run_dir, 'result.json'), {
        'model': args.model, 'test_accuracy': test['accuracy'], 'precision': args.precision,
        'steps': int(history['step'][-1]), 'batch_size': args.batch_size, 'seed': args.seed,
        'train_seconds': train_seconds})
    if not args.no_plots:
        reporting.save_report(run_dir, history, data_sets['images_test'],
                              data_sets['labels_test'], test['predictions'], classes)


def train(sess, ops, args, run_dir, max_steps, steps_per_epoch, rng, report_set):
    """Steps through shuffled batches; every epoch (or --log-every steps for
    step-counted runs) scores `report_set` (images, labels, its name: the
    validation or test set), reports, checkpoints and saves the history.

    Returns:
      (history, training seconds).
    """
    report_every = steps_per_epoch if args.epochs else args.log_every
    report_images, report_labels, report_name = report_set
    history = run_folders.History()
    batches = data_helpers.epoch_indices(
        ops.train_count, args.batch_size, max_steps, rng)
    sum_loss, sum_accuracy, last_report = 0.0, 0.0, 0
    train_start = interval_start = time.time()
    for step in range(1, max_steps + 1):
        # One training step on the next batch
        _, batch_loss, batch_accuracy = sess.run(
            [ops.train_step, ops.loss, ops.accuracy], {ops.sampler.indices: next(batches)})
        sum_loss += batch_loss
        sum_accuracy += batch_accuracy

        if step % report_every == 0 or step == max_steps:
            steps, last_report = step - last_report, step
            images_per_second = steps * args.batch_size / (time.time() - interval_start)
            scores = do_eval(sess, ops, report_images, report_labels)
            history.record(step=step, epoch=step / steps_per_epoch, loss=sum_loss / steps,
                           accuracy=sum_accuracy / steps, val_loss=scores['loss'],
                           val_accuracy=scores['accuracy'],
                           images_per_second=images_per_second,
                           elapsed=time.time() - train_start)
            print_report('Epoch {}/{}'.format(step // steps_per_epoch, args.epochs)
                         if args.epochs else 'Step {}/{}'.format(step, max_steps),
                         history, report_name)
            checkpoints.save_checkpoint(ops.saver, sess, run_dir, step)
            history.save(run_dir)
            sum_loss, sum_accuracy, interval_start = 0.0, 0.0, time.time()
    return history, time.time() - train_start


def main(args):
    begin_time = time.time()
    rng = sessions.fresh_graph(args.seed)   # the same seed gives the same run
    chosen = args.precision      # the model's, or the restored run's (parse_args)
    args.precision = cli.precision(chosen)

    # Load the data (CIFAR-10, or a folder of your own pictures): pixels
    # scaled to [0, 1], images as 32x32x3 arrays
    recorded = restored_split(args)     # --restore of a folder run: its pictures, as it saw them
    data_sets = data_helpers.load_images(args.data_dir, args.image_size, args.crop,
                                         args.test_split, args.seed, args.dataset, args.labels,
                                         recorded)
    for name in ('images_train', 'images_test'):
        data_sets[name] = data_helpers.to_float32(data_sets[name])
    train_images, train_labels, *report_set = split_validation(
        data_sets, MODELS[args.model]['validation_split'])
    if not args.restore:
        cli.fit_batch_size(args, len(train_images), "the article's")
        cli.check_batch_size(args.batch_size, len(train_images),
                             len(data_sets['images_train']) - len(train_images))
    steps_per_epoch = len(train_images) // args.batch_size
    max_steps = args.max_steps or args.epochs * steps_per_epoch

    # The graph (only defined here; nothing is computed yet)
    ops = build_graph(args.model, train_images, train_labels, args.batch_size,
                      learning_rate(args.learning_rate, args.lr_schedule, max_steps),
                      args.precision, args.num_devices, len(data_sets['classes']))
    print('Model {}: {:,} parameters, {}'.format(args.model, count_parameters(),
                                                 cli.precision_note(chosen, args.precision)))

    # Run it
    with tf.Session(config=towers.session_config(args.num_devices)) as sess:
        if args.restore:
            return restore_and_evaluate(sess, ops, args, data_sets)

        sess.run(tf.global_variables_initializer())
        ops.sampler.initialize(sess)
        run_dir = run_folders.start_run_dir(args.train_dir, args.model + '-',
                                            data_sets['classes'], data_sets['dataset'], 'nhwc',
                                            split=data_helpers.split_record(data_sets),
                                            script='cnn', model=args.model,
                                            precision=args.precision,
                                            **data_helpers.picture_info(data_sets))
        print('Writing to {}'.format(run_dir))
        history, train_seconds = train(sess, ops, args, run_dir, max_steps, steps_per_epoch,
                                       rng, report_set)

        # Evaluate on the test set, then draw the article's pictures
        test = do_eval(sess, ops, data_sets['images_test'], data_sets['labels_test'])
        print('Test accuracy {:.4f}'.format(test['accuracy']))

    finish_run(args, run_dir, data_sets, history, test, train_seconds)
    print('Total time: {:5.2f}s'.format(time.time() - begin_time))
    return test['accuracy']


if __name__ == '__main__':
    cli.exit_on_error(main, parse_args())
