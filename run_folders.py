"""Run folders, and the session around a run: what every training script shares.

* `fresh_graph(seed)`: a new default graph, seeded, and a numpy generator.
* `session_config()`: the session options these small graphs run best with.
* `evaluate()`: a model's accuracy (and mean loss) over a whole set, in batches.
* `start_run_dir()`, `read_model_info()`, `write_json()`, `History`: a run's
  folder, created whole with the model.json that predict.py reads (and
  checks), history.json and result.json.
* `saver()`, `save_checkpoint()`: checkpoints that move with their folder.
* `checkpoints()`, `checkpoint_folder()`, `restore()`, `load_trained_model()`:
  find and load a saved model, falling back from a damaged or half-written
  checkpoint to the newest complete one, with one clear line when there is
  none or it belongs to another model.
* `SIGNATURE`, `CLASS_NAMES`, `CROP`: the names in the SavedModel export.py
  writes and predict.py reads.
"""

import contextlib
import datetime
import errno
import glob
import json
import math
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow.compat.v1 as tf

from errors import DataError, current_umask, write_file_atomically

MODEL_INFO = 'model.json'
SPLIT = 'split.json'    # a folder of pictures: which files trained, which tested
EVAL_BATCH_SIZE = 500   # images per session.run: bounded memory for any set


# -----------------------------------------------------------------------------
# The session
# -----------------------------------------------------------------------------

def fresh_graph(seed):
    """Starts a new default graph with `seed` as its graph-level seed.

    A fresh graph each run keeps TensorFlow's op seeds the same from run to
    run, so the same seed gives the same run even within one process.

    Returns:
      numpy Generator seeded with `seed` (None: random), for the batches.
    """
    tf.reset_default_graph()
    tf.set_random_seed(seed)
    return np.random.default_rng(seed)


def session_config():
    """Session options for these small graphs: one op at a time, each using
    every core. TensorFlow's default also runs independent ops side by side,
    and on a machine with few cores they then fight over them (measured in
    BENCHMARKS.md)."""
    return tf.ConfigProto(inter_op_parallelism_threads=1)


def evaluate(sess, predictions, images_placeholder, labels_placeholder, images, labels,
             means=None, batch_size=EVAL_BATCH_SIZE):
    """Scores a model on a whole set, `batch_size` images per session.run.

    Args:
      sess: the session holding the model.
      predictions: [batch] int64 tensor, the predicted class of each image.
      images_placeholder, labels_placeholder: what the set is fed through.
      images, labels: the set.
      means: optional {name: scalar tensor} of per-batch means (a loss, say),
        averaged over the set weighted by batch size.

    Returns:
      {'accuracy': fraction of images predicted right (exact),
       'predictions': int64 [len(images)], and each name of `means`}.
    """
    means = means or {}
    chosen, sums = [], dict.fromkeys(means, 0.0)
    for start in range(0, len(images), batch_size):
        feed = {images_placeholder: images[start:start + batch_size],
                labels_placeholder: labels[start:start + batch_size]}
        batch_predictions, batch_means = sess.run([predictions, means], feed)
        chosen.append(batch_predictions)
        for name, value in batch_means.items():
            sums[name] += float(value) * len(batch_predictions)
    chosen = np.concatenate(chosen)
    result = {name: total / len(images) for name, total in sums.items()}
    result.update(accuracy=int(np.sum(chosen == labels)) / len(images), predictions=chosen)
    return result


# -----------------------------------------------------------------------------
# What a run leaves behind
# -----------------------------------------------------------------------------

