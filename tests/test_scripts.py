"""What every script does alike: run as a user runs it, a bad input ends in one
line; a bad --train-dir is found before training; a batch larger than the data
is one line."""

import os
import re
import subprocess
import sys
import time

import pytest

import cnn
import fast_cnn
import softmax
import two_layer_mlp
from errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each script once in its own process, `python <script>.py ...`, with an
# input it cannot use: exit status 1, no traceback, the last line on stderr
# says why. (Elsewhere the tests run such errors in the test process,
# conftest.run_as_main; distributed.py's processes: test_distributed.py.)
# {tmp} is an empty folder, {cifar} fake CIFAR-10.
ONE_LINE_ENDS = {
    'softmax.py': (['--data-dir', '{tmp}'],
                   'softmax.py: error: --data-dir {tmp} holds no CIFAR-10 '),
    'two_layer_mlp.py': (['--restore', '--data-dir', '{cifar}', '--train-dir', '{tmp}/none'],
                         'two_layer_mlp.py: error: no complete checkpoint in {tmp}/none'),
    'cnn.py': (['--data-dir', '{tmp}'], 'cnn.py: error: --data-dir {tmp} holds no CIFAR-10 '),
    'fast_cnn.py': (['--data-dir', '{tmp}'],
                    'fast_cnn.py: error: --data-dir {tmp} holds no CIFAR-10 '),
    'predict.py': (['{tmp}/nowhere', '{tmp}'],
                   'predict.py: error: run folder {tmp}/nowhere does not exist'),
    'export.py': (['{tmp}/nowhere'], 'export.py: error: run folder {tmp}/nowhere does not exist'),
}


def test_each_script_run_as_a_user_runs_it_ends_a_bad_input_in_one_line(tmp_path,
                                                                        fake_cifar10):
    empty = tmp_path / 'empty'
    empty.mkdir()
    # All at once: TensorFlow's start-up is most of each process's time
    processes = {
        script: subprocess.Popen(
            [sys.executable, os.path.join(ROOT, script)]
            + [arg.format(tmp=empty, cifar=fake_cifar10) for arg in argv],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        for script, (argv, _) in ONE_LINE_ENDS.items()}
    deadline = time.monotonic() + 300
    try:
        ends = {script: (process.communicate(timeout=max(1, deadline - time.monotonic()))[1],
                         process.returncode)
                for script, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    for script, (_, expected) in ONE_LINE_ENDS.items():
        err, status = ends[script]
        last = (err.strip().splitlines() or [''])[-1]
        assert status == 1 and 'Traceback' not in err, (script, err)
        assert last.startswith(expected.format(tmp=empty)), (script, err)


SCRIPTS = {
    'softmax': (softmax, ['--max-steps', '500']),
    'two_layer_mlp': (two_layer_mlp, ['--max-steps', '500', '--batch-size', '10']),
    'cnn': (cnn, ['--model', 'small', '--epochs', '3', '--batch-size', '16', '--no-plots']),
    'fast_cnn': (fast_cnn, ['--epochs', '3', '--batch-size', '32', '--precision', 'fp32']),
}


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_an_unwritable_train_dir_is_found_before_training(script, fake_cifar10, tmp_path,
                                                         capsys):
    module, flags = SCRIPTS[script]
    (tmp_path / 'a-file').write_text('not a folder')
    train_dir = str(tmp_path / 'a-file' / 'runs')
    with pytest.raises(DataError, match='cannot create a run folder in %s' % train_dir):
        module.main(module.parse_args(flags + ['--data-dir', fake_cifar10,
                                               '--train-dir', train_dir]))
    # not one training step was reported
    assert not re.search(r'^(Step|Epoch|epoch) ', capsys.readouterr().out, re.M)


BATCH_FLAGS = {'softmax': [], 'two_layer_mlp': [], 'cnn': ['--model', 'small'],
               'fast_cnn': ['--precision', 'fp32']}


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_a_batch_larger_than_the_training_set_is_one_line(script, fake_cifar10, tmp_path):
    module = SCRIPTS[script][0]
    train = 120 if script == 'cnn' else 150              # cnn holds 20% out
    with pytest.raises(DataError, match='--batch-size 1000000000 is larger than the %d '
                                        'training images' % train):
        module.main(module.parse_args(BATCH_FLAGS[script] + [
            '--batch-size', '1000000000', '--data-dir', fake_cifar10,
            '--train-dir', str(tmp_path / 'runs')]))
    assert not (tmp_path / 'runs').exists()             # no run folder left behind
