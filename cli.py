"""What every script's command line shares: flag types, the common flags, the error exit.

* `positive_int`, `positive_float`, `nonnegative_float`, `seed`: argparse
  types that refuse what would fail later (0, negatives, nan, inf).
* `add_common_flags()`: --seed, --data-dir and --train-dir, declared once.
* `add_dataset_flags()`: --dataset and --labels (CIFAR-100), --image-size,
  --crop and --test-split (a folder of your own pictures as --data-dir).
* `check_batch_size()`: a batch larger than the training set is one clear line;
  `fit_batch_size()`: a default batch made smaller for a small folder.
* `add_precision_flag()`, `precision()`: --precision auto|bf16|fp32, and
  what 'auto' means on this CPU (`cpu_has_bf16()`).
* `exit_on_error()`: runs a script's main; a DataError, an OSError or Ctrl-C
  ends it with one line and a non-zero exit, never a traceback.
* `prepare_tensorflow()`: what TensorFlow reads as it loads (a quiet start,
  oneDNN's kernels on every x86-64 CPU); scripts call it before importing it.
"""

import argparse
import math
import os
import platform
import sys

from errors import DataError


def prepare_tensorflow():
    """Sets what TensorFlow reads from the environment as it loads; call it
    before the first `import tensorflow`. A value already set wins.

    * TF_CPP_MIN_LOG_LEVEL=2: a quiet start-up.
    * TF_ENABLE_ONEDNN_OPTS=1 on x86-64: oneDNN's kernels. TensorFlow on Linux
      turns them on by itself only on CPUs with VNNI, AVX-512 BF16 or AMX; on an
      AVX2 AMD EPYC (Zen 3), without them, its own (Eigen) kernels trained
      cnn.py's batchnorm model 1.16x and fast_cnn.py 1.2x slower than
      oneDNN's (BENCHMARKS.md). ARM CPUs keep TensorFlow's choice (not measured).
    """
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    if asks_for_onednn():
        os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')


def asks_for_onednn():
    """Whether prepare_tensorflow asks for oneDNN's kernels here: on x86-64."""
    return platform.machine().lower() in ('x86_64', 'amd64')


def _number(text, convert, valid, requirement):
    """Converts a flag's text with int or float; argparse reports what is wrong."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not %s' % (
            text, 'an integer' if convert is int else 'a number')) from None
    if not valid(value):
        raise argparse.ArgumentTypeError('must be %s, not %s' % (requirement, text))
    return value


def positive_int(text):
    """argparse type: an integer > 0."""
    return _number(text, int, lambda v: v > 0, '> 0')


def nonnegative_int(text):
    """argparse type: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, '>= 0')


def positive_float(text):
    """argparse type: a finite number > 0."""
    return _number(text, float, lambda v: 0 < v < math.inf, 'a finite number > 0')


def nonnegative_float(text):
    """argparse type: a finite number >= 0."""
    return _number(text, float, lambda v: 0 <= v < math.inf, 'a finite number >= 0')


def fraction(text):
    """argparse type: a number strictly between 0 and 1."""
    return _number(text, float, lambda v: 0 < v < 1, 'between 0 and 1')


def seed(text):
    """argparse type: a seed for numpy and TensorFlow, 0 <= seed < 2**32."""
    return _number(text, int, lambda v: 0 <= v < 2 ** 32, 'in 0..4294967295')


def add_common_flags(parser, train_dir, train_dir_help=None, mnist=False, pictures=False):
    """Adds --seed, --data-dir and --train-dir (default `train_dir`) to `parser`;
    mnist: the script reads MNIST too; pictures: it trains on a folder of your
    own pictures too; its --data-dir help then says so."""
    parser.add_argument('--seed', type=seed, default=None,
                        help='seed for all that is random (initial weights, batches, '
                             'augmentation): the same seed gives the same run on the '
                             'same kind of CPU (default: random)')
    own = ', or a folder of your own pictures, one folder of them per class' if pictures else ''
    env, folder = (' or $MNIST_DIR', ' or ./MNIST_data') if mnist else ('', '')
    parser.add_argument('--data-dir', default=None, help=(
        'folder holding the data set%s (default: $CIFAR10_DIR%s, ./cifar-10-batches-py%s, '
        'else a download into ~/.cache/tf-image-recognition)' % (own, env, folder)))
    parser.add_argument('--train-dir', default=train_dir,
                        help=train_dir_help or 'folder for run folders (checkpoints, '
                        'model.json for predict.py, history) (default: %(default)s)')


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512   # below 16 the networks pool to nothing


