"""Fully connected networks, as three articles build them, in one graph-mode file.

* `--preset wolfib` (default): Wolfgang Beyer's part 2, a two-layer fully
  connected net on CIFAR-10 (3072-120-10, ReLU, L2 0.1, gradient descent
  0.001, batch 400, 2000 steps): test accuracy 0.4633 in 97.5 s.
* `--preset mnist`: the multilayer perceptron on MNIST (784-256-256-10,
  weights from tf.random_normal, Adam 0.001, batch 100, 15 epochs): 94.75%.
* `--preset keras-mlp`: the Keras MLP on CIFAR-10 scaled to [0, 1]
  (3072-512-512-10, RMSprop, batch 32, 20 epochs): about 44%.

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
import os
import time

import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's start-up quiet
import tensorflow.compat.v1 as tf  # noqa: E402

import data_helpers  # noqa: E402

tf.disable_eager_execution()  # TensorFlow 1 style: build a graph, then run it

# Each preset reproduces its article; any command-line flag overrides a value.
PRESETS = {
    'wolfib': dict(dataset='cifar10', hidden=[120], init='truncated_normal',
                   reg_constant=0.1, optimizer='gd', learning_rate=0.001,
                   batch_size=400, max_steps=2000, epochs=None),
    'mnist': dict(dataset='mnist', hidden=[256, 256], init='random_normal',
                  reg_constant=0.0, optimizer='adam', learning_rate=0.001,
                  batch_size=100, max_steps=None, epochs=15),
    'keras-mlp': dict(dataset='cifar10-scaled', hidden=[512, 512], init='glorot_uniform',
                      reg_constant=0.0, optimizer='rmsprop', learning_rate=0.001,
                      batch_size=32, max_steps=None, epochs=20),
}
CLASSES = 10
EVAL_BATCH_SIZE = 1000   # test images per session.run: bounded memory for any test set


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
            tf.GraphKeys.REGULARIZATION_LOSSES), name='loss')
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
    parser.add_argument('--hidden', type=data_helpers.positive_int, nargs='+',
                        help='hidden layer sizes, e.g. --hidden 256 256')
    parser.add_argument('--optimizer', choices=['gd', 'adam', 'rmsprop'],
                        help='gradient descent, Adam or RMSprop (default: the preset\'s)')
    parser.add_argument('--learning-rate', type=data_helpers.positive_float,
                        help='step size (default: the preset\'s)')
    parser.add_argument('--batch-size', type=data_helpers.positive_int,
                        help='images per step (default: the preset\'s)')
    length = parser.add_mutually_exclusive_group()
    length.add_argument('--max-steps', type=data_helpers.positive_int,
                        help='train for this many steps')
    length.add_argument('--epochs', type=data_helpers.positive_int,
                        help='train for this many passes over the training set')
    parser.add_argument('--reg-constant', type=float,
                        help='L2 regularisation constant (>= 0)')
    parser.add_argument('--seed', type=int, default=None,
                        help='seed for initial weights and batches (default: random)')
    parser.add_argument('--data-dir', default=None,
                        help='where the data set is (default: $CIFAR10_DIR or '
                             '$MNIST_DIR, then the usual places, then a download)')
    parser.add_argument('--train-dir', default='tf_logs',
                        help='folder for run folders with summaries and '
                             'checkpoints (default: tf_logs)')
    parser.add_argument('--restore', action='store_true',
                        help='only evaluate the latest checkpoint in --train-dir '
                             '(or the run folder given as --train-dir) on the test set')
    args = parser.parse_args(argv)
    if args.reg_constant is not None and args.reg_constant < 0:
        parser.error('argument --reg-constant: must be >= 0, not %g' % args.reg_constant)
    # Flags left unset take the preset's value; --max-steps and --epochs
    # replace the preset's length together.
    preset = PRESETS[args.preset]
    if args.max_steps is None and args.epochs is None:
        args.max_steps, args.epochs = preset['max_steps'], preset['epochs']
    for key, value in preset.items():
        if getattr(args, key, None) is None and key not in ('max_steps', 'epochs'):
            setattr(args, key, value)
    return args


def load_dataset(name, data_dir):
    if name == 'mnist':
        return data_helpers.load_mnist(data_dir)
    return data_helpers.load_data(data_dir, normalization='scale' if name == 'cifar10-scaled'
                                  else 'mean')


def evaluate(sess, accuracy, images_placeholder, labels_placeholder, images, labels,
             batch_size=EVAL_BATCH_SIZE, loss=None):
    """Accuracy (and mean loss) over a whole set, in batches of bounded size.

    Returns:
      accuracy, or (accuracy, mean loss) when `loss` is given.
    """
    correct, loss_sum = 0.0, 0.0
    for start in range(0, len(images), batch_size):
        feed = {images_placeholder: images[start:start + batch_size],
                labels_placeholder: labels[start:start + batch_size]}
        count = len(feed[labels_placeholder])
        if loss is None:
            correct += round(float(sess.run(accuracy, feed)) * count)
        else:
            batch_accuracy, batch_loss = sess.run([accuracy, loss], feed)
            correct += round(float(batch_accuracy) * count)
            loss_sum += float(batch_loss) * count
    if loss is None:
        return correct / len(images)
    return correct / len(images), loss_sum / len(images)


def main(args):
    beginTime = time.time()
    tf.reset_default_graph()   # a fresh graph each call: the seed means the same every run
    tf.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    if not args.restore:
        print('\nParameters:')
        for key in ('preset', 'dataset', 'hidden', 'init', 'reg_constant', 'optimizer',
                    'learning_rate', 'batch_size', 'max_steps', 'epochs', 'seed',
                    'train_dir'):
            print('{} = {}'.format(key, getattr(args, key)))
        print()

    # Load the data
    data_sets = load_dataset(args.dataset, args.data_dir)
    image_pixels = data_sets['images_train'].shape[1]
    if not args.restore and args.batch_size > len(data_sets['images_train']):
        raise data_helpers.DataError('--batch-size %d is larger than the %d training images'
                                     % (args.batch_size, len(data_sets['images_train'])))

    # -------------------------------------------------------------------------
    # Prepare the TensorFlow graph
    # (We're only defining the graph here, no actual calculations taking place)
    # -------------------------------------------------------------------------

    # Define input placeholders. By default they take training batches from
    # the training set held in the graph (only the batch indices are fed each
    # step); the test set is fed through the same placeholders.
    sampler = data_helpers.InGraphSampler(data_sets['images_train'],
                                          data_sets['labels_train'], args.batch_size)
    images_placeholder = tf.placeholder_with_default(
        sampler.images, shape=[None, image_pixels], name='images')
    labels_placeholder = tf.placeholder_with_default(
        sampler.labels, shape=[None], name='labels')

    # Operation for the classifier's result
    logits = inference(images_placeholder, image_pixels, args.hidden, CLASSES,
                       reg_constant=args.reg_constant, init=args.init)

    # Class probabilities, under a name predict.py looks for
    tf.nn.softmax(logits, name='probabilities')

    # Operation for the loss function
    loss_op = loss(logits, labels_placeholder)

    # Operation for the training step
    train_step = training(loss_op, args.learning_rate, args.optimizer)

    # Operation calculating the accuracy of our predictions
    accuracy = evaluation(logits, labels_placeholder)

    # Operation merging summary data for TensorBoard
    summary = tf.summary.merge_all()

    # Define saver to save model state at checkpoints
    saver = tf.train.Saver()

    # -------------------------------------------------------------------------
    # Run the TensorFlow graph
    # -------------------------------------------------------------------------

    with tf.Session(config=data_helpers.session_config()) as sess:
        if args.restore:
            # Evaluate a saved model, as the original restore_model.py does
            checkpoint = data_helpers.latest_checkpoint(args.train_dir)
            data_helpers.restore(saver, sess, checkpoint, '--preset ' + args.preset)
            print('Restored {}'.format(checkpoint))
            test_accuracy = evaluate(sess, accuracy, images_placeholder, labels_placeholder,
                                     data_sets['images_test'], data_sets['labels_test'])
            print('Test accuracy {:g}'.format(test_accuracy))
            return test_accuracy

        # Initialize variables and create summary-writer
        sess.run(tf.global_variables_initializer())
        sampler.initialize(sess)
        run_dir = data_helpers.new_run_dir(args.train_dir)
        summary_writer = tf.summary.FileWriter(run_dir, sess.graph)
        checkpoint_file = os.path.join(run_dir, 'model.ckpt')
        data_helpers.write_model_info(run_dir, data_sets, 'mnist' if args.dataset == 'mnist'
                                      else 'cifar10', 'flat')

        # Generate input data batches: shuffled epochs, without replacement
        train_count = len(data_sets['images_train'])
        steps_per_epoch = train_count // args.batch_size
        max_steps = args.max_steps or args.epochs * steps_per_epoch
        batches = data_helpers.epoch_indices(train_count, args.batch_size, max_steps, rng)
        epoch_loss, epoch_accuracy, epoch_start = 0.0, 0.0, time.time()

        for i in range(max_steps):

            # Get next input data batch
            feed_dict = {sampler.indices: next(batches)}

            # Periodically print the model's current accuracy (step-counted
            # runs) and write summaries for TensorBoard
            if i % 100 == 0:
                if args.epochs is None:
                    train_accuracy = sess.run(accuracy, feed_dict=feed_dict)
                    print('Step {:d}, training accuracy {:g}'.format(i, train_accuracy))
                summary_writer.add_summary(sess.run(summary, feed_dict=feed_dict), i)

            # Perform a single training step
            _, batch_loss, batch_accuracy = sess.run([train_step, loss_op, accuracy],
                                                     feed_dict=feed_dict)
            epoch_loss += batch_loss
            epoch_accuracy += batch_accuracy

            # Periodically save checkpoint
            if (i + 1) % 1000 == 0:
                saver.save(sess, checkpoint_file, global_step=i + 1)
                print('Saved checkpoint')

            # Epoch-counted runs report once per epoch, as their articles do
            if args.epochs is not None and (i + 1) % steps_per_epoch == 0:
                epoch = (i + 1) // steps_per_epoch
                if args.preset == 'keras-mlp':
                    val_accuracy, val_loss = evaluate(
                        sess, accuracy, images_placeholder, labels_placeholder,
                        data_sets['images_test'], data_sets['labels_test'], loss=loss_op)
                    print('Epoch {}/{} - {:.0f}s - loss: {:.4f} - accuracy: {:.4f} - '
                          'val_loss: {:.4f} - val_accuracy: {:.4f}'.format(
                              epoch, args.epochs, time.time() - epoch_start,
                              epoch_loss / steps_per_epoch,
                              epoch_accuracy / steps_per_epoch, val_loss, val_accuracy))
                else:
                    print('Epoch:', '%04d' % epoch,
                          'cost=', '{:.9f}'.format(epoch_loss / steps_per_epoch))
                epoch_loss, epoch_accuracy, epoch_start = 0.0, 0.0, time.time()

        saver.save(sess, checkpoint_file, global_step=max_steps)
        summary_writer.close()

        # After finishing the training, evaluate on the test set
        test_accuracy = evaluate(sess, accuracy, images_placeholder, labels_placeholder,
                                 data_sets['images_test'], data_sets['labels_test'])
        if args.preset == 'mnist':
            print('Optimization Finished!')
            print('Accuracy:', test_accuracy)
        else:
            print('Test accuracy {:g}'.format(test_accuracy))

    endTime = time.time()
    print('Total time: {:5.2f}s'.format(endTime - beginTime))
    return test_accuracy


if __name__ == '__main__':
    data_helpers.exit_on_data_error(main, parse_args())