def start_run_dir(train_dir, prefix, classes, dataset, layout, mean_image=None, split=None,
                  **trained_by):
    """Creates train_dir/<prefix><timestamp>/ holding its model.json, before training.

    The folder appears whole or not at all: it is written under a temporary
    name and renamed, so there is never a run folder without its model.json,
    and an unwritable --train-dir is found before any training.

    Args:
      train_dir: where run folders go (created if missing).
      prefix: the start of the folder's name ('small-', 'fast-', or '').
      classes, dataset, layout, mean_image, trained_by: what model.json
        records (see `write_model_info`).
      split: for a folder of pictures, which files trained and which
        tested ({'train': [...], 'test': [...], ...}), saved as split.json.

    Returns:
      The path of the new run folder (unique if two runs start in one second).

    Raises:
      DataError: the folder cannot be created or written.
    """
    stamp = prefix + datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    try:
        os.makedirs(train_dir, exist_ok=True)
        work = tempfile.mkdtemp(prefix='.' + stamp + '.', dir=train_dir)
        try:
            write_model_info(work, classes, dataset, layout, mean_image, **trained_by)
            if split:
                write_json(os.path.join(work, SPLIT), split)
            os.chmod(work, 0o777 & ~current_umask())          # mkdtemp's 0700 is for secrets
            path, suffix = os.path.join(train_dir, stamp), 1
            while True:
                try:   # a non-empty folder is never replaced: another run's stays
                    os.rename(work, path)
                    return path
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                path, suffix = os.path.join(train_dir, '%s-%d' % (stamp, suffix)), suffix + 1
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except OSError as e:
        raise DataError('cannot create a run folder in %s (%s): give a --train-dir you '
                        'can write to' % (train_dir, e.strerror or e)) from None


def write_json(path, content):
    """Writes `content` as JSON through a temporary name."""
    write_file_atomically(path, json.dumps(content, indent=1).encode())


def write_model_info(run_dir, classes, dataset, layout, mean_image=None, script=None,
                     model=None, output_without_tta=None, precision=None, image_size=None,
                     crop=None, channel_stats=None):
    """Saves, beside the checkpoints, how the model wants its input (model.json).

    Args:
      run_dir: the run folder.
      classes: the class names, in the order of the model's outputs.
      dataset: 'cifar10', 'cifar100', 'mnist' or 'folder' (your own pictures).
      layout: 'flat' ([N, pixels] rows; CIFAR-10's as R, G, B planes) or
        'nhwc' ([N, height, width, channels]).
      mean_image: the mean image subtracted in training, or None when the
        pixels were scaled to [0, 1].
      script, model: the script that trained it and its --model or --preset
        (export.py refuses a run that does not say).
      output_without_tta: where `output` averages test-time augmentation, the
        output without it.
      precision: 'fp32' or 'bf16', where a script rebuilds the graph to
        restore the run (cnn.py --restore).
      image_size: the side of the model's input (default: 28 for MNIST,
        32 for CIFAR-10).
      crop: how pictures were cut to a square ('center' or 'none',
        image_folders.prepare_picture), which predict.py then uses too.
      channel_stats: (mean, std) per channel the model normalises with
        inside its graph, recorded for reference.
    """
    write_json(os.path.join(run_dir, MODEL_INFO), {
        'dataset': dataset,
        'image_size': image_size or (28 if dataset == 'mnist' else 32),
        'channels': 1 if dataset == 'mnist' else 3,
        'layout': layout,
        'normalization': 'scale' if mean_image is None else 'mean',
        'mean_image': None if mean_image is None else
        np.asarray(mean_image, np.float64).reshape(-1).tolist(),
        'classes': list(classes),
        'input': 'images:0',
        'output': 'probabilities:0',
        'script': script,
        'model': model,
        **({'output_without_tta': output_without_tta} if output_without_tta else {}),
        **({'precision': precision} if precision else {}),
        **({'crop': crop} if crop else {}),
        **({'channel_mean': [float(v) for v in channel_stats[0]],
            'channel_std': [float(v) for v in channel_stats[1]]} if channel_stats is not None
           else {}),
    })


def preprocess(images, info):
    """The model's pre-processing as model.json describes it, in the graph:
    float or uint8 pixels [batch, size, size, channels] in 0..255 -> the
    model's input (export.py puts it in front of the exported model; predict.py
    runs it on the pictures).

    'flat' models take rows of red plane, green plane, blue plane; 'mean'
    subtracts the mean image, 'scale' divides by 255; an exported model
    ('none') takes the pixels as uint8.
    """
    with tf.name_scope('preprocess'):
        if info['normalization'] == 'none':
            return tf.cast(images, tf.uint8)
        x = tf.cast(images, tf.float32)
        if info['layout'] == 'flat':
            x = tf.reshape(tf.transpose(x, [0, 3, 1, 2]),
                           [-1, info['image_size'] ** 2 * info['channels']])
        if info['normalization'] == 'mean':
            mean_image = np.asarray(info['mean_image'], np.float32)
            return x - tf.constant(mean_image.reshape(x.shape.as_list()[1:]), name='mean_image')
        return x / 255


