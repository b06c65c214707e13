"""A softmax classifier for CIFAR-10, step by step as the article builds it.

Wolfgang Beyer, "How to Build a Simple Image Recognition System with
TensorFlow" (part 1): 3072 pixel values in, 10 class scores out, one weight
per pixel and class, trained by gradient descent on random batches. The
article reports a test accuracy of 0.3066 (25-31% from run to run).

    python softmax.py                      # the article's run
    python softmax.py --seed 1             # the same printed lines every time (on one kind of CPU)
    python softmax.py --sampler graph      # batches drawn inside the graph
"""

import argparse
import time

import cli  # (no TensorFlow inside: it sets how TensorFlow loads)
cli.prepare_tensorflow()  # a quiet start; oneDNN's kernels on every x86-64 CPU
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import data_helpers  # noqa: E402
import run_folders  # noqa: E402
import sessions  # noqa: E402

tf.disable_eager_execution()  # TensorFlow 1 style: build a graph, then run it


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Softmax classifier on CIFAR-10 (the article, part 1).')
    parser.add_argument('--batch-size', type=cli.positive_int, default=100,
                        help='images per training step (default: 100)')
    parser.add_argument('--learning-rate', type=cli.positive_float, default=0.005,
                        help='gradient descent step size (default: 0.005)')
    parser.add_argument('--max-steps', type=cli.positive_int, default=1000,
                        help='training steps (default: 1000)')
    cli.add_common_flags(parser, train_dir=None, train_dir_help=(
        'save the trained model into a new run folder here, for predict.py '
        '(default: save nothing, as the article)'))
    parser.add_argument('--sampler', choices=['feed', 'graph'], default='feed',
                        help="'feed': numpy batches through feed_dict, as the "
                             "article; 'graph': the training set kept in device "
                             "memory and batches drawn in the graph (default: feed)")
    return parser.parse_args(argv)


def main(args):
    beginTime = time.time()

    # Parameter definitions
    batch_size = args.batch_size
    learning_rate = args.learning_rate
    max_steps = args.max_steps

    # A seed removes randomness: the same seed prints the same lines (on the
    # same kind of CPU; another sums in another order and rounds differently)
    rng = sessions.fresh_graph(args.seed)

    # Prepare data
    data_sets = data_helpers.load_data(args.data_dir)
    cli.check_batch_size(batch_size, len(data_sets['images_train']))

    # Where the trained model will be saved, when asked (not part of the
    # article): created now, so a --train-dir that cannot be written costs no
    # training
    if args.train_dir:
        run_dir = run_folders.start_run_dir(args.train_dir, '', data_sets['classes'],
                                            'cifar10', 'flat', data_sets['mean_image'],
                                            script='softmax')

    # -------------------------------------------------------------------------
    # Prepare the TensorFlow graph
    # (We're only defining the graph here, no actual calculations taking place)
    # -------------------------------------------------------------------------

    # Define input placeholders. With --sampler graph the placeholders default
    # to batches drawn inside the graph, so training steps need no feed; the
    # test set is still fed in through the same placeholders.
    if args.sampler == 'graph':
        sampler = data_helpers.InGraphSampler(
            data_sets['images_train'], data_sets['labels_train'], batch_size)
        images_placeholder = tf.placeholder_with_default(
            sampler.images, shape=[None, 3072], name='images')
        labels_placeholder = tf.placeholder_with_default(
            sampler.labels, shape=[None], name='labels')
    else:
        images_placeholder = tf.placeholder(tf.float32, shape=[None, 3072], name='images')
        labels_placeholder = tf.placeholder(tf.int64, shape=[None], name='labels')

    # Define variables (these are the values we want to optimize)
    weights = tf.Variable(tf.zeros([3072, 10]))
    biases = tf.Variable(tf.zeros([10]))

    # Define the classifier's result
    logits = tf.matmul(images_placeholder, weights) + biases
    # (and the class probabilities, under the name predict.py looks for)
    tf.nn.softmax(logits, name='probabilities')

    # Define the loss function
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        logits=logits, labels=labels_placeholder), name='loss')

    # Define the training operation
    train_step = tf.train.GradientDescentOptimizer(learning_rate).minimize(
        loss, name='train_step')

    # Operation comparing prediction with true label
    correct_prediction = tf.equal(tf.argmax(logits, 1), labels_placeholder)

    # Operation calculating the accuracy of our predictions
    accuracy = tf.reduce_mean(tf.cast(correct_prediction, tf.float32), name='accuracy')

    # -------------------------------------------------------------------------
    # Run the TensorFlow graph
    # -------------------------------------------------------------------------

    with tf.Session() as sess:
        # Initialize variables
        sess.run(tf.global_variables_initializer())
        if args.sampler == 'graph':
            sampler.initialize(sess)

        # Repeat max_steps times
        for i in range(max_steps):

            # Generate input data batch. The graph sampler draws its own batch
            # in every step; on print steps we fetch one so that accuracy and
            # training see the same images, as in the article.
            if args.sampler == 'feed':
                images_batch, labels_batch = data_helpers.random_batch(
                    data_sets['images_train'], data_sets['labels_train'],
                    batch_size, rng)
                feed = {images_placeholder: images_batch,
                        labels_placeholder: labels_batch}
            elif i % 100 == 0:
                images_batch, labels_batch = sess.run([sampler.images, sampler.labels])
                feed = {images_placeholder: images_batch,
                        labels_placeholder: labels_batch}
            else:
                feed = None

            # Periodically print out the model's current accuracy
            if i % 100 == 0:
                train_accuracy = sess.run(accuracy, feed_dict=feed)
                print('Step {:5d}: training accuracy {:g}'.format(i, train_accuracy))

            # Perform a single training step
            sess.run(train_step, feed_dict=feed)

        # After finishing the training, evaluate on the test set
        test_accuracy = sess.run(accuracy, feed_dict={
            images_placeholder: data_sets['images_test'],
            labels_placeholder: data_sets['labels_test']})
        print('Test accuracy {:g}'.format(test_accuracy))

        # Save the trained model when asked (not part of the article)
        if args.train_dir:
            checkpoints.save_checkpoint(checkpoints.saver(), sess, run_dir)

    endTime = time.time()
    print('Total time: {:5.2f}s'.format(endTime - beginTime))
    return test_accuracy


if __name__ == '__main__':
    cli.exit_on_error(main, parse_args())
