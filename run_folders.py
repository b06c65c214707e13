"""Run folders: what a run leaves behind for predict.py, export.py and --restore.

* `start_run_dir()`: a run's folder, created whole with its model.json.
* `write_model_info()`, `read_model_info()`, `preprocess()`: model.json, how
  the model wants its input, written, read back (and checked), and as a graph.
* `write_json()`, `History`: history.json and result.json.
  (Its checkpoints: checkpoints.py.)
* `SIGNATURE`, `CLASS_NAMES`, `CROP`: the names in the SavedModel export.py
  writes and predict.py reads.
"""

import datetime
import errno
import json
import math
import os
import shutil
import tempfile

import numpy as np
import tensorflow.compat.v1 as tf

from errors import DataError, current_umask, write_file_atomically

MODEL_INFO = 'model.json'
SPLIT = 'split.json'    # a folder of pictures: which files trained, which tested


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
        reason = 'a file, not a folder' if os.path.isfile(train_dir) else e.strerror or e
        raise DataError('cannot create a run folder in %s (%s): give a --train-dir you '
                        'can write to' % (train_dir, reason)) from None


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
# Exported models: the names export.py writes and predict.py reads
# -----------------------------------------------------------------------------

SIGNATURE = 'serving_default'
CLASS_NAMES = 'class_names.txt'     # in the SavedModel's assets, one name per line
CROP = 'crop.txt'                   # ... and how pictures were cut to a square
