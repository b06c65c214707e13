"""CIFAR-100's python version: found, downloaded with its md5 checked, read
through the restricted unpickler, fine or coarse labels, trained on by cnn.py."""

import hashlib
import os
import pickle
import re

import numpy as np
import pytest

import checkpoints
import cnn
import data_helpers
import run_folders
from conftest import make_tarball, write_fake_cifar10, write_fake_cifar100
from errors import DataError


def test_fine_and_coarse_labels_and_names(tmp_path):
    folder = write_fake_cifar100(str(tmp_path / 'cifar-100-python'))
    images_train, fine, images_test, fine_test, names = data_helpers.load_cifar100(folder)
    assert images_train.shape == (40, 3072) and images_test.shape == (20, 3072)
    assert names == ['fine%02d' % i for i in range(100)]
    np.testing.assert_array_equal(images_train[:, 0], fine)        # images and labels paired
    _, coarse, _, _, coarse_names = data_helpers.load_cifar100(str(tmp_path), 'coarse')
    np.testing.assert_array_equal(coarse, fine // 5)
    assert len(coarse_names) == 20 and coarse.dtype == np.int64


def test_load_images_recognises_cifar100_and_keeps_the_32x32_rule(tmp_path):
    folder = write_fake_cifar100(str(tmp_path / 'cifar-100-python'))
    data = data_helpers.load_images(folder, labels='coarse')
    assert data['dataset'] == 'cifar100' and data['images_train'].shape == (40, 32, 32, 3)
    assert len(data['classes']) == 20
    with pytest.raises(DataError, match='--image-size 48: CIFAR is 32x32'):
        data_helpers.load_images(folder, image_size=48)


def test_a_data_dir_that_contradicts_dataset_or_labels_is_one_line(tmp_path):
    cifar10 = write_fake_cifar10(str(tmp_path / 'cifar-10-batches-py'))
    pictures = tmp_path / 'pictures'
    for name in ('cat', 'dog'):
        (pictures / name).mkdir(parents=True)
    (tmp_path / 'empty').mkdir()
    # --dataset cifar100 with another data set's folder: not CIFAR-10 trained in its place
    for folder, what in [(cifar10, 'CIFAR-10'), (str(pictures), 'your own pictures')]:
        with pytest.raises(DataError, match='^--dataset cifar100, but --data-dir %s holds %s; '
                                            % (re.escape(folder), what)):
            data_helpers.load_images(folder, dataset='cifar100')
    # a folder holding nothing names the data set asked for
    with pytest.raises(DataError, match=r'^--data-dir .*empty holds no CIFAR-100 files '
                                        r'\(train, test, meta\) and no class folders'):
        data_helpers.load_images(str(tmp_path / 'empty'), dataset='cifar100')
    for folder, what in [(cifar10, 'CIFAR-10'), (str(pictures), 'a folder of your own pictures'),
                         (None, 'CIFAR-10')]:
        with pytest.raises(DataError, match=r'^--labels coarse: only CIFAR-100 has coarse '
                                            r'classes \(this is %s\)$' % what):
            data_helpers.load_images(folder, labels='coarse')
    # a mistyped --data-dir says so, whatever the other flags
    with pytest.raises(DataError, match='^--data-dir .*nowhere does not exist'):
        data_helpers.load_images(str(tmp_path / 'nowhere'), labels='coarse')


def test_a_damaged_or_hostile_file_is_refused_in_one_line(tmp_path):
    folder = write_fake_cifar100(str(tmp_path / 'cifar-100-python'))
    with open(os.path.join(folder, 'test'), 'wb') as f:
        f.write(pickle.dumps({'data': 1}, protocol=2)[:-3])
    with pytest.raises(DataError, match='test is truncated or not a CIFAR-100 file'):
        data_helpers.load_cifar100(folder)

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo hacked',))
    with open(os.path.join(folder, 'train'), 'wb') as f:
        pickle.dump({'data': Evil()}, f, protocol=2)
    with pytest.raises(DataError, match='train is not a CIFAR-100 file: it asks to call '
                                        'posix.system'):
        data_helpers.load_cifar100(folder)
    write_fake_cifar100(folder)
    with open(os.path.join(folder, 'train'), 'rb') as f:
        batch = pickle.load(f)
    batch['fine_labels'][3] = 100
    with open(os.path.join(folder, 'train'), 'wb') as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(DataError, match='train is not a CIFAR-100 file: labels outside 0..99'):
        data_helpers.load_cifar100(folder)


def test_it_is_downloaded_md5_checked_and_extracted(http_server, tmp_path, monkeypatch):
    root, base_url = http_server
    source = write_fake_cifar100(str(tmp_path / 'src' / 'cifar-100-python'))
    archive = make_tarball(str(root / 'cifar-100-python.tar.gz'), source, 'cifar-100-python')
    with open(archive, 'rb') as f:
        md5 = hashlib.md5(f.read()).hexdigest()
    monkeypatch.setattr(data_helpers, 'CIFAR100_URL', base_url + '/cifar-100-python.tar.gz')
    monkeypatch.setattr(data_helpers, 'CIFAR100_MD5', '0' * 32)
    with pytest.raises(DataError, match='md5'):
        data_helpers.load_images(dataset='cifar100')
    monkeypatch.setattr(data_helpers, 'CIFAR100_MD5', md5)
    data = data_helpers.load_images(dataset='cifar100')
    assert data['dataset'] == 'cifar100' and len(data['classes']) == 100
    assert os.path.isfile(os.path.join(str(tmp_path / 'cache'), 'tf-image-recognition',
                                       'cifar-100-python', 'meta'))


def test_offline_it_says_what_to_do(unused_url, monkeypatch):
    monkeypatch.setattr(data_helpers, 'CIFAR100_URL', unused_url)
    with pytest.raises(DataError, match=r'check its md5 \(eb9058c3a382ffc7106e4002c42a8d85\), '
                                        r'extract it so that .*cifar-100-python holds train, '
                                        r'test and meta, or point \$CIFAR100_DIR'):
        data_helpers.load_images(dataset='cifar100')


def test_cnn_trains_on_cifar100_coarse_and_restores_it_on_its_own_data(tmp_path, monkeypatch):
    folder = write_fake_cifar100(str(tmp_path / 'cifar-100-python'))
    run_dir = str(tmp_path / 'runs')
    accuracy = cnn.main(cnn.parse_args([
        '--model', 'small', '--data-dir', folder, '--labels', 'coarse', '--max-steps', '2',
        '--batch-size', '8', '--no-plots', '--train-dir', run_dir, '--precision', 'fp32']))
    info = run_folders.read_model_info(checkpoints.checkpoint_folder(run_dir))
    assert info['dataset'] == 'cifar100' and len(info['classes']) == 20
    # --restore alone: CIFAR-100's coarse labels again, from the run's model.json
    # (it went for CIFAR-10 before)
    monkeypatch.setenv('CIFAR100_DIR', folder)
    args = cnn.parse_args(['--restore', run_dir, '--no-plots'])
    assert (args.dataset, args.labels) == ('cifar100', 'coarse')
    assert cnn.main(args) == pytest.approx(accuracy, abs=1e-9)
    # with its --data-dir the labels are the run's too; other labels are refused
    assert cnn.main(cnn.parse_args(['--restore', run_dir, '--data-dir', folder,
                                    '--no-plots'])) == pytest.approx(accuracy, abs=1e-9)
    with pytest.raises(SystemExit) as exit_info:
        cnn.parse_args(['--restore', run_dir, '--labels', 'fine'])
    assert exit_info.value.code == 2
    # --data-dir of CIFAR-10: other classes (its 20 weights loaded into 10 before,
    # and scored nonsense)
    cifar10 = write_fake_cifar10(str(tmp_path / 'cifar-10-batches-py'))
    with pytest.raises(DataError, match='^%s was trained on the classes coarse00, coarse01, '
                                        'coarse02, coarse03, ... \\(20 in all\\), and this '
                                        'data has plane, car, bird, cat, ... '
                                        '\\(10 in all\\): give the data it was trained on$'
                                        % re.escape(run_dir)):
        cnn.main(cnn.parse_args(['--restore', run_dir, '--data-dir', cifar10, '--no-plots']))
