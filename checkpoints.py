"""Checkpoints: saved so that they move with their run folder, and found and
loaded back whatever happened to the run.

* `saver()`, `save_checkpoint()`: checkpoints named relative to their folder.
* `complete_checkpoints()`, `checkpoint_folder()`: which checkpoints are
  whole, and the newest run folder that has one.
* `restore()`, `load_trained_model()`: load a saved model into the graph the
  script built, or with its own saved graph (predict.py, export.py), falling
  back from a damaged or half-written checkpoint to the newest complete one,
  with one clear line when there is none or it belongs to another model.
* `quiet_deprecations()`: TensorFlow's v1 'deprecated' warnings hidden
  around saving (and predict.py's loading of a SavedModel).
"""

import contextlib
import errno
import glob
import os
import re
import shutil
import tempfile

import tensorflow.compat.v1 as tf

import run_folders
from errors import DataError, error_line


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


def complete_checkpoints(folder, need_meta=False):
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
    if complete_checkpoints(train_dir, need_meta):
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
        fresh = [p for p in complete_checkpoints(folder, need_meta) if p not in tried]
        for prefix in fresh:
            tried.add(prefix)
            try:
                with _private_copy(prefix, need_meta) as copy:
                    try:
                        return prefix, load(copy)
                    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
                            _OtherShapes) as e:
                        if built_with and _readable(copy):    # whole, yet not this model
                            other_shapes = isinstance(e, _OtherShapes)
                            raise DataError('%s does not match the model built with %s%s: '
                                            'give the options %sit was trained with'
                                            % (prefix, built_with,
                                               ' (%s)' % e if other_shapes else '',
                                               'and the data ' if other_shapes else '')) from None
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
    def load(prefix):
        _check_shapes(session.graph, prefix)
        saver.restore(session, prefix)

    return _newest_that_loads(checkpoint_folder(train_dir), load, built_with)[0]


class _OtherShapes(Exception):
    """A checkpoint whose variables have other shapes than the graph's."""


def _check_shapes(graph, prefix):
    """Checks that the checkpoint's variables fit the graph's. (Restoring
    does not: a resource variable takes whatever shape is assigned, so a
    20-class run's weights would load into a 10-class graph and score
    nonsense.)

    Args:
      graph: the graph the checkpoint is to be restored into.
      prefix: the checkpoint.

    Raises:
      _OtherShapes: naming the first variable whose shape differs (a
        variable only one of them has is the saver's to report).
    """
    try:
        stored = dict(tf.train.list_variables(prefix))
    except Exception:        # damaged: restoring says so, and older ones are tried
        return
    for variable in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES):
        name, shape = variable.op.name, variable.shape.as_list()
        if name in stored and list(stored[name]) != shape:
            raise _OtherShapes('%s: %s in the checkpoint, %s here' % (name, stored[name], shape))


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
    info = run_folders.read_model_info(folder)

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
