"""data_helpers: finding, reading and validating the data, and the samplers."""

import os
import pickle
import re
import struct
import time

import numpy as np
import pytest

import data_helpers
from conftest import IMAGES_PER_BATCH, write_fake_cifar10
from downloads import cache_dir

TRAIN = 5 * IMAGES_PER_BATCH
TEST = IMAGES_PER_BATCH


# --- load_data ---------------------------------------------------------------

@pytest.mark.parametrize('keys', ['str', 'bytes'])
def test_load_data_shapes_dtypes_and_mean_subtraction(tmp_path, keys):
    folder = write_fake_cifar10(str(tmp_path / 'c' / 'cifar-10-batches-py'), keys=keys)
    raw_train, _, raw_test, _ = data_helpers.load_raw(folder)
    data = data_helpers.load_data(folder)

    assert data['images_train'].shape == (TRAIN, 3072)
    assert data['images_test'].shape == (TEST, 3072)
    assert data['labels_train'].shape == (TRAIN,)
    assert data['labels_test'].shape == (TEST,)
    assert data['images_train'].dtype == np.float32
    assert data['labels_train'].dtype == np.int64
    assert data['classes'] == ['plane', 'car', 'bird', 'cat', 'deer', 'dog',
                               'frog', 'horse', 'ship', 'truck']
    # The mean training image is subtracted from both sets.
    mean_image = raw_train.mean(axis=0)
    np.testing.assert_allclose(data['images_train'].mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(data['images_test'], raw_test - mean_image, atol=1e-3)


def test_load_test_batch_reads_the_test_set_alone(fake_cifar10):
    _, _, raw_test, raw_labels = data_helpers.load_raw(fake_cifar10)
    with open(os.path.join(fake_cifar10, 'data_batch_3'), 'wb') as f:
        f.write(b'garbage')                      # a training batch: not read at all
    with pytest.raises(data_helpers.DataError):
        data_helpers.load_raw(fake_cifar10)
    images, labels = data_helpers.load_test_batch(fake_cifar10)
    np.testing.assert_array_equal(images, raw_test)
    np.testing.assert_array_equal(labels, raw_labels)


def test_load_data_finds_the_parent_folder_too(fake_cifar10):
    data = data_helpers.load_data(os.path.dirname(fake_cifar10))
    assert data['images_train'].shape == (TRAIN, 3072)


def test_scaled_and_nhwc_layouts(fake_cifar10):
    raw_train, labels, _, _ = data_helpers.load_raw(fake_cifar10)
    data = data_helpers.load_data(fake_cifar10, normalization='scale', layout='nhwc')
    images = data['images_train']
    assert images.shape == (TRAIN, 32, 32, 3) and images.dtype == np.float32
    assert images.flags['C_CONTIGUOUS']
    assert 0 <= images.min() and images.max() <= 1
    # Row layout is 1024 red, 1024 green, 1024 blue values, rows top to bottom.
    np.testing.assert_allclose(images[3, 0, 1, 0], raw_train[3, 1] / 255, rtol=1e-6)
    np.testing.assert_allclose(images[3, 2, 5, 1], raw_train[3, 1024 + 2 * 32 + 5] / 255,
                               rtol=1e-6)
    np.testing.assert_allclose(images[3, 31, 31, 2], raw_train[3, 3071] / 255, rtol=1e-6)
    # Pixel 0 carries the label in the fake data: images and labels stay paired.
    np.testing.assert_array_equal(np.round(images[:, 0, 0, 0] * 255 / 20), labels)


def test_environment_variable_and_working_directory(fake_cifar10, monkeypatch, tmp_path):
    monkeypatch.setenv('CIFAR10_DIR', fake_cifar10)
    assert data_helpers.find_cifar10() == fake_cifar10
    monkeypatch.delenv('CIFAR10_DIR')
    monkeypatch.chdir(os.path.dirname(fake_cifar10))   # ./cifar-10-batches-py
    assert os.path.samefile(data_helpers.find_cifar10(download=False), fake_cifar10)


def test_named_folder_without_data_is_an_error(tmp_path, monkeypatch):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'a file').write_text('x')
    for name, what in [('empty', r'holds no CIFAR-10 batches \(data_batch_1..5, test_batch\)'),
                       ('nowhere', 'does not exist'),
                       ('a file', 'is a file, not a folder')]:
        where = re.escape(str(tmp_path / name))
        with pytest.raises(data_helpers.DataError,
                           match='^--data-dir %s %s; fix the path' % (where, what)):
            data_helpers.find_cifar10(str(tmp_path / name))
    monkeypatch.setenv('CIFAR10_DIR', str(tmp_path / 'nowhere'))
    with pytest.raises(data_helpers.DataError, match=r'^\$CIFAR10_DIR .*nowhere does not exist'):
        data_helpers.find_cifar10()
    # cnn.py's and fast_cnn.py's data: a folder of pictures would do too, so say so
    with pytest.raises(data_helpers.DataError, match='^--data-dir .*empty holds no CIFAR-10 '
                                                     'batches .* and no class folders of pictures'):
        data_helpers.load_images(str(tmp_path / 'empty'))