def add_dataset_flags(parser):
    """--dataset and --labels (CIFAR-100); --image-size, --crop, --test-split:
    how the scripts that train on a folder of your own pictures (a --data-dir
    of class folders) prepare it."""
    parser.add_argument('--dataset', choices=['cifar10', 'cifar100'], default='cifar10',
                        help='which data set to find or download when --data-dir does not '
                             'name one (default: cifar10); a --data-dir of CIFAR-100 or of '
                             'your own pictures is recognised by itself')
    parser.add_argument('--labels', choices=['fine', 'coarse'], default=None,
                        help="CIFAR-100's 100 fine classes or 20 coarse superclasses "
                             "(default: fine)")    # (None: cnn.py --restore takes the run's)
    parser.add_argument('--image-size', type=_image_size, default=32, metavar='PIXELS',
                        help='with a --data-dir of your own pictures: the side every '
                             'picture is resized to (default: 32, as CIFAR-10; 64 and 96 '
                             'show more detail and cost more)')
    parser.add_argument('--crop', choices=['center', 'none'], default='center',
                        help="with a --data-dir of your own pictures: 'center' cuts each "
                             "to its central square before resizing, keeping the aspect "
                             "ratio; 'none' squeezes the whole picture (default: center)")
    parser.add_argument('--test-split', type=fraction, default=0.2, metavar='FRACTION',
                        help='with a --data-dir of your own pictures that has no test/ '
                             'folder: the fraction of each class held out for testing, '
                             'drawn by --seed (default: 0.2)')


def _image_size(text):
    return _number(text, int, lambda v: MIN_IMAGE_SIZE <= v <= MAX_IMAGE_SIZE,
                   'in %d..%d' % (MIN_IMAGE_SIZE, MAX_IMAGE_SIZE))


def add_num_devices_flag(parser):
    """--num-devices, for the scripts that train with towers.py."""
    parser.add_argument('--num-devices', type=positive_int, default=1,
                        help='train on N devices: one tower per GPU, or N virtual CPU '
                             'devices where there are fewer GPUs; each step\'s batch is '
                             'split between them (default: 1)')


def check_num_devices(parser, args):
    """The batch must split evenly between the towers."""
    if args.batch_size % args.num_devices:
        parser.error('argument --num-devices: --batch-size %d does not split into %d '
                     'equal parts' % (args.batch_size, args.num_devices))


def add_precision_flag(parser, default, note='', default_help=None):
    """--precision: bf16 runs a network's arithmetic in bfloat16 (weights,
    loss and batch-norm statistics stay float32). A default of None leaves
    the choice to the script, which `default_help` describes."""
    parser.add_argument('--precision', choices=['auto', 'fp32', 'bf16'], default=default,
                        help="bf16 runs the network in bfloat16: faster on CPUs with AVX-512 "
                             "BF16 or AMX{}; 'auto' picks bf16 on such CPUs and fp32 "
                             "elsewhere (default: {})".format(note, default_help or default))


def precision(choice):
    """'bf16' or 'fp32' for a --precision value ('auto' asks the CPU)."""
    if choice == 'auto':
        return 'bf16' if cpu_has_bf16() else 'fp32'
    return choice


def precision_note(choice, picked):
    """How a run's precision was chosen, for its first line: 'bf16 (auto: this
    CPU has native bfloat16)', 'fp32 (auto: no native bfloat16 here)', or the
    precision alone when it was asked for."""
    if choice != 'auto':
        return picked
    return '%s (auto: %s)' % (picked, 'this CPU has native bfloat16' if picked == 'bf16'
                              else 'no native bfloat16 on this CPU')


