"""Run folders, and the session around a run: what every training script shares.

* `fresh_graph(seed)`: a new default graph, seeded, and a numpy generator.
* `session_config()`: the session options these small graphs run best with.
* `evaluate()`: a model's accuracy (and mean loss) over a whole set, in batches.
* `new_run_dir()`, `write_model_info()`, `write_json()`, `History`: a run's
  folder, the model.json that predict.py reads, history.json and result.json.
* `latest_checkpoint()`, `restore()`: find and load a saved model, with one
  clear line when there is none or it belongs to another model.
"""

import datetime
import json
import os

import numpy as np
import tensorflow.compat.v1 as tf

from downloads import DataError, write_file_atomically

MODEL_INFO = 'model.json'
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

def new_run_dir(train_dir, prefix=''):
    """Makes train_dir/<prefix><timestamp>/, unique if two runs start in one second."""
    stamp = prefix + datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    path, suffix = os.path.join(train_dir, stamp), 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            path, suffix = os.path.join(train_dir, '%s-%d' % (stamp, suffix)), suffix + 1


def write_json(path, content):
    """Writes `content` as JSON through a temporary name."""
    write_file_atomically(path, json.dumps(content, indent=1).encode())


def write_model_info(run_dir, classes, dataset, layout, mean_image=None):
    """Saves, beside the checkpoints, how the model wants its input (model.json).

    Args:
      run_dir: the run folder.
      classes: the class names, in the order of the model's outputs.
      dataset: 'cifar10' or 'mnist'.
      layout: 'flat' ([N, pixels] rows; CIFAR-10's as R, G, B planes) or
        'nhwc' ([N, height, width, channels]).
      mean_image: the mean image subtracted in training, or None when the
        pixels were scaled to [0, 1].
    """
    write_json(os.path.join(run_dir, MODEL_INFO), {
        'dataset': dataset,
        'image_size': 28 if dataset == 'mnist' else 32,
        'channels': 1 if dataset == 'mnist' else 3,
        'layout': layout,
        'normalization': 'scale' if mean_image is None else 'mean',
        'mean_image': None if mean_image is None else
        np.asarray(mean_image, np.float64).reshape(-1).tolist(),
        'classes': list(classes),
        'input': 'images:0',
        'output': 'probabilities:0',
    })


class History(dict):
    """A run's history: {name: [one value per report]}, saved as history.json."""

    def record(self, **values):
        for name, value in values.items():
            self.setdefault(name, []).append(float(value))

    def save(self, run_dir):
        write_json(os.path.join(run_dir, 'history.json'), self)


# -----------------------------------------------------------------------------
# Checkpoints
# -----------------------------------------------------------------------------

def latest_checkpoint(train_dir):
    """The newest checkpoint in train_dir itself or in its newest run folder.

    Raises:
      DataError: there is none.
    """
    checkpoint = tf.train.latest_checkpoint(train_dir)
    if checkpoint:
        return checkpoint
    runs = sorted((os.path.join(train_dir, name) for name in
                   (os.listdir(train_dir) if os.path.isdir(train_dir) else [])
                   if tf.train.latest_checkpoint(os.path.join(train_dir, name))),
                  key=os.path.getmtime)
    if not runs:
        raise DataError('no checkpoint in %s or its run folders; train first'
                        % train_dir)
    return tf.train.latest_checkpoint(runs[-1])


def restore(saver, session, checkpoint, built_with):
    """saver.restore, with one clear line when the checkpoint is of another model.

    Raises:
      DataError: the checkpoint's variables do not match this graph.
    """
    try:
        saver.restore(session, checkpoint)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError):
        raise DataError('%s does not match the model built with %s: give the options it '
                        'was trained with' % (checkpoint, built_with)) from None
