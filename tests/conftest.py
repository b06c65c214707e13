"""Shared fixtures: a tiny fake CIFAR-10 in the official layout, and a local
HTTP server so the downloader is tested without touching the internet."""

import functools
import http.server
import os
import pickle
import sys
import tarfile
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # as the scripts do: quiet start-up

IMAGES_PER_BATCH = 30


def fake_images(labels, rng):
    """uint8 [N, 3072] images a linear classifier can tell apart: every class
    brightens its own band of pixels. Pixel 0 (red, top left) holds
    20 * label, so tests can check that images and labels stay paired."""
    images = rng.integers(0, 120, size=(len(labels), 3072))
    for row, label in enumerate(labels):
        images[row, 300 * label:300 * label + 300] += 120
        images[row, 0] = 20 * label
    return images.astype(np.uint8)


def write_fake_cifar10(folder, keys='str', per_batch=IMAGES_PER_BATCH, seed=0):
    """Writes data_batch_1..5, test_batch and batches.meta as the official
    files hold them; keys='bytes' writes bytes keys as Python 3 would read
    the official files with encoding='bytes'."""
    rng = np.random.default_rng(seed)
    key = (lambda k: k.encode()) if keys == 'bytes' else (lambda k: k)
    os.makedirs(folder, exist_ok=True)
    names = ['data_batch_%d' % i for i in range(1, 6)] + ['test_batch']
    for name in names:
        labels = [int(x) for x in np.arange(per_batch) % 10]
        rng.shuffle(labels)
        batch = {key('batch_label'): name, key('labels'): labels,
                 key('data'): fake_images(labels, rng),
                 key('filenames'): ['img_%d.png' % i for i in range(per_batch)]}
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump(batch, f, protocol=2)
    meta = {key('num_cases_per_batch'): per_batch, key('num_vis'): 3072,
            key('label_names'): ['airplane', 'automobile', 'bird', 'cat', 'deer',
                                 'dog', 'frog', 'horse', 'ship', 'truck']}
    with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
        pickle.dump(meta, f, protocol=2)
    return folder


@pytest.fixture
def fake_cifar10(tmp_path):
    """Path of a tiny fake cifar-10-batches-py with str keys."""
    return write_fake_cifar10(str(tmp_path / 'cifar-10-batches-py'))


@pytest.fixture(autouse=True)
def no_real_data(monkeypatch, tmp_path):
    """Keep every test away from the user's data and cache: no $CIFAR10_DIR,
    a private cache folder, and a working directory of its own."""
    monkeypatch.delenv('CIFAR10_DIR', raising=False)
    monkeypatch.delenv('MNIST_DIR', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serves the folder it returns over HTTP on 127.0.0.1; yields (folder, base_url)."""
    root = tmp_path / 'served'
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, 'http://127.0.0.1:%d' % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def make_tarball(path, source_folder, arcname):
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(source_folder, arcname=arcname)
    return path