def read_model_info(run_dir):
    """Reads and checks a run folder's model.json.

    Returns:
      The dict `write_model_info` wrote.

    Raises:
      DataError: the file is missing, not JSON, or a key is missing or wrong;
        the message names the file and the key.
    """
    path = os.path.join(run_dir, MODEL_INFO)
    try:
        with open(path, 'rb') as f:
            info = json.loads(f.read(1 << 24).decode('utf-8'))
    except (OSError, ValueError) as e:
        raise DataError('cannot read %s (%s); the training scripts write it beside their '
                        'checkpoints' % (path, getattr(e, 'strerror', None) or e)) from None

    def check(key, valid, expected):
        if not isinstance(info, dict) or key not in info:
            raise DataError('%s has no %r: it is not the model.json a training script '
                            'wrote' % (path, key))
        try:
            ok = valid(info[key])
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError('%s: %r is %.60r, expected %s' % (path, key, info[key], expected))

    check('dataset', lambda v: v in ('cifar10', 'cifar100', 'mnist', 'folder'),
          "'cifar10', 'cifar100', 'mnist' or 'folder'")
    check('image_size', lambda v: type(v) is int and 0 < v <= 1024, 'a size in pixels')
    check('channels', lambda v: type(v) is int and v in (1, 3), '1 or 3')
    check('layout', lambda v: v in ('flat', 'nhwc'), "'flat' or 'nhwc'")
    check('normalization', lambda v: v in ('mean', 'scale'), "'mean' or 'scale'")
    if info['normalization'] == 'mean':
        pixels = info['image_size'] ** 2 * info['channels']
        check('mean_image', lambda v: len(v) == pixels and all(
            type(x) in (int, float) and math.isfinite(x) for x in v),
            'a list of %d numbers' % pixels)
    check('classes', lambda v: len(v) >= 2 and all(isinstance(c, str) for c in v),
          'a list of class names')
    if 'crop' in info:
        check('crop', lambda v: v in ('center', 'none'), "'center' or 'none'")
    for key in ('input', 'output') + (('output_without_tta',) if 'output_without_tta' in info
                                      else ()):
        check(key, lambda v: isinstance(v, str) and v.endswith(':0'), 'a tensor name')
    for key in ('script', 'model'):        # absent from runs older than export.py
        info.setdefault(key, None)
        check(key, lambda v: v is None or isinstance(v, str), 'a name')
    return info


class History(dict):
    """A run's history: {name: [one value per report]}, saved as history.json."""

    def record(self, **values):
        for name, value in values.items():
            self.setdefault(name, []).append(float(value))

    def last(self):
        """{name: its latest value}."""
        return {name: values[-1] for name, values in self.items()}

    def save(self, run_dir):
        write_json(os.path.join(run_dir, 'history.json'), self)


# -----------------------------------------------------------------------------
# Checkpoints
# -----------------------------------------------------------------------------

def saver(var_list=None, max_to_keep=5):
    """A tf.train.Saver whose `checkpoint` file names checkpoints relative to
    their folder, so a run folder works wherever it is moved or copied."""
    return tf.train.Saver(var_list, max_to_keep=max_to_keep, save_relative_paths=True)


def save_checkpoint(saver, session, run_dir, step=None):
    """Saves model.ckpt[-step] into the run folder.

    Raises:
      DataError: the checkpoint cannot be written (a full disk, a folder gone).
    """
    try:
        with quiet_deprecations():      # deleting the oldest checkpoint says 'deprecated'
            return saver.save(session, os.path.join(run_dir, 'model.ckpt'), global_step=step)
    except (tf.errors.OpError, OSError, ValueError) as e:
        raise DataError('cannot save a checkpoint in %s (%s)' % (run_dir, error_line(e))) from None


