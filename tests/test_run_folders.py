"""run_folders.py: batched evaluation, run folders, model.json, history, checkpoints."""

import json
import os

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import run_folders
from downloads import DataError


def linear_model(rng):
    """A fixed linear classifier of 6 inputs, its placeholders and loss."""
    images = tf.placeholder(tf.float32, [None, 6])
    labels = tf.placeholder(tf.int64, [None])
    logits = tf.matmul(images, tf.constant(rng.normal(size=(6, 4)), tf.float32))
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        logits=logits, labels=labels))
    return images, labels, logits, loss


def test_batched_evaluation_equals_the_whole_set_at_once():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 6)).astype(np.float32)
    y = rng.integers(0, 4, 23)
    with tf.Graph().as_default(), tf.Session() as sess:
        images, labels, logits, loss = linear_model(rng)
        whole_logits, whole_loss = sess.run([logits, loss], {images: x, labels: y})
        result = run_folders.evaluate(sess, tf.argmax(logits, 1), images, labels, x, y,
                                      means={'loss': loss}, batch_size=5)   # 5 x 4 + 3
    expected = whole_logits.argmax(1)
    np.testing.assert_array_equal(result['predictions'], expected)
    assert result['accuracy'] == np.sum(expected == y) / 23         # exactly
    assert result['loss'] == pytest.approx(float(whole_loss), rel=1e-5)
    assert 0 < result['accuracy'] < 1                              # a real mix of both


def test_fresh_graph_resets_and_seeds():
    tf.constant(1.0, name='left_over')
    draws = []
    for _ in range(2):
        rng = run_folders.fresh_graph(5)
        assert tf.get_default_graph().get_operations() == []
        uniform = tf.random.uniform([3])
        with tf.Session() as sess:
            draws.append((rng.random(), sess.run(uniform)))
    first, second = draws
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])


def test_new_run_dirs_are_unique(tmp_path):
    first = run_folders.new_run_dir(str(tmp_path), 'small-')
    second = run_folders.new_run_dir(str(tmp_path), 'small-')
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    assert os.path.basename(first).startswith('small-')


def test_model_info_and_history_files(tmp_path):
    mean = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    run_folders.write_model_info(str(tmp_path), ['a', 'b'], 'cifar10', 'nhwc', mean)
    info = json.loads((tmp_path / 'model.json').read_text())
    assert info['normalization'] == 'mean' and info['mean_image'] == list(range(12))
    assert (info['classes'], info['image_size'], info['channels']) == (['a', 'b'], 32, 3)
    run_folders.write_model_info(str(tmp_path), ['0', '1'], 'mnist', 'flat')
    info = json.loads((tmp_path / 'model.json').read_text())
    assert info['normalization'] == 'scale' and info['mean_image'] is None
    assert (info['image_size'], info['channels']) == (28, 1)

    history = run_folders.History()
    history.record(epoch=1, loss=np.float32(2.5))
    history.record(epoch=2, loss=1.5)
    history.save(str(tmp_path))
    assert json.loads((tmp_path / 'history.json').read_text()) == {
        'epoch': [1.0, 2.0], 'loss': [2.5, 1.5]}


def test_latest_checkpoint_prefers_the_folder_then_its_newest_run(tmp_path):
    with tf.Graph().as_default():
        tf.Variable(1.0)
        saver = tf.train.Saver()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            old = run_folders.new_run_dir(str(tmp_path), 'a-')
            saver.save(sess, os.path.join(old, 'model.ckpt'), global_step=1)
            new = run_folders.new_run_dir(str(tmp_path), 'b-')
            saver.save(sess, os.path.join(new, 'model.ckpt'), global_step=2)
            os.utime(old, (1, 1))                          # the older folder
    assert run_folders.latest_checkpoint(str(tmp_path)).endswith(
        os.path.join(os.path.basename(new), 'model.ckpt-2'))
    assert run_folders.latest_checkpoint(old).endswith('model.ckpt-1')
    with pytest.raises(DataError, match='no checkpoint in .*empty'):
        run_folders.latest_checkpoint(str(tmp_path / 'empty'))


def test_restoring_another_model_is_one_clear_error(tmp_path):
    path = str(tmp_path / 'model.ckpt')
    with tf.Graph().as_default():
        tf.Variable(1.0, name='w')
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            tf.train.Saver().save(sess, path)
    with tf.Graph().as_default():
        tf.Variable(1.0, name='v')                          # another model
        with tf.Session() as sess:
            with pytest.raises(DataError, match='does not match the model built with --x'):
                run_folders.restore(tf.train.Saver(), sess, path, '--x')
