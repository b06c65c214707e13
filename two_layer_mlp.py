"""Fully connected networks, as three articles build them, in one graph-mode file.

* `--preset wolfib` (default): Wolfgang Beyer's part 2, a two-layer fully
  connected net on CIFAR-10 (3072-120-10, ReLU, L2 0.1, gradient descent
  0.001, batch 400, 2000 steps): test accuracy 0.4633 in 97.5 s.
* `--preset mnist`: the multilayer perceptron on MNIST (784-256-256-10,
  weights from tf.random_normal, Adam 0.001, batch 100, 15 epochs): 94.75%.
* `--preset keras-mlp`: the Keras MLP on CIFAR-10 scaled to [0, 1]
  (3072-512-512-10, RMSprop, batch 32, 20 epochs): about 44%.

Each preset also prints what its article prints (PRESETS below).

The model is built, as the part-2 code builds it, from four functions:
`inference()`, `loss()`, `training()` and `evaluation()`. The runner below
them trains it, writes TensorBoard summaries every 100 steps and checkpoints
into `--train-dir/<timestamp>/`, and `--restore` evaluates the latest
checkpoint on the test set (the original's restore_model.py).

    python two_layer_mlp.py                      # the part-2 article
    python two_layer_mlp.py --preset mnist       # the MNIST perceptron
    python two_layer_mlp.py --restore            # evaluate the latest run
    tensorboard --logdir tf_logs
"""

import argparse
import time

import cli  # (no TensorFlow inside: it sets how TensorFlow loads)
cli.prepare_tensorflow()  # a quiet start; oneDNN's kernels on every x86-64 CPU
import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import data_helpers  # noqa: E402
import run_folders  # noqa: E402
import sessions  # noqa: E402

tf.disable_eager_execution()  # TensorFlow 1 style: build a graph, then run it

# Each preset reproduces its article, what it prints included; any command-line
# flag overrides a value. step_line is printed every 100 steps, epoch_line
# after every epoch (with the test set's loss and accuracy as val_* when
# epoch_validation is set), final_line after training.
PRESETS = {
    'wolfib': dict(
        dataset='cifar10', hidden=[120], init='truncated_normal', reg_constant=0.1,
        optimizer='gd', learning_rate=0.001, batch_size=400, max_steps=2000, epochs=None,
        step_line='Step {step:d}, training accuracy {accuracy:g}', epoch_line=None,
        epoch_validation=False, final_line='Test accuracy {accuracy:g}'),
    'mnist': dict(
        dataset='mnist', hidden=[256, 256], init='random_normal', reg_constant=0.0,
        optimizer='adam', learning_rate=0.001, batch_size=100, max_steps=None, epochs=15,
        step_line=None, epoch_line='Epoch: {epoch:04d} cost= {loss:.9f}',
        epoch_validation=False, final_line='Optimization Finished!\nAccuracy: {accuracy}'),
    'keras-mlp': dict(
        dataset='cifar10-scaled', hidden=[512, 512], init='glorot_uniform',
        reg_constant=0.0, optimizer='rmsprop', learning_rate=0.001, batch_size=32,
        max_steps=None, epochs=20, step_line=None,
        epoch_line='Epoch {epoch}/{epochs} - {seconds:.0f}s - loss: {loss:.4f} - accuracy: '
                   '{accuracy:.4f} - val_loss: {val_loss:.4f} - val_accuracy: {val_accuracy:.4f}',
        epoch_validation=True, final_line='Test accuracy {accuracy:g}'),
}
PRINTED_PARAMETERS = ('preset', 'dataset', 'hidden', 'init', 'reg_constant', 'optimizer',
                      'learning_rate', 'batch_size', 'max_steps', 'epochs', 'seed', 'train_dir')
CLASSES = 10
REPORT_EVERY = 100        # steps between step lines and TensorBoard summaries
CHECKPOINT_EVERY = 1000   # steps between checkpoints


# -----------------------------------------------------------------------------
# The model: inference(), loss(), training(), evaluation()
# -----------------------------------------------------------------------------

def _initializer(init, fan_in, fan_out):
    if init == 'truncated_normal':      # part 2: stddev 1/sqrt(fan_in)
        return tf.truncated_normal_initializer(stddev=1.0 / np.sqrt(float(fan_in)))
    if init == 'random_normal':         # the MNIST article: tf.random_normal, stddev 1
        return tf.random_normal_initializer(stddev=1.0)
    if init == 'glorot_uniform':        # Keras' Dense default
        return tf.glorot_uniform_initializer()
    raise ValueError('unknown initializer %r' % init)