@contextlib.contextmanager
def quiet_deprecations():
    """TensorFlow's v1 APIs log 'deprecated' warnings; hide them inside the block."""
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity(tf.logging.ERROR)
    try:
        yield
    finally:
        tf.logging.set_verbosity(verbosity)


def error_line(error):
    """The line of an error's message that says what went wrong, for a
    one-line report: for TensorFlow's graph errors the line before their
    '[[{{node ...}}]]', else the first line."""
    text = getattr(error, 'message', None) or getattr(error, 'strerror', None) or str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    ends = [i for i, line in enumerate(lines) if line.startswith('[[')]
    if ends and ends[0] > 0:
        return lines[ends[0] - 1][:160]
    return (lines[0] if lines else type(error).__name__)[:160]


def checkpoints(folder, need_meta=False):
    """The complete checkpoints in `folder`, newest first.

    Read from the files themselves, not from the `checkpoint` file, which may
    hold absolute paths of the folder's old place, or name a checkpoint whose
    files are not all written yet (a run still training, or killed). Complete:
    its .index and every .data shard (and, with need_meta, its .meta) exist
    and are not empty.

    Returns:
      Checkpoint prefixes (paths without the .index), the highest step first.
    """
    return [prefix for _, _, prefix in _complete_checkpoints(folder, need_meta)]


def _complete_checkpoints(folder, need_meta):
    """(step, modification time, prefix) of each complete checkpoint, newest first."""
    found = []
    for index in glob.glob(os.path.join(glob.escape(folder), '*.index')):
        prefix = index[:-len('.index')]
        try:
            if _complete(prefix, need_meta):
                step = re.search(r'-(\d+)$', prefix)
                found.append((int(step.group(1)) if step else -1, os.path.getmtime(index),
                              prefix))
        except OSError:      # deleted meanwhile by a run still training
            continue
    return sorted(found, reverse=True)


def _complete(prefix, need_meta=False):
    """Whether a checkpoint's .index, every .data shard (and its .meta) are
    there and not empty. Raises OSError when a file vanishes meanwhile."""
    shards = glob.glob(glob.escape(prefix) + '.data-?????-of-?????')
    parts = shards + [prefix + '.index'] + ([prefix + '.meta'] if need_meta else [])
    try:
        whole = {int(name[-5:]) for name in shards} == {len(shards)}
    except ValueError:
        return False
    return whole and all(os.path.getsize(part) > 0 for part in parts)


def checkpoint_folder(train_dir, need_meta=False):
    """`train_dir` if it holds complete checkpoints, else its newest run folder that does.

    Raises:
      DataError: there is none.
    """
    if checkpoints(train_dir, need_meta):
        return train_dir
    names = os.listdir(train_dir) if os.path.isdir(train_dir) else []
    runs = []
    for name in names:
        if not name.startswith('.'):
            found = _complete_checkpoints(os.path.join(train_dir, name), need_meta)
            if found:
                runs.append((found[0][1], os.path.join(train_dir, name)))
    if not runs:
        raise DataError('no complete checkpoint in %s or its run folders; train first'
                        % train_dir)
    return max(runs)[1]


