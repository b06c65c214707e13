"""softmax.py: the article's graph, its training, its flags and its output."""

import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import data_helpers
import softmax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(capsys, *argv):
    accuracy = softmax.main(softmax.parse_args(list(argv)))
    return accuracy, capsys.readouterr().out


def test_graph_shapes(fake_cifar10, capsys):
    run_main(capsys, '--data-dir', fake_cifar10, '--max-steps', '1')
    graph = tf.get_default_graph()
    images = graph.get_tensor_by_name('images:0')
    labels = graph.get_tensor_by_name('labels:0')
    assert images.shape.as_list() == [None, 3072]
    assert labels.shape.as_list() == [None] and labels.dtype == tf.int64
    cross_entropy = [op for op in graph.get_operations()
                     if op.type == 'SparseSoftmaxCrossEntropyWithLogits']
    logits = cross_entropy[0].inputs[0]
    assert logits.shape.as_list() == [None, 10]
    trainable = tf.trainable_variables()
    assert sorted(v.shape.as_list() for v in trainable) == [[10], [3072, 10]]


@pytest.mark.parametrize('sampler', ['feed', 'graph'])
def test_training_steps_lower_the_loss(fake_cifar10, capsys, sampler):
    run_main(capsys, '--data-dir', fake_cifar10, '--max-steps', '1', '--sampler', sampler)
    graph = tf.get_default_graph()
    data = data_helpers.load_data(fake_cifar10)
    feed = {graph.get_tensor_by_name('images:0'): data['images_train'],
            graph.get_tensor_by_name('labels:0'): data['labels_train']}
    loss = graph.get_tensor_by_name('loss:0')
    train_step = graph.get_operation_by_name('train_step')
    with tf.Session(graph=graph) as sess:
        sess.run(tf.global_variables_initializer())
        before = sess.run(loss, feed)
        for _ in range(5):
            sess.run(train_step, feed)
        after = sess.run(loss, feed)
    assert before == pytest.approx(np.log(10), rel=1e-5)   # zero init: uniform
    assert after < 0.5 * before


@pytest.mark.parametrize('sampler', ['feed', 'graph'])
def test_output_is_the_article_and_training_learns(fake_cifar10, capsys, sampler):
    accuracy, out = run_main(capsys, '--data-dir', fake_cifar10, '--max-steps', '250',
                             '--sampler', sampler, '--seed', '0')
    lines = out.splitlines()
    assert [line[:10] for line in lines[:3]] == ['Step     0', 'Step   100', 'Step   200']
    assert re.fullmatch(r'Step   200: training accuracy [0-9.e-]+', lines[2])
    assert re.fullmatch(r'Test accuracy [0-9.e-]+', lines[3])
    assert re.fullmatch(r'Total time: +[0-9]+\.[0-9]{2}s', lines[4])
    assert len(lines) == 5
    assert accuracy > 0.9            # the fake classes are linearly separable


@pytest.mark.parametrize('sampler', ['feed', 'graph'])
def test_same_seed_prints_the_same_lines(fake_cifar10, capsys, sampler):
    args = ('--data-dir', fake_cifar10, '--max-steps', '201', '--sampler', sampler,
            '--learning-rate', '1e-5')
    _, first = run_main(capsys, *args, '--seed', '7')
    _, second = run_main(capsys, *args, '--seed', '7')
    _, other = run_main(capsys, *args, '--seed', '8')
    drop_time = lambda out: [l for l in out.splitlines() if not l.startswith('Total')]
    assert drop_time(first) == drop_time(second)
    assert drop_time(first) != drop_time(other)


def shuffle_labels(folder, seed=0):
    """Re-labels every batch at random: a set a linear model learns only slowly."""
    rng = np.random.default_rng(seed)
    for name in data_helpers.TRAIN_BATCHES + [data_helpers.TEST_BATCH]:
        path = os.path.join(folder, name)
        with open(path, 'rb') as f:
            batch = pickle.load(f)
        batch['labels'] = [int(x) for x in rng.permutation(batch['labels'])]
        with open(path, 'wb') as f:
            pickle.dump(batch, f, protocol=2)


# What softmax.py printed for these runs before the modules were split up
# (commit 2b781b3); the split must not change a line of it.
PINNED = {
    'feed': ['Step     0: training accuracy 0.12', 'Step   100: training accuracy 0.48',
             'Step   200: training accuracy 0.61', 'Test accuracy 0.133333'],
    'graph': ['Step     0: training accuracy 0.05', 'Step   100: training accuracy 0.5',
              'Step   200: training accuracy 0.57', 'Test accuracy 0.133333'],
}


@pytest.mark.parametrize('sampler', ['feed', 'graph'])
def test_seed_1_prints_the_pinned_lines(fake_cifar10, capsys, sampler):
    shuffle_labels(fake_cifar10)
    _, out = run_main(capsys, '--data-dir', fake_cifar10, '--max-steps', '300', '--sampler',
                      sampler, '--learning-rate', '1e-7', '--seed', '1')
    lines = out.splitlines()
    assert lines[:-1] == PINNED[sampler]
    assert re.fullmatch(r'Total time: +[0-9]+\.[0-9]{2}s', lines[-1])


@pytest.mark.parametrize('flag, value', [
    ('--batch-size', '0'), ('--max-steps', '-5'), ('--learning-rate', '0'),
    ('--learning-rate', 'fast'), ('--sampler', 'magic'), ('--seed', '-1')])
def test_bad_flags_are_refused_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        softmax.parse_args([flag, value])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


REAL_DATA = os.environ.get('CIFAR10_DIR')   # read before the fixtures hide it


@pytest.mark.skipif(not REAL_DATA, reason='real CIFAR-10 not available: set $CIFAR10_DIR '
                    '(CI builds it from ../shared) to run the article reproduction')
def test_article_defaults_on_real_cifar10():
    # Measured on official CIFAR-10 (BENCHMARKS.md, README): seeds 1-10 gave
    # 0.2571-0.3190 on one CPU, and seed 1 itself 0.2892, 0.2808 and 0.2507 on
    # three kinds of CPU: each sums in its own order, and 1000 steps of a large
    # learning rate on raw pixels carry the rounding as far as another seed
    # does. So the bar is the article's 25-31% with a point of room each side,
    # on every CPU; a broken model scores about 0.10.
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'softmax.py'), '--data-dir', REAL_DATA,
         '--seed', '1'], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    print(result.stdout)
    accuracy = float(re.search(r'^Test accuracy (\S+)$', result.stdout, re.M).group(1))
    assert 0.24 <= accuracy <= 0.32