def inference(images, image_pixels, hidden_units, classes, reg_constant=0,
              init='truncated_normal'):
    """Builds the model up to where it may be used for inference.

    Args:
      images: images placeholder, [batch, image_pixels].
      image_pixels: number of pixels per image.
      hidden_units: sizes of the hidden layers, a list (one or two in the
        articles); an int is taken as a single layer.
      classes: number of image classes.
      reg_constant: L2 regularisation constant (default 0: none).
      init: 'truncated_normal' (part 2), 'random_normal' (the MNIST article,
        also for the biases) or 'glorot_uniform' (Keras).

    Returns:
      logits: [batch, classes] tensor of unnormalised class scores.
    """
    if isinstance(hidden_units, int):
        hidden_units = [hidden_units]
    sizes = [image_pixels] + list(hidden_units) + [classes]
    layer_input = images
    for number, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        with tf.variable_scope('Layer%d' % number):
            # tf.contrib.layers.l2_regularizer(scale) no longer exists; its exact
            # replacement is scale * tf.nn.l2_loss(w), which get_variable adds to
            # the REGULARIZATION_LOSSES collection.
            weights = tf.get_variable(
                'weights', shape=[fan_in, fan_out],
                initializer=_initializer(init, fan_in, fan_out),
                regularizer=(lambda w: reg_constant * tf.nn.l2_loss(w))
                if reg_constant else None)
            biases = tf.get_variable(
                'biases', shape=[fan_out],
                initializer=(tf.random_normal_initializer(stddev=1.0)
                             if init == 'random_normal' else tf.zeros_initializer()))
            layer_output = tf.matmul(layer_input, weights) + biases
            if number < len(sizes) - 1:      # ReLU between layers, not after the last
                layer_output = tf.nn.relu(layer_output)
        layer_input = layer_output
    logits = tf.identity(layer_input, name='logits')
    # (in a scope of its own: beside the tensor 'logits' the histogram would
    # be 'logits_1', and TensorFlow's names ignore case, so 'Logits' too)
    with tf.name_scope('Output'):
        tf.summary.histogram('logits', logits)
    return logits


def loss(logits, labels):
    """Mean cross-entropy plus the regularisation terms.

    Args:
      logits: [batch, classes] from inference().
      labels: [batch] int64 class indices.

    Returns:
      loss: scalar tensor.
    """
    with tf.name_scope('Loss'):
        cross_entropy = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            logits=logits, labels=labels, name='cross_entropy'))
        total = tf.add_n([cross_entropy] + tf.get_collection(
            tf.GraphKeys.REGULARIZATION_LOSSES), name='total')
        tf.summary.scalar('loss', total)
    return total


def training(loss, learning_rate, optimizer='gd'):
    """The operation that takes one optimisation step and counts it.

    Args:
      loss: scalar from loss().
      learning_rate: step size.
      optimizer: 'gd' (gradient descent), 'adam', or 'rmsprop' (with Keras'
        defaults: rho 0.9, epsilon 1e-7, no momentum).

    Returns:
      train_step: the operation to run once per batch.
    """
    global_step = tf.train.get_or_create_global_step()   # counts the steps taken
    if optimizer == 'gd':
        opt = tf.train.GradientDescentOptimizer(learning_rate)
    elif optimizer == 'adam':
        opt = tf.train.AdamOptimizer(learning_rate)
    elif optimizer == 'rmsprop':
        opt = tf.train.RMSPropOptimizer(learning_rate, decay=0.9, epsilon=1e-7)
    else:
        raise ValueError('unknown optimizer %r' % optimizer)
    return opt.minimize(loss, global_step=global_step, name='train_step')


def evaluation(logits, labels):
    """The fraction of images whose highest-scoring class is the label.

    Args:
      logits: [batch, classes] from inference().
      labels: [batch] int64 class indices.

    Returns:
      accuracy: scalar tensor in [0, 1].
    """
    with tf.name_scope('Accuracy'):
        correct_prediction = tf.equal(tf.argmax(logits, 1), labels)
        accuracy = tf.reduce_mean(tf.cast(correct_prediction, tf.float32), name='accuracy')
        tf.summary.scalar('train_accuracy', accuracy)
    return accuracy