def _newest_that_loads(folder, load, built_with=None, need_meta=False, rounds=3):
    """Calls load(prefix) on the folder's checkpoints, newest first, until one works.

    Each is loaded from a private copy of its files, so a run still training
    cannot delete them halfway (it keeps only the last few). A checkpoint that
    fails to load is damaged (cut short by a killed run or a full disk) and
    the next older one is tried; when all have vanished meanwhile, the folder
    is listed again. One whose files read but whose variables differ from the
    graph's is of another model, and so are the older ones: that ends it.

    Returns:
      (the prefix that loaded, what load returned).

    Raises:
      DataError: none loads; the message names the newest one and why.
    """
    errors, tried = [], set()
    for _ in range(rounds):
        fresh = [p for p in checkpoints(folder, need_meta) if p not in tried]
        for prefix in fresh:
            tried.add(prefix)
            try:
                with _private_copy(prefix, need_meta) as copy:
                    try:
                        return prefix, load(copy)
                    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError):
                        if built_with and _readable(copy):    # whole, yet not this model
                            raise DataError('%s does not match the model built with %s: '
                                            'give the options it was trained with'
                                            % (prefix, built_with)) from None
                        raise
            except DataError:
                raise
            except FileNotFoundError as e:      # deleted meanwhile by a run training
                errors.append((prefix, e))
            except OSError as e:                # the copy itself failed: say so
                raise DataError('cannot copy %s to a temporary folder (%s)'
                                % (prefix, error_line(e))) from None
            except Exception as e:   # damaged files: OpErrors, protobuf's DecodeError, ...
                errors.append((prefix, e))
    if not errors:
        raise DataError('no complete checkpoint in %s; train first' % folder)
    prefix, error = errors[0]
    raise DataError('no usable checkpoint: %s is damaged or incomplete (%s: %s)%s' % (
        prefix, type(error).__name__, error_line(error),
        ', and so is every older one' if len(errors) > 1 else ''))


@contextlib.contextmanager
def _private_copy(prefix, need_meta=False):
    """Copies a checkpoint's files (.index, .data-*, .meta) to a temporary
    folder; yields the copy's prefix. A file deleted before it is opened
    raises FileNotFoundError; once open, its bytes stay readable."""
    if not _complete(prefix, need_meta):
        raise FileNotFoundError(errno.ENOENT, 'incomplete or deleted meanwhile', prefix)
    work = tempfile.mkdtemp(prefix='checkpoint-')
    try:
        for path in glob.glob(glob.escape(prefix) + '.*'):
            with open(path, 'rb') as source, \
                    open(os.path.join(work, os.path.basename(path)), 'wb') as target:
                shutil.copyfileobj(source, target)
        copy = os.path.join(work, os.path.basename(prefix))
        if not _complete(copy, need_meta):
            raise FileNotFoundError(errno.ENOENT, 'deleted while copied', prefix)
        yield copy
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _readable(prefix):
    """Whether a checkpoint's variables can be listed (its files are whole)."""
    try:
        tf.train.list_variables(prefix)
        return True
    except Exception:
        return False


def restore(saver, session, train_dir, built_with):
    """Restores the newest usable checkpoint of train_dir (or of its newest run).

    Returns:
      The checkpoint restored.

    Raises:
      DataError: there is no usable checkpoint, or it is of another model.
    """
    return _newest_that_loads(checkpoint_folder(train_dir),
                              lambda prefix: saver.restore(session, prefix), built_with)[0]


def load_trained_model(run_dir):
    """A trained model as predict.py uses it: the graph of the newest usable
    checkpoint's meta graph (nothing is rebuilt) and its weights.

    Args:
      run_dir: a run folder, or a folder of run folders (the newest is used).

    Returns:
      (session, graph, checkpoint prefix, info from model.json).

    Raises:
      DataError: no run folder, no usable checkpoint, or a bad model.json.
    """
    if not os.path.isdir(run_dir):
        raise DataError('run folder %s does not exist' % run_dir)
    folder = checkpoint_folder(run_dir, need_meta=True)
    info = read_model_info(folder)

    def load(prefix):
        graph = tf.Graph()
        with graph.as_default():
            saver = tf.train.import_meta_graph(prefix + '.meta', clear_devices=True)
            session = tf.Session(graph=graph)
            try:
                saver.restore(session, prefix)
            except Exception:
                session.close()
                raise
        return session, graph

    prefix, (session, graph) = _newest_that_loads(folder, load, need_meta=True)
    return session, graph, prefix, info


# -----------------------------------------------------------------------------
# Exported models: the names export.py writes and predict.py reads
# -----------------------------------------------------------------------------

SIGNATURE = 'serving_default'
CLASS_NAMES = 'class_names.txt'     # in the SavedModel's assets, one name per line
CROP = 'crop.txt'                   # ... and how pictures were cut to a square