def test_truncated_batch_names_the_file(fake_cifar10):
    path = os.path.join(fake_cifar10, 'data_batch_3')
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content[:len(content) // 2])
    with pytest.raises(data_helpers.DataError, match='data_batch_3 is truncated'):
        data_helpers.load_data(fake_cifar10)


@pytest.mark.parametrize('content, message', [
    (['not', 'a', 'dict'], 'holds a list'),
    ({'labels': [0]}, "has no 'data'"),
    ({'data': np.zeros((2, 100), np.uint8), 'labels': [0, 1]}, r'uint8 \(2, 100\)'),
    ({'data': np.zeros((2, 3072), np.float64), 'labels': [0, 1]}, 'float64'),
    ({'data': np.zeros((2, 3072), np.uint8), 'labels': [0]}, r'2 integer labels, not int64 of shape \(1,\)'),
    ({'data': np.zeros((2, 3072), np.uint8), 'labels': [[0], [1, 2]]}, '2 integer labels'),
    ({'data': np.zeros((2, 3072), np.uint8), 'labels': [0.5, 1.0]}, 'not float64'),
    ({'data': np.zeros((2, 3072), np.uint8), 'labels': [0, 10]}, 'outside 0..9'),
])
def test_foreign_batch_names_the_file(fake_cifar10, content, message):
    with open(os.path.join(fake_cifar10, 'test_batch'), 'wb') as f:
        pickle.dump(content, f, protocol=2)
    with pytest.raises(data_helpers.DataError, match='test_batch.*' + message):
        data_helpers.load_data(fake_cifar10)


def test_batch_with_too_few_images_is_caught(fake_cifar10):
    path = os.path.join(fake_cifar10, 'data_batch_2')
    with open(path, 'rb') as f:
        batch = pickle.load(f)
    batch['data'], batch['labels'] = batch['data'][:5], batch['labels'][:5]
    with open(path, 'wb') as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(data_helpers.DataError, match='data_batch_2 holds 5 images, expected 30'):
        data_helpers.load_data(fake_cifar10)


# --- samplers ----------------------------------------------------------------

@pytest.fixture
def small_set():
    images = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    labels = np.arange(50) % 10
    return images, labels


def test_random_batch_shapes_pairing_and_seed(small_set):
    images, labels = small_set
    batch_images, batch_labels = data_helpers.random_batch(
        images, labels, 64, np.random.default_rng(1))
    assert batch_images.shape == (64, 4) and batch_labels.shape == (64,)
    np.testing.assert_array_equal(batch_images[:, 0] // 4 % 10, batch_labels)
    again = data_helpers.random_batch(images, labels, 64, np.random.default_rng(1))
    np.testing.assert_array_equal(again[0], batch_images)
    # With replacement: 64 draws from 50 images must repeat some.
    assert len(np.unique(batch_images[:, 0])) < 64


def test_gen_batch_epochs_have_no_repeats(small_set):
    images, labels = small_set
    batches = list(data_helpers.gen_batch(images, labels, 8, 12, np.random.default_rng(0)))
    assert len(batches) == 12
    assert all(b[0].shape == (8, 4) and b[1].shape == (8,) for b in batches)
    # 50 // 8 = 6 batches per epoch, the remainder dropped.
    for epoch in (batches[:6], batches[6:]):
        seen = np.concatenate([b[0][:, 0] for b in epoch])
        assert len(np.unique(seen)) == len(seen) == 48
    assert not np.array_equal(batches[0][0], batches[6][0])   # reshuffled
    for batch_images, batch_labels in batches:
        np.testing.assert_array_equal(batch_images[:, 0] // 4 % 10, batch_labels)
    again = list(data_helpers.gen_batch(images, labels, 8, 12, np.random.default_rng(0)))
    np.testing.assert_array_equal(again[7][0], batches[7][0])


def test_epoch_indices_slice_each_permutation_and_drop_the_remainder():
    class Permutations:       # a reversed order first, then the natural one
        calls = 0

        def permutation(self, count):
            self.calls += 1
            return np.arange(count)[::-1] if self.calls == 1 else np.arange(count)

    batches = list(data_helpers.epoch_indices(10, 4, 5, Permutations()))
    # 10 // 4 = 2 batches an epoch; the remaining 2 indices are dropped
    assert [b.tolist() for b in batches] == [[9, 8, 7, 6], [5, 4, 3, 2], [0, 1, 2, 3],
                                            [4, 5, 6, 7], [0, 1, 2, 3]]


def test_load_data_arrays_are_aligned_for_zero_copy_feeding(fake_cifar10):
    data = data_helpers.load_data(fake_cifar10)
    for key in ('images_train', 'images_test'):
        assert data[key].ctypes.data % 64 == 0 and data[key].flags['C_CONTIGUOUS']


def test_gen_batch_refuses_batches_larger_than_the_set(small_set):
    with pytest.raises(ValueError, match='batch_size'):
        next(data_helpers.gen_batch(*small_set, 51, 1))


def _in_graph_batches(images, labels, seed, draws=3):
    import tensorflow.compat.v1 as tf
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        sampler = data_helpers.InGraphSampler(images, labels, 16)
        with tf.Session() as sess:
            sampler.initialize(sess)
            return [sess.run([sampler.images, sampler.labels]) for _ in range(draws)], graph


def test_in_graph_sampler_shapes_pairing_seed_and_small_graph(small_set):
    images, labels = small_set
    batches, _ = _in_graph_batches(images, labels, seed=5)
    for batch_images, batch_labels in batches:
        assert batch_images.shape == (16, 4) and batch_labels.shape == (16,)
        np.testing.assert_array_equal(batch_images[:, 0] // 4 % 10, batch_labels)
    # Drawn from the whole set: 48 draws from 50 images reach both ends
    drawn = np.concatenate([batch_images[:, 0] // 4 for batch_images, _ in batches])
    assert drawn.min() < 10 and drawn.max() >= 40
    assert not np.array_equal(batches[0][0], batches[1][0])
    again, _ = _in_graph_batches(images, labels, seed=5)
    for (a, _), (b, _) in zip(batches, again):
        np.testing.assert_array_equal(a, b)


def test_in_graph_sampler_gathers_fed_indices(small_set):
    import tensorflow.compat.v1 as tf
    images, labels = small_set
    with tf.Graph().as_default():
        sampler = data_helpers.InGraphSampler(images, labels, 16)
        with tf.Session() as sess:
            sampler.initialize(sess)
            got_images, got_labels = sess.run([sampler.images, sampler.labels],
                                              {sampler.indices: [4, 0, 49]})
    np.testing.assert_array_equal(got_images, images[[4, 0, 49]])
    np.testing.assert_array_equal(got_labels, labels[[4, 0, 49]])


def test_in_graph_sampler_keeps_a_large_set_out_of_the_graph_def():
    # The data enters through a placeholder, not as a constant in the GraphDef.
    images = np.zeros((2000, 3072), np.float32)    # 24 MB
    _, graph = _in_graph_batches(images, np.zeros(2000, np.int64), seed=1, draws=1)
    assert graph.as_graph_def().ByteSize() < 100_000


# --- the download, through load_data ----------------------------------------

def test_load_data_downloads_into_the_cache_when_nothing_is_found(
        served_cifar10, monkeypatch, tmp_path):
    url, md5 = served_cifar10
    monkeypatch.setattr(data_helpers, 'CIFAR10_URL', url)
    monkeypatch.setattr(data_helpers, 'CIFAR10_MD5', md5)
    data = data_helpers.load_data()
    assert data['images_test'].shape == (TEST, 3072)
    cached = os.path.join(cache_dir(), 'cifar-10-batches-py')
    assert cached.startswith(str(tmp_path)) and os.path.isdir(cached)


def test_unreachable_server_says_where_to_place_the_data(monkeypatch, unused_url):
    monkeypatch.setattr(data_helpers, 'CIFAR10_URL', unused_url)
    with pytest.raises(data_helpers.DataError) as error:
        data_helpers.load_data()
    message = str(error.value)
    assert 'cannot download ' + unused_url in message and '\n' not in message
    assert os.path.join(cache_dir(), 'cifar-10-batches-py') in message   # where to place it
    assert os.listdir(cache_dir()) == []                                # nothing left


# --- hostile or damaged files ------------------------------------------------

class _CreatesAFile:
    """Unpickling this calls os.system, as a malicious data_batch_1 would."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, ('touch %s' % self.path,)


def test_a_pickle_that_runs_code_is_refused(fake_cifar10, tmp_path):
    created = tmp_path / 'created-by-the-pickle'
    path = os.path.join(fake_cifar10, 'data_batch_1')
    with open(path, 'rb') as f:
        batch = pickle.load(f)
    batch['filenames'] = _CreatesAFile(created)           # a quiet payload
    with open(path, 'wb') as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(data_helpers.DataError,
                       match='data_batch_1 is not a CIFAR-10 batch: it asks to call '
                             '(posix|os|nt).system.*refusing'):
        data_helpers.load_data(fake_cifar10)
    assert not created.exists()


def test_the_official_layout_still_loads_through_the_restricted_unpickler(fake_cifar10):
    # numpy arrays pickled by Python 3 (numpy._core, _codecs.encode) and the
    # Python-2 names of the official files (numpy.core.multiarray)
    path = os.path.join(fake_cifar10, 'test_batch')
    with open(path, 'rb') as f:
        content = f.read()
    assert b'_codecs' in content
    python2_style = content.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
    with open(path, 'wb') as f:
        f.write(python2_style)
    images, _ = data_helpers.load_test_batch(fake_cifar10)
    assert images.shape == (TEST, 3072)


def test_a_damaged_encoding_name_is_one_line(fake_cifar10):
    path = os.path.join(fake_cifar10, 'test_batch')
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content.replace(b'latin1', b'latinZ', 1))
    with pytest.raises(data_helpers.DataError,
                       match='test_batch is truncated or not a CIFAR-10 batch '
                             r'\(LookupError'):
        data_helpers.load_test_batch(fake_cifar10)


def test_a_damaged_memo_index_does_not_allocate_gigabytes(fake_cifar10):
    # LONG_BINPUT 200,000,000: the C unpickler grows its memo array to that
    # size (1.6 GB, seconds); the restricted unpickler's memo is a dict
    path = os.path.join(fake_cifar10, 'test_batch')
    with open(path, 'wb') as f:
        f.write(b'\x80\x02}r' + struct.pack('<I', 200_000_000) + b'.')
    start = time.perf_counter()
    with pytest.raises(data_helpers.DataError, match="test_batch is not a CIFAR-10 batch: "
                                                     "it has no 'data'"):
        data_helpers.load_test_batch(fake_cifar10)
    assert time.perf_counter() - start < 0.5


def test_an_empty_batch_is_one_line(fake_cifar10):
    os.remove(os.path.join(fake_cifar10, 'batches.meta'))   # no count to compare with
    path = os.path.join(fake_cifar10, 'test_batch')
    with open(path, 'wb') as f:
        pickle.dump({'data': np.zeros((0, 3072), np.uint8), 'labels': []}, f, protocol=2)
    with pytest.raises(data_helpers.DataError, match='test_batch holds no images'):
        data_helpers.load_test_batch(fake_cifar10)


def test_an_incomplete_local_folder_says_why_instead_of_downloading(tmp_path):
    folder = write_fake_cifar10(str(tmp_path / 'work' / 'cifar-10-batches-py'))
    os.remove(os.path.join(folder, 'data_batch_4'))
    with pytest.raises(data_helpers.DataError,
                       match='cifar-10-batches-py lacks data_batch_4: complete it, or '
                             'remove it'):
        data_helpers.load_data()                 # the working directory is tmp_path/work
    assert not os.path.exists(cache_dir())       # nothing was downloaded
