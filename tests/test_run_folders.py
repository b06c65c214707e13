"""run_folders.py, sessions.py and checkpoints.py: batched evaluation, run folders,
model.json, history, checkpoints."""

import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import checkpoints
import run_folders
import sessions
from errors import DataError


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
        result = sessions.evaluate(sess, tf.argmax(logits, 1), images, labels, x, y,
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
        rng = sessions.fresh_graph(5)
        assert tf.get_default_graph().get_operations() == []
        uniform = tf.random.uniform([3])
        with tf.Session() as sess:
            draws.append((rng.random(), sess.run(uniform)))
    first, second = draws
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])


def test_importing_sessions_gives_the_cpu_the_bfc_allocator():
    # conftest imports sessions first, as every script does; only the BFC
    # allocator keeps statistics (the default one raises ValueError here)
    with tf.Graph().as_default(), tf.Session() as sess:
        sess.run(tf.reduce_sum(tf.ones([1000, 1000])))
    assert os.environ['TF_CPU_ALLOCATOR_USE_BFC'] == 'true'
    assert tf.config.experimental.get_memory_info('CPU:0')['peak'] >= 4 * 1000 * 1000


def test_run_dirs_are_created_whole_and_unique(tmp_path):
    train_dir = tmp_path / 'runs'                           # created when missing
    first = run_folders.start_run_dir(str(train_dir), 'small-', ['a', 'b'], 'cifar10', 'nhwc')
    second = run_folders.start_run_dir(str(train_dir), 'small-', ['a', 'b'], 'cifar10', 'nhwc')
    assert first != second and os.path.basename(first).startswith('small-')
    for run in (first, second):
        assert os.listdir(run) == ['model.json']
    assert sorted(os.listdir(train_dir)) == sorted(map(os.path.basename, [first, second]))


@pytest.mark.parametrize('where', ['a file', 'under a file', 'read-only'])
def test_an_unwritable_train_dir_is_one_clear_error(tmp_path, where):
    (tmp_path / 'file').write_text('x')
    readonly = tmp_path / 'readonly'
    readonly.mkdir()
    readonly.chmod(0o500)
    path = {'a file': tmp_path / 'file', 'under a file': tmp_path / 'file' / 'runs',
            'read-only': readonly}[where]
    if where == 'read-only' and os.access(str(readonly), os.W_OK):
        pytest.skip('running as a user who can write anywhere')
    reason = {'a file': r'\(a file, not a folder\)', 'under a file': r'\(Not a directory\)',
              'read-only': r'\(Permission denied\)'}[where]
    with pytest.raises(DataError, match='^cannot create a run folder in %s %s: give a '
                                        '--train-dir you can write to$'
                                        % (re.escape(str(path)), reason)):
        run_folders.start_run_dir(str(path), '', ['a', 'b'], 'cifar10', 'flat')


def test_model_info_and_history_files(tmp_path):
    mean = np.arange(32 * 32 * 3, dtype=np.float32)
    run_folders.write_model_info(str(tmp_path), ['a', 'b'], 'cifar10', 'flat', mean)
    info = run_folders.read_model_info(str(tmp_path))
    assert info['normalization'] == 'mean' and info['mean_image'] == list(range(3072))
    assert (info['classes'], info['image_size'], info['channels']) == (['a', 'b'], 32, 3)
    run_folders.write_model_info(str(tmp_path), ['0', '1'], 'mnist', 'flat')
    info = run_folders.read_model_info(str(tmp_path))
    assert info['normalization'] == 'scale' and info['mean_image'] is None
    assert (info['image_size'], info['channels']) == (28, 1)

    history = run_folders.History()
    history.record(epoch=1, loss=np.float32(2.5))
    history.record(epoch=2, loss=1.5)
    history.save(str(tmp_path))
    assert json.loads((tmp_path / 'history.json').read_text()) == {
        'epoch': [1.0, 2.0], 'loss': [2.5, 1.5]}


