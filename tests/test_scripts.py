"""What every script does alike: run as a user runs it, a bad input ends in one
line; a bad --train-dir is found before training; a batch larger than the data
is one line."""

import os
import re
import runpy
import subprocess
import sys

import pytest

import cnn
import fast_cnn
import softmax
import two_layer_mlp
from errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each script run as `python <script>.py ...` runs it, with an input it
# cannot use: exit status 1, no traceback, the last line on stderr says why.
# softmax.py in its own process, as a user runs it (TensorFlow's start-up and
# its lines on stderr included); every script's file executed as __main__ in
# the test process, which spares five more start-ups of 6 s each (what only
# a fresh process shows, TensorFlow's own lines and those at exit, is the
# same for all and checked on softmax.py). (Elsewhere
# the tests call such errors through conftest.run_as_main; distributed.py's
# processes: test_distributed.py.) {tmp} is an empty folder, {cifar} fake CIFAR-10.
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


def bad_input(script, tmp_path, fake_cifar10):
    """The script's argv and the start of its last line, for an empty folder."""
    empty = tmp_path / 'empty'
    empty.mkdir()
    argv, expected = ONE_LINE_ENDS[script]
    return ([arg.format(tmp=empty, cifar=fake_cifar10) for arg in argv],
            expected.format(tmp=empty))


def test_softmax_run_as_a_user_runs_it_ends_a_bad_input_in_one_line(tmp_path, fake_cifar10):
    argv, expected = bad_input('softmax.py', tmp_path, fake_cifar10)
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'softmax.py')] + argv,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path), timeout=300)
    last = (result.stderr.strip().splitlines() or [''])[-1]
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
    assert last.startswith(expected), result.stderr


@pytest.mark.parametrize('script', sorted(ONE_LINE_ENDS))
def test_each_script_as_main_ends_a_bad_input_in_one_line(script, tmp_path, fake_cifar10,
                                                         monkeypatch, capsys):
    argv, expected = bad_input(script, tmp_path, fake_cifar10)
    monkeypatch.setattr(sys, 'argv', [script] + argv)
    monkeypatch.chdir(tmp_path)
    # Any other exception than SystemExit (a traceback) fails the test here
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
    # sys.exit(line): Python prints the line to stderr and exits with status 1
    assert isinstance(stopped.value.code, str), stopped.value.code
    assert stopped.value.code.startswith(expected), stopped.value.code
    assert 'Traceback' not in capsys.readouterr().err


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