# -----------------------------------------------------------------------------
# The runner
# -----------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Fully connected nets on CIFAR-10 and MNIST (graph mode).')
    parser.add_argument('--preset', choices=sorted(PRESETS), default='wolfib',
                        help='which article to reproduce (default: wolfib)')
    parser.add_argument('--hidden', type=cli.positive_int, nargs='+',
                        help='hidden layer sizes, e.g. --hidden 256 256')
    parser.add_argument('--optimizer', choices=['gd', 'adam', 'rmsprop'],
                        help='gradient descent, Adam or RMSprop (default: the preset\'s)')
    parser.add_argument('--learning-rate', type=cli.positive_float,
                        help='step size (default: the preset\'s)')
    parser.add_argument('--batch-size', type=cli.positive_int,
                        help='images per step (default: the preset\'s)')
    length = parser.add_mutually_exclusive_group()
    length.add_argument('--max-steps', type=cli.positive_int,
                        help='train for this many steps')
    length.add_argument('--epochs', type=cli.positive_int,
                        help='train for this many passes over the training set')
    parser.add_argument('--reg-constant', type=cli.nonnegative_float,
                        help='L2 regularisation constant (>= 0)')
    cli.add_common_flags(parser, train_dir='tf_logs', mnist=True, train_dir_help=(
        'folder for run folders with summaries and checkpoints (default: tf_logs)'))
    parser.add_argument('--restore', action='store_true',
                        help='only evaluate the latest checkpoint in --train-dir '
                             '(or the run folder given as --train-dir) on the test set')
    args = parser.parse_args(argv)
    # Flags left unset take the preset's value; --max-steps and --epochs
    # replace the preset's length together. (The preset's data set, weight
    # initialiser and printed lines are no flags: read from PRESETS where used.)
    preset = PRESETS[args.preset]
    if args.max_steps is None and args.epochs is None:
        args.max_steps, args.epochs = preset['max_steps'], preset['epochs']
    for key in ('hidden', 'optimizer', 'learning_rate', 'batch_size', 'reg_constant'):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    return args


def load_dataset(name, data_dir):
    """The preset's data set: MNIST, or CIFAR-10 mean-subtracted or scaled."""
    if name == 'mnist':
        return data_helpers.load_mnist(data_dir)
    return data_helpers.load_data(data_dir, normalization='scale' if name == 'cifar10-scaled'
                                  else 'mean')


def print_parameters(args):
    print('\nParameters:')
    for key in PRINTED_PARAMETERS:
        print('{} = {}'.format(key, getattr(args, key, PRESETS[args.preset].get(key))))
    print()


def do_eval(sess, ops, data_sets):
    """Runs one evaluation against the whole test set, in batches.

    Args:
      sess: the session in which the model has been trained (or restored).
      ops: build_graph()'s namespace.
      data_sets: load_dataset()'s dict; its images_test and labels_test.

    Returns:
      {'accuracy', 'loss' (the mean), 'predictions'} (sessions.evaluate).
    """
    return sessions.evaluate(sess, ops.predictions, ops.images, ops.labels,
                            data_sets['images_test'], data_sets['labels_test'],
                            means={'loss': ops.loss})


def restore_and_evaluate(sess, ops, args, data_sets):
    """The original's restore_model.py: the latest checkpoint, scored on the test set."""
    checkpoint = checkpoints.restore(ops.saver, sess, args.train_dir, '--preset %s --hidden %s'
                                     % (args.preset, ' '.join(map(str, args.hidden))))
    print('Restored {}'.format(checkpoint))
    test_accuracy = do_eval(sess, ops, data_sets)['accuracy']
    print('Test accuracy {:g}'.format(test_accuracy))
    return test_accuracy


def start_run_dir(args, data_sets):
    """A new run folder under --train-dir, with the model.json predict.py reads."""
    return run_folders.start_run_dir(args.train_dir, '', data_sets['classes'],
                                     'mnist' if PRESETS[args.preset]['dataset'] == 'mnist'
                                     else 'cifar10',
                                     'flat', data_sets.get('mean_image'),
                                     script='two_layer_mlp', model=args.preset)


def report_epoch(sess, ops, args, data_sets, epoch, epochs, loss, accuracy, seconds):
    """Prints the preset's epoch line: the epoch's mean batch loss and accuracy."""
    values = dict(epoch=epoch, epochs=epochs, seconds=seconds, loss=loss, accuracy=accuracy)
    preset = PRESETS[args.preset]
    if preset['epoch_validation']:    # the Keras article validates on the test set
        test = do_eval(sess, ops, data_sets)
        values.update(val_loss=test['loss'], val_accuracy=test['accuracy'])
    print(preset['epoch_line'].format(**values))