@pytest.mark.parametrize('change, message', [
    (lambda info: info.pop('input'), "has no 'input'"),
    (lambda info: info.update(mean_image=[0.0] * 5), "'mean_image' is .* expected a list of 3072"),
    (lambda info: info.update(image_size='32'), "'image_size' is '32', expected a size"),
    (lambda info: info.update(classes=[]), "'classes' is \\[\\], expected a list of class"),
    (lambda info: info.update(layout='nchw'), "'layout' is 'nchw'"),
    (lambda info: info.update(mean_image=[float('nan')] * 3072), "'mean_image' is"),
])
def test_a_damaged_model_json_names_the_file_and_key(tmp_path, change, message):
    run_folders.write_model_info(str(tmp_path), ['a', 'b'], 'cifar10', 'flat', np.zeros(3072))
    path = tmp_path / 'model.json'
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=str(path) + '.*' + message):
        run_folders.read_model_info(str(tmp_path))
    path.write_text('{"dataset": "cifar10", ')                 # cut short
    with pytest.raises(DataError, match='cannot read %s' % path):
        run_folders.read_model_info(str(tmp_path))


def save_steps(folder, steps, value=1.0, name='w'):
    """Saves a one-variable model at each step; returns the saver's prefixes."""
    with tf.Graph().as_default():
        variable = tf.Variable(0.0, name=name)
        saver = checkpoints.saver()
        with tf.Session() as sess:
            for step in steps:
                sess.run(variable.assign(value * step))
                checkpoints.save_checkpoint(saver, sess, folder, step)
    return [os.path.join(folder, 'model.ckpt-%d' % step) for step in steps]


def restored_value(folder, name='w', built_with='--x'):
    with tf.Graph().as_default():
        variable = tf.Variable(-1.0, name=name)
        with tf.Session() as sess:
            checkpoint = checkpoints.restore(checkpoints.saver(), sess, folder, built_with)
            return os.path.basename(checkpoint), sess.run(variable)


def test_restore_takes_the_folder_itself_or_its_newest_run(tmp_path):
    new = run_folders.start_run_dir(str(tmp_path), 'a-', ['a', 'b'], 'cifar10', 'flat')
    save_steps(new, [2])
    old = run_folders.start_run_dir(str(tmp_path), 'b-', ['a', 'b'], 'cifar10', 'flat')
    save_steps(old, [1, 3], value=10.0)
    for name in os.listdir(old):
        os.utime(os.path.join(old, name), (1, 1))          # written long ago
    assert checkpoints.checkpoint_folder(str(tmp_path)) == new
    assert restored_value(str(tmp_path)) == ('model.ckpt-2', 2.0)
    assert restored_value(old) == ('model.ckpt-3', 30.0)    # the highest step
    with pytest.raises(DataError, match='no complete checkpoint in .*empty'):
        checkpoints.checkpoint_folder(str(tmp_path / 'empty'))


def test_a_moved_or_copied_run_folder_restores_its_own_weights(tmp_path):
    original = tmp_path / 'a' / 'run'
    original.mkdir(parents=True)
    save_steps(str(original), [1, 2])
    assert 'model.ckpt-2' in (original / 'checkpoint').read_text()
    assert str(tmp_path) not in (original / 'checkpoint').read_text()   # relative paths
    copy = tmp_path / 'b' / 'copy'
    shutil.copytree(original, copy)
    moved = tmp_path / 'c' / 'moved'
    moved.parent.mkdir()
    shutil.move(str(original), str(moved))
    save_steps(str(copy), [3], value=10.0)                  # the copy trains on
    assert restored_value(str(moved)) == ('model.ckpt-2', 2.0)
    assert restored_value(str(copy)) == ('model.ckpt-3', 30.0)


