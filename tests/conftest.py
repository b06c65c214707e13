"""Shared fixtures: a tiny fake CIFAR-10 and MNIST in the official layouts, and a
local HTTP server so the downloader is tested without touching the internet."""

import functools
import gzip
import hashlib
import http.server
import os
import pickle
import socket
import struct
import sys
import tarfile
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
cli.prepare_tensorflow()    # as the scripts do: a quiet start, oneDNN's kernels on x86-64

# In several processes (pytest-xdist's -n), each one's share of the cores,
# before TensorFlow starts: each process's TensorFlow otherwise takes every
# core, and its idle threads spin for the cores the other process is working
# on. Two processes on two cores, no data: 140 s -> 129 s (median of 3,
# 2026-12-02); with the longest files first, alternated, 108 and 120 s ->
# 108 and 110 s, 167-184 -> 166-169 CPU-seconds (BENCHMARKS.md). Subprocesses
# the tests start (the scripts, a cluster's tasks) inherit it.
_processes = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _processes > 1:
    _cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')   # Linux: ours
              else os.cpu_count() or 1)
    os.environ.setdefault('TF_NUM_INTRAOP_THREADS', str(max(1, _cores // _processes)))
    os.environ.setdefault('TF_NUM_INTEROP_THREADS', '1')


def pytest_collection(session):
    """Graph mode, as every script sets on import, before the first test file
    is imported: tests of the helper modules then run the same whichever test
    file runs first. Here, not at the top: pytest-xdist's controller process,
    which collects and runs no test, then never imports TensorFlow (5 s)."""
    import sessions  # noqa: F401  (as every script imports it: TensorFlow's CPU allocator)
    import tensorflow.compat.v1 as tf
    tf.disable_eager_execution()


# The files whose tests take longest in all (pytest --durations=0, 2026-12-03:
# 42, 23, 18, 10, 9, 9, 6, 6, 4 and 3 s), longest first: run first, so that
# in two processes (pytest-xdist, --dist loadfile, which hands out whole files
# in the order collected) none of them starts last while the other process
# has nothing left to do; the rest take a second or two.
LONGEST_FILES = ['test_distributed.py', 'test_fast_cnn.py', 'test_export.py', 'test_towers.py',
                 'test_image_folders.py', 'test_cnn.py', 'test_two_layer_mlp.py',
                 'test_predict.py', 'test_scripts.py', 'test_softmax.py']


def pytest_collection_modifyitems(items):
    """The tests of LONGEST_FILES first, in that order; each file's own order kept."""
    def rank(item):
        name = os.path.basename(str(item.path))
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
    items.sort(key=rank)


IMAGES_PER_BATCH = 30

# bfloat16 on this machine: native (AVX-512 BF16 or AMX), emulated by oneDNN
# (slower than float32: a whole training run in bfloat16 costs minutes), or
# absent: $ONEDNN_MAX_CPU_ISA hides the CPU's own bfloat16 from oneDNN, yet
# TensorFlow, reading the CPU, still asks it for bfloat16 convolutions
BF16_ABSENT = cli.onednn_capped_below_bf16() and cli.cpu_flags_have_bf16()
needs_bf16_kernels = pytest.mark.skipif(
    BF16_ABSENT, reason='$ONEDNN_MAX_CPU_ISA hides this CPU\'s bfloat16 from oneDNN, which then '
                        'has no bfloat16 convolution (a CPU without bfloat16 emulates it)')
needs_native_bf16 = pytest.mark.skipif(
    not cli.cpu_has_bf16(), reason='bfloat16 is emulated or absent here (no AVX-512 BF16 or '
                                   'AMX): whole bf16 training runs are left to CPUs that have it; '
                                   'the bf16 graphs are still checked where oneDNN has kernels')


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


def end_processes(processes):
    """Kills those of `processes` (subprocess.Popen) still running and reaps
    them, their pipes closed: for a test's `finally`, whatever it failed at."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def run_as_main(module, entry, argv, capsys):
    """`python <module>.py argv` run in this process as its __main__ runs it,
    cli.exit_on_error(entry, parse_args(argv)), for a run that must stop:
    (exit status, the last line on stderr). Each script's own process is
    tested once (test_scripts.py); this spares the others TensorFlow's start-up."""
    program = sys.argv[0]
    sys.argv[0] = os.path.basename(module.__file__)
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.exit_on_error(entry, module.parse_args([str(arg) for arg in argv]))
    finally:
        sys.argv[0] = program
    if isinstance(stopped.value.code, str):    # sys.exit(line): printed, exit status 1
        return 1, stopped.value.code
    return stopped.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def narrow_fast_cnn_recipes(monkeypatch):
    """fast_cnn's recipes 32 channels wide in every block instead of
    64/256/256: a tenth of the arithmetic, for tests of what the width
    does not change (a seed's run, run folders, towers, exports). Muon's
    logits stay divided by the head's width, as that recipe has it."""
    import fast_cnn
    for hyp in fast_cnn.RECIPES.values():
        monkeypatch.setitem(hyp, 'widths', (32, 32, 32))
    monkeypatch.setitem(fast_cnn.RECIPES['muon'], 'scaling_factor', 1 / 32)


@pytest.fixture
def narrow_fast_cnn(monkeypatch):
    """fast_cnn's recipes 32 channels wide for this test (above)."""
    narrow_fast_cnn_recipes(monkeypatch)


@pytest.fixture
def fake_cifar10(tmp_path):
    """Path of a tiny fake cifar-10-batches-py with str keys."""
    return write_fake_cifar10(str(tmp_path / 'cifar-10-batches-py'))


def idx_bytes(array, type_byte=0x08):
    """An IDX file's bytes: magic number, dimensions, then the uint8 data."""
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack('>%di' % array.ndim,
                                                                *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_mnist(folder, train=5100, test=100, seed=0):
    """The four MNIST files, gzip-compressed; random digits and labels. The
    first 5000 training images are the validation set, as load_mnist splits."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for prefix, count in (('train', train), ('t10k', test)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 256, (count, 28, 28))
        for kind, array in (('images-idx3', images), ('labels-idx1', labels)):
            with open(os.path.join(folder, '%s-%s-ubyte.gz' % (prefix, kind)), 'wb') as f:
                f.write(gzip.compress(idx_bytes(array), compresslevel=1))
    return folder


@pytest.fixture
def fake_mnist(tmp_path):
    """Path of a folder with four tiny fake MNIST files (100 training images)."""
    return write_fake_mnist(str(tmp_path / 'mnist'))


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
    # (its loop looks for shutdown() every 0.05 s, not 0.5: each test ends sooner)
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05},
                              daemon=True)
    thread.start()
    try:
        yield root, 'http://127.0.0.1:%d' % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def unused_url():
    """A URL on 127.0.0.1 where nobody listens."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return 'http://127.0.0.1:%d/cifar-10-python.tar.gz' % port


@pytest.fixture
def served_cifar10(http_server, tmp_path):
    """(url, md5) of a tiny cifar-10-python.tar.gz on a local HTTP server."""
    root, base_url = http_server
    source = write_fake_cifar10(str(tmp_path / 'src' / 'cifar-10-batches-py'))
    path = make_tarball(str(root / 'cifar-10-python.tar.gz'), source, 'cifar-10-batches-py')
    with open(path, 'rb') as f:
        md5 = hashlib.md5(f.read()).hexdigest()
    return base_url + '/cifar-10-python.tar.gz', md5


def make_tarball(path, source_folder, arcname):
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(source_folder, arcname=arcname)
    return path


def write_fake_cifar100(folder, train=40, test=20, seed=0):
    """train, test and meta as CIFAR-100's python version holds them (protocol-2
    pickles, str keys): data uint8 [N, 3072], fine_labels 0..99 and
    coarse_labels 0..19 (coarse = fine // 5 here), filenames, batch_label;
    meta: fine_label_names, coarse_label_names. Pixel 0 holds the fine label."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for name, count in (('train', train), ('test', test)):
        fine = [int(x) for x in rng.integers(0, 100, count)]
        data = rng.integers(0, 256, (count, 3072)).astype(np.uint8)
        data[:, 0] = fine
        batch = {'filenames': ['img_%d.png' % i for i in range(count)],
                 'batch_label': '%s batch 1 of 1' % name, 'fine_labels': fine,
                 'coarse_labels': [label // 5 for label in fine], 'data': data}
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump(batch, f, protocol=2)
    meta = {'fine_label_names': ['fine%02d' % i for i in range(100)],
            'coarse_label_names': ['coarse%02d' % i for i in range(20)]}
    with open(os.path.join(folder, 'meta'), 'wb') as f:
        pickle.dump(meta, f, protocol=2)
    return folder