def build_graph(args, data_sets):
    """The graph of the article's model, fed from the training set held in it.

    Returns:
      A namespace of what the loop runs: sampler, images, labels, loss,
      train_step, accuracy, predictions, summary, saver.
    """
    # Define input placeholders. By default they take training batches from
    # the training set held in the graph (only the batch indices are fed each
    # step); the test set is fed through the same placeholders.
    image_pixels = data_sets['images_train'].shape[1]
    sampler = data_helpers.InGraphSampler(data_sets['images_train'],
                                          data_sets['labels_train'], args.batch_size)
    images = tf.placeholder_with_default(sampler.images, shape=[None, image_pixels],
                                         name='images')
    labels = tf.placeholder_with_default(sampler.labels, shape=[None], name='labels')

    # Operation for the classifier's result, and its class probabilities
    # under the name predict.py looks for
    logits = inference(images, image_pixels, args.hidden, CLASSES,
                       reg_constant=args.reg_constant, init=PRESETS[args.preset]['init'])
    tf.nn.softmax(logits, name='probabilities')

    # Operations for the loss function, the training step and the accuracy
    loss_op = loss(logits, labels)
    train_step = training(loss_op, args.learning_rate, args.optimizer)
    accuracy = evaluation(logits, labels)

    # Operation merging summary data for TensorBoard, and a saver for checkpoints
    return argparse.Namespace(
        sampler=sampler, images=images, labels=labels, loss=loss_op,
        train_step=train_step, accuracy=accuracy, predictions=tf.argmax(logits, 1),
        summary=tf.summary.merge_all(), saver=checkpoints.saver())


def train(sess, ops, args, data_sets, rng):
    """The article's training loop: shuffled batches, a step each, reports now and then.

    Writes the run folder: model.json, TensorBoard summaries, checkpoints.
    """
    run_dir = start_run_dir(args, data_sets)

    # Generate input data batches: shuffled epochs, without replacement
    train_count = len(data_sets['images_train'])
    steps_per_epoch = train_count // args.batch_size
    max_steps = args.max_steps or args.epochs * steps_per_epoch
    batches = data_helpers.epoch_indices(train_count, args.batch_size, max_steps, rng)
    epoch_loss, epoch_accuracy, epoch_start = 0.0, 0.0, time.time()
    step_line, epoch_line = (PRESETS[args.preset][key] for key in ('step_line', 'epoch_line'))

    with tf.summary.FileWriter(run_dir, sess.graph) as summary_writer:
        for i in range(max_steps):
            # Get next input data batch
            feed_dict = {ops.sampler.indices: next(batches)}

            # Periodically print the model's current accuracy (where the article
            # does) and write summaries for TensorBoard
            if i % REPORT_EVERY == 0:
                if step_line:
                    print(step_line.format(step=i,
                                                accuracy=sess.run(ops.accuracy, feed_dict)))
                summary_writer.add_summary(sess.run(ops.summary, feed_dict), i)

            # Perform a single training step
            _, batch_loss, batch_accuracy = sess.run(
                [ops.train_step, ops.loss, ops.accuracy], feed_dict)
            epoch_loss += batch_loss
            epoch_accuracy += batch_accuracy

            # Periodically save checkpoint
            if (i + 1) % CHECKPOINT_EVERY == 0:
                checkpoints.save_checkpoint(ops.saver, sess, run_dir, i + 1)
                print('Saved checkpoint')

            # After every epoch, the epoch's line (where the article prints one)
            if epoch_line and (i + 1) % steps_per_epoch == 0:
                report_epoch(sess, ops, args, data_sets, (i + 1) // steps_per_epoch,
                             max_steps // steps_per_epoch, epoch_loss / steps_per_epoch,
                             epoch_accuracy / steps_per_epoch, time.time() - epoch_start)
                epoch_loss, epoch_accuracy, epoch_start = 0.0, 0.0, time.time()

    checkpoints.save_checkpoint(ops.saver, sess, run_dir, max_steps)


def main(args):
    begin_time = time.time()
    rng = sessions.fresh_graph(args.seed)   # the same seed gives the same run
    if not args.restore:
        print_parameters(args)

    # Load the data
    data_sets = load_dataset(PRESETS[args.preset]['dataset'], args.data_dir)
    if not args.restore:
        cli.check_batch_size(args.batch_size, len(data_sets['images_train']))

    # Prepare the TensorFlow graph (only defined here: nothing is computed yet)
    ops = build_graph(args, data_sets)

    # Run the TensorFlow graph
    with tf.Session(config=sessions.session_config()) as sess:
        if args.restore:
            return restore_and_evaluate(sess, ops, args, data_sets)

        # Initialize variables, train, then evaluate on the test set
        sess.run(tf.global_variables_initializer())
        ops.sampler.initialize(sess)
        train(sess, ops, args, data_sets, rng)
        test_accuracy = do_eval(sess, ops, data_sets)['accuracy']
        print(PRESETS[args.preset]['final_line'].format(accuracy=test_accuracy))

    print('Total time: {:5.2f}s'.format(time.time() - begin_time))
    return test_accuracy


if __name__ == '__main__':
    cli.exit_on_error(main, parse_args())