@pytest.mark.parametrize('damage', ['truncated data', 'truncated index', 'empty data',
                                    'no data yet', 'no index yet'])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    newest = save_steps(str(tmp_path), [1, 2])[-1]
    data, index = newest + '.data-00000-of-00001', newest + '.index'
    if damage == 'truncated data':
        with open(data, 'r+b') as f:
            f.truncate(2)
    elif damage == 'truncated index':
        with open(index, 'r+b') as f:
            f.truncate(os.path.getsize(index) // 2)
    elif damage == 'empty data':
        open(data, 'wb').close()
    else:
        os.remove(data if damage == 'no data yet' else index)
    assert restored_value(str(tmp_path)) == ('model.ckpt-1', 1.0)


def test_no_usable_checkpoint_is_one_line_naming_the_file(tmp_path):
    (newest,) = save_steps(str(tmp_path), [1])
    with open(newest + '.data-00000-of-00001', 'r+b') as f:
        f.truncate(2)
    with pytest.raises(DataError, match='no usable checkpoint: .*model.ckpt-1 is damaged'):
        restored_value(str(tmp_path))


def test_restoring_another_model_is_one_clear_error(tmp_path):
    save_steps(str(tmp_path), [1, 2])
    with pytest.raises(DataError, match='model.ckpt-2 does not match the model built '
                                        'with --x'):
        restored_value(str(tmp_path), name='v')


def test_restoring_other_shapes_is_one_clear_error_not_a_silent_reshape(tmp_path):
    # A resource variable takes any shape assigned to it: without the check a
    # 3-class run's weights loaded into a 2-class graph, and scored nonsense
    with tf.Graph().as_default():
        tf.Variable(np.ones([4, 3], np.float32), name='logits')
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            checkpoints.save_checkpoint(checkpoints.saver(), sess, str(tmp_path), 1)
    with tf.Graph().as_default():
        logits = tf.Variable(np.zeros([4, 2], np.float32), name='logits')
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            with pytest.raises(DataError, match=re.escape(
                    'model.ckpt-1 does not match the model built with --x (logits: [4, 3] in the '
                    'checkpoint, [4, 2] here): give the options and the data it was trained '
                    'with')):
                checkpoints.restore(checkpoints.saver(), sess, str(tmp_path), '--x')
            assert sess.run(logits).shape == (4, 2)


def test_an_unwritable_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / 'file').write_text('not a folder')
    with tf.Graph().as_default():
        tf.Variable(0.0)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            with pytest.raises(DataError, match='cannot save a checkpoint in .*file/run'):
                checkpoints.save_checkpoint(checkpoints.saver(), sess,
                                            str(tmp_path / 'file' / 'run'))


def test_a_missing_shard_is_damage_not_another_model(tmp_path):
    save_steps(str(tmp_path), [1, 2])
    os.remove(str(tmp_path / 'model.ckpt-2.data-00000-of-00001'))
    assert restored_value(str(tmp_path)) == ('model.ckpt-1', 1.0)


def test_run_dirs_started_together_all_get_their_own_folder(tmp_path):
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: run_folders.start_run_dir(
            str(tmp_path / 'runs'), 'x-', ['a', 'b'], 'cifar10', 'flat'), range(16)))
    assert len(set(runs)) == 16
    assert all(os.listdir(run) == ['model.json'] for run in runs)


def test_checkpoints_a_live_run_deleted_meanwhile_are_listed_again(tmp_path):
    folder = str(tmp_path)
    save_steps(folder, [1, 2])
    loaded = []

    def load(copy):
        loaded.append(os.path.basename(copy))
        if len(loaded) == 1:   # meanwhile the run saved step 3 and deleted 1 and 2
            save_steps(folder, [3])
            for path in glob.glob(os.path.join(folder, 'model.ckpt-[12].*')):
                os.remove(path)
            raise tf.errors.DataLossError(None, None, 'cut short')
        return 'restored'

    prefix, result = checkpoints._newest_that_loads(folder, load)
    assert (os.path.basename(prefix), result) == ('model.ckpt-3', 'restored')
    assert loaded == ['model.ckpt-2', 'model.ckpt-3']      # 1 was gone: never loaded


def test_saving_hides_tensorflows_deprecation_warnings(tmp_path):
    # Deleting the oldest checkpoint makes the v1 saver log 'deprecated'
    class Saver:
        def save(self, session, path, global_step=None):
            seen.append(tf.logging.get_verbosity())
            return path

    seen, before = [], tf.logging.get_verbosity()
    checkpoints.save_checkpoint(Saver(), None, str(tmp_path), 3)
    assert seen == [tf.logging.ERROR]
    assert tf.logging.get_verbosity() == before