# oneDNN's instruction sets below AVX-512 BF16: ONEDNN_MAX_CPU_ISA set to one of
# them makes TensorFlow run the kernels of a CPU without bfloat16
ISAS_WITHOUT_BF16 = {'SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2', 'AVX512_CORE',
                     'AVX512_CORE_VNNI'}


def cpu_has_bf16(cpuinfo='/proc/cpuinfo'):
    """Whether the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX);
    elsewhere oneDNN emulates it, slower than float32. $ONEDNN_MAX_CPU_ISA
    capped below AVX512_CORE_BF16 counts as such a CPU."""
    return not onednn_capped_below_bf16() and cpu_flags_have_bf16(cpuinfo)


def onednn_capped_below_bf16():
    """Whether $ONEDNN_MAX_CPU_ISA keeps oneDNN below AVX512_CORE_BF16."""
    return os.environ.get('ONEDNN_MAX_CPU_ISA', '').upper() in ISAS_WITHOUT_BF16


def cpu_flags_have_bf16(cpuinfo='/proc/cpuinfo'):
    """Whether the CPU's flags (Linux's /proc/cpuinfo) name AVX-512 BF16 or AMX."""
    try:
        with open(cpuinfo) as f:
            flags = set(' '.join(line for line in f if line.startswith('flags')).split())
    except OSError:          # not Linux: stay with float32
        return False
    return bool(flags & {'avx512_bf16', 'amx_bf16'})


def check_batch_size(batch_size, train_count, held_out=0):
    """Raises DataError when a batch would not fit in the training set.

    Args:
      batch_size: images per step (--batch-size).
      train_count: images the steps draw from.
      held_out: images the script set aside for validation, named in the
        message (else a folder's "120 training" pictures become "96").
    """
    if batch_size > train_count:
        why = (' (%d less the %d held out for validation)' % (train_count + held_out, held_out)
               if held_out else '')
        raise DataError('--batch-size %d is larger than the %d training images%s; use '
                        '--batch-size %d or less' % (batch_size, train_count, why, train_count))


MIN_STEPS_PER_EPOCH = 8     # a default batch that would make fewer steps an epoch is made smaller


def fit_batch_size(args, train_count, whose):
    """Fits a default batch size to a small training set (a folder of a few
    hundred pictures), saying so in one line: where --batch-size was not
    given and the default would make fewer than MIN_STEPS_PER_EPOCH steps
    an epoch, the largest power of two that makes that many (at least 16,
    at most the set, a multiple of --num-devices).

    Args:
      args: the parsed flags: batch_size (the default filled in),
        batch_size_given, num_devices.
      train_count: images the steps draw from.
      whose: "the recipe's" or "the article's", for the line.
    """
    steps = train_count // args.batch_size
    if args.batch_size_given or steps >= MIN_STEPS_PER_EPOCH:
        return
    batch = 2 ** max(4, int(math.log2(max(1, train_count // MIN_STEPS_PER_EPOCH))))
    batch = min(batch, train_count)
    batch = max(batch - batch % args.num_devices, args.num_devices)
    print('Batches of {} ({} {} would make {} step{} an epoch of the {:,} training pictures; '
          '--batch-size sets it)'.format(batch, whose, args.batch_size, steps,
                                         's' * (steps != 1), train_count))
    args.batch_size = batch


def exit_on_error(main, args):
    """Runs main(args); a DataError, an OSError or Ctrl-C ends the program with one line."""
    program = os.path.basename(sys.argv[0])
    try:
        return main(args)
    except DataError as e:
        line = '%s: error: %s' % (program, e)
    except OSError as e:     # a file that cannot be written: a full disk, a folder gone
        where = ('%s: ' % e.filename) if e.filename else ''
        line = '%s: error: %s%s' % (program, where, e.strerror or e)
    except KeyboardInterrupt:
        line = '%s: interrupted' % program
    flush_stdout()
    sys.exit(line)


def flush_stdout():
    """What the program printed goes out before its error line: piped, stdout
    is buffered, and Python would flush it after printing the line to stderr.
    A reader gone (`| head`) gets nothing more, and no 'Exception ignored ...
    BrokenPipeError' at exit (exit status 120): stdout then goes to devnull."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):    # gone, closed, or none (pythonw)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
