"""cli.py: flag types, the flags every script shares, the one-line error exit."""

import argparse
import importlib
import io
import os
import subprocess
import sys
import textwrap

import pytest

import cli
from errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['softmax', 'two_layer_mlp', 'cnn', 'fast_cnn']


@pytest.mark.parametrize('text', ['0', '-3', 'abc', '1.5'])
def test_positive_int_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.positive_int(text)


@pytest.mark.parametrize('text', ['0', '-0.1', 'nan', 'inf', 'x'])
def test_positive_float_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.positive_float(text)


def test_positive_types_accept():
    assert cli.positive_int('7') == 7 and cli.positive_float('2.5e-3') == 0.0025


def test_common_flags_parse_and_default():
    parser = argparse.ArgumentParser()
    cli.add_common_flags(parser, train_dir='runs')
    args = parser.parse_args(['--seed', '3', '--data-dir', 'd'])
    assert (args.seed, args.data_dir, args.train_dir) == (3, 'd', 'runs')
    with pytest.raises(SystemExit):
        parser.parse_args(['--seed', 'x'])


def test_every_script_declares_the_common_flags_the_same_way(capsys):
    helps = {}
    for script in SCRIPTS:
        with pytest.raises(SystemExit):
            importlib.import_module(script).parse_args(['--help'])
        out = capsys.readouterr().out
        # argparse wraps help text; compare the --seed and --data-dir
        # paragraphs word by word (two_layer_mlp.py also reads MNIST)
        shared = out[out.index('--seed SEED'):].split('--train-dir')[0]
        shared = shared.replace(' or $MNIST_DIR', '').replace(' or ./MNIST_data', '')
        helps[script] = ' '.join(shared.split())
    assert len(set(helps.values())) == 1, helps


def test_batch_size_check():
    cli.check_batch_size(10, 10)
    with pytest.raises(DataError, match=r'^--batch-size 11 is larger than the 10 training '
                                        r'images; use --batch-size 10 or less$'):
        cli.check_batch_size(11, 10)
    # cnn.py holds out a validation share: the message says why 12 became 10
    with pytest.raises(DataError, match=r'the 10 training images \(12 less the 2 held out for '
                                        r'validation\); use --batch-size 10 or less$'):
        cli.check_batch_size(11, 10, held_out=2)


@pytest.mark.parametrize('train_count, devices, given, expected', [
    (50_000, 1, False, 2000),    # CIFAR-10: the default
    (451, 1, False, 32),         # 451 // 8 = 56: the power of two below
    (451, 5, False, 30),         # ... a multiple of the devices
    (100, 1, False, 16),         # at least 16
    (10, 1, False, 10),          # at most the set
    (451, 1, True, 2000),        # given: kept (and refused by check_batch_size)
])
def test_a_small_training_set_gets_a_batch_that_makes_8_steps_an_epoch(
        train_count, devices, given, expected, capsys):
    args = argparse.Namespace(batch_size=2000, batch_size_given=given, num_devices=devices)
    cli.fit_batch_size(args, train_count, "the recipe's")
    assert args.batch_size == expected
    line = capsys.readouterr().out
    if expected == 2000:
        assert line == ''
    else:
        assert line == ("Batches of %d (the recipe's 2000 would make 0 steps an epoch of the "
                        "%d training pictures; --batch-size sets it)\n" % (expected, train_count))


