"""What every training script does alike: a bad --train-dir is found before
training, a batch larger than the data is one line."""

import re

import pytest

import cnn
import fast_cnn
import softmax
import two_layer_mlp
from errors import DataError

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