def test_exit_on_error_is_one_line_and_exit_status_1(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['/somewhere/tool.py'])

    def failing(args):
        raise DataError('the file %s is broken' % args)

    with pytest.raises(SystemExit) as exit_info:
        cli.exit_on_error(failing, 'x.bin')
    assert exit_info.value.code == 'tool.py: error: the file x.bin is broken'

    def interrupted(args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        cli.exit_on_error(interrupted, None)
    assert exit_info.value.code == 'tool.py: interrupted'
    assert cli.exit_on_error(lambda args: args + 1, 41) == 42


def test_the_error_line_comes_after_what_the_program_printed(monkeypatch):
    # stdout buffered, as when piped (`2>&1 | tee log`): what was printed is
    # written out before the line, which Python prints to stderr on exit
    written = io.BytesIO()
    monkeypatch.setattr(sys, 'stdout', io.TextIOWrapper(written))
    monkeypatch.setattr(sys, 'argv', ['tool.py'])

    def prints_then_fails(args):
        print('Writing to runs/x')
        raise DataError('the disk is gone')

    with pytest.raises(SystemExit):
        cli.exit_on_error(prints_then_fails, None)
    assert written.getvalue() == b'Writing to runs/x\n'


def test_a_reader_gone_leaves_the_line_alone_and_the_status_1():
    # `python x.py | head`, head gone before the error: no 'Exception ignored
    # ... BrokenPipeError' after the line, no exit status 120
    script = textwrap.dedent('''
        import sys
        sys.path.insert(0, %r)
        import cli
        from errors import DataError

        def main(args):
            print('a line for a reader that leaves')     # buffered: stdout is a pipe
            sys.stdin.readline()                         # ... and the reader is gone
            raise DataError('the disk is gone')
        cli.exit_on_error(main, None)
        ''' % ROOT)
    read_end, write_end = os.pipe()
    child = subprocess.Popen([sys.executable, '-c', script], stdin=subprocess.PIPE,
                             stdout=write_end, stderr=subprocess.PIPE,
                             env={name: value for name, value in os.environ.items()
                                  if name != 'PYTHONUNBUFFERED'})
    os.close(write_end)
    os.close(read_end)
    _, err = child.communicate(b'\n', timeout=60)
    assert (child.returncode, err.decode().splitlines()) == (1, ['-c: error: the disk is gone'])


@pytest.mark.parametrize('script', SCRIPTS)
def test_data_dir_help_names_your_own_pictures_where_the_script_trains_on_them(script, capsys):
    with pytest.raises(SystemExit):
        importlib.import_module(script).parse_args(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert ('or a folder of your own pictures' in text) == (script in ('cnn', 'fast_cnn'))


@pytest.mark.parametrize('text', ['-1', '4294967296', '1.5', 'x'])
def test_seed_refuses_what_numpy_would_refuse(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.seed(text)


def test_seed_and_nonnegative_float_accept():
    assert cli.seed('0') == 0 and cli.seed('4294967295') == 2 ** 32 - 1
    assert cli.nonnegative_float('0') == 0.0


@pytest.mark.parametrize('text', ['-1', 'nan', 'inf', 'x'])
def test_nonnegative_float_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.nonnegative_float(text)


def test_an_os_error_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, 'argv', ['tool.py'])

    def writes_into_a_missing_folder(args):
        with open(str(tmp_path / 'gone' / 'out.png'), 'wb'):
            pass

    with pytest.raises(SystemExit) as exit_info:
        cli.exit_on_error(writes_into_a_missing_folder, None)
    assert exit_info.value.code == ('tool.py: error: %s: No such file or directory'
                                    % (tmp_path / 'gone' / 'out.png'))


def test_auto_precision_reads_the_cpu_flags(tmp_path, monkeypatch):
    monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    info = tmp_path / 'cpuinfo'
    info.write_text('processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16\n')
    assert cli.cpu_has_bf16(str(info))
    info.write_text('processor : 0\nflags : fpu sse2 avx2 avx512f\n')
    assert not cli.cpu_has_bf16(str(info))
    assert not cli.cpu_has_bf16(str(tmp_path / 'missing'))
    # 'auto' is what the CPU can do; the others are taken as given
    for has_bf16, expected in ((True, 'bf16'), (False, 'fp32')):
        monkeypatch.setattr(cli, 'cpu_has_bf16', lambda: has_bf16)
        assert cli.precision('auto') == expected
        assert cli.precision('fp32') == 'fp32' and cli.precision('bf16') == 'bf16'


def test_onednn_capped_below_bf16_counts_as_a_cpu_without_it(tmp_path, monkeypatch):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor : 0\nflags : fpu avx2 avx512f avx512_bf16 amx_bf16\n')
    for cap, native in (('AVX2', False), ('avx512_core', False), ('AVX512_CORE_BF16', True),
                        ('AVX10_1_512_AMX', True), ('', True)):
        monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', cap)
        assert cli.cpu_has_bf16(str(info)) == native, cap


def test_the_precision_line_says_what_auto_picked():
    assert cli.precision_note('auto', 'bf16') == 'bf16 (auto: this CPU has native bfloat16)'
    assert cli.precision_note('auto', 'fp32') == 'fp32 (auto: no native bfloat16 on this CPU)'
    assert cli.precision_note('fp32', 'fp32') == 'fp32'


@pytest.mark.parametrize('machine, preset, expected', [
    ('x86_64', None, '1'), ('AMD64', None, '1'),      # Linux, Windows
    ('x86_64', '0', '0'),                              # the user's choice wins
    ('aarch64', None, None), ('arm64', None, None)])   # ARM: TensorFlow's own choice
def test_prepare_tensorflow_asks_for_onednn_on_x86_64_only(machine, preset, expected,
                                                           monkeypatch):
    monkeypatch.setattr(cli.platform, 'machine', lambda: machine)
    monkeypatch.delenv('TF_CPP_MIN_LOG_LEVEL', raising=False)
    monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
    if preset is not None:
        monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', preset)
    cli.prepare_tensorflow()
    assert os.environ.get('TF_ENABLE_ONEDNN_OPTS') == expected
    assert os.environ['TF_CPP_MIN_LOG_LEVEL'] == '2'


@pytest.mark.skipif(not cli.asks_for_onednn(), reason='oneDNN is asked for on x86-64 CPUs only')
def test_a_script_process_runs_onednn_kernels_on_any_x86_64_cpu():
    # Whatever this CPU (TensorFlow by itself turns them on only with VNNI or
    # AMX), once prepare_tensorflow ran before TensorFlow loaded;
    # convolutions.onednn_kernels reads what the process really runs
    script = textwrap.dedent('''
        import sys
        sys.path.insert(0, %r)
        import cli
        cli.prepare_tensorflow()
        import convolutions
        print(convolutions.onednn_kernels())
        ''' % ROOT)
    env = {name: value for name, value in os.environ.items() if name != 'TF_ENABLE_ONEDNN_OPTS'}
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.stdout.split() == ['True'], result.stderr
