"""Several devices in one process: one training tower per device, gradients averaged.

The in-graph replication of TensorFlow's classic `cifar10_multi_gpu_train.py`,
in `tf.compat.v1` without contrib:

* `devices(n)`: the GPUs when there are n of them, else n virtual CPU devices
  (how the tests, and a machine without GPUs, run the same code).
* `session_config(n)`: the session options, with the virtual CPU devices.
* `tower_gradients(build_loss, inputs, devices)`: each batch split into one
  slice per device; `build_loss` called once per device under `tower_<i>`,
  sharing the variables (kept on the CPU); the gradients averaged. The caller
  applies them with its own optimiser: one update for all towers. With one
  device it is the plain single-device graph, placed by TensorFlow.

Why not `tf.compat.v1.distribute.MirroredStrategy`, which also works in graph
mode: it hides the towers behind `strategy.run` and mirrored variable types,
where this tutorial's point is to show each step (split, towers, average,
apply) in the code; it was not measured against these towers.

The training set stays where the in-graph sampler put it (the first GPU, or
the CPU); the batch is gathered there and each tower's slice copied to its
device, as the tutorial's input queues on the CPU did.

What this means for training:
* The gradient of the averaged tower losses is the gradient of the whole
  batch's mean loss, so without batch norm N towers of batch B/N take the
  same step as one device with batch B (tests/test_towers.py checks it).
  Keep the global batch and the learning rate as they were; to grow the
  global batch with the device count, scale the learning rate with it
  (Goyal et al. 2017, "Accurate, large minibatch SGD") and check.
* Batch norm is per tower, as in the tutorial: each tower normalises with the
  statistics of its own slice, and the moving averages follow tower 0's
  slice (only its update ops run), so N towers of B/N are not one device of B.
"""

import tensorflow.compat.v1 as tf

import sessions
from errors import DataError

VARIABLE_OPS = ('Variable', 'VariableV2', 'VarHandleOp')


def devices(count):
    """The device of each tower: '/gpu:0'..'/gpu:<count-1>' on a machine with
    GPUs, '/cpu:0'.. (virtual devices, see `session_config`) on one without.

    Raises:
      DataError: more devices asked for than the machine has GPUs.
    """
    gpus = len(tf.config.list_physical_devices('GPU'))
    if not gpus:
        return ['/cpu:%d' % i for i in range(count)]
    if count > gpus:
        raise DataError('--num-devices %d: this machine has %d GPU%s'
                        % (count, gpus, '' if gpus == 1 else 's'))
    return ['/gpu:%d' % i for i in range(count)]


def session_config(count):
    """sessions.session_config(), with `count` CPU devices where towers need
    them, and ops without a GPU kernel allowed onto the CPU."""
    config = sessions.session_config()
    if count > 1:
        config.allow_soft_placement = True
        if devices(count)[0].startswith('/cpu'):
            config.device_count['CPU'] = count
    return config


def _on_device(device):
    """Ops on `device`; variables on the CPU, where every tower reads them."""
    def place(op):
        return '/cpu:0' if op.type in VARIABLE_OPS else device
    return tf.device(place)


def _gradients(loss):
    """[(gradient of loss, variable)] for every trainable variable: one tower's
    (tf.gradients, as the scripts' `training()` takes them on one device)."""
    variables = tf.trainable_variables()
    return list(zip(tf.gradients(loss, variables), variables))


def tower_gradients(build_loss, inputs, tower_devices):
    """Builds one training tower per device and averages their gradients.

    Args:
      build_loss: called with one slice of each input; returns (the slice's
        mean loss, anything else the caller wants per tower). Variables it
        creates with tf.get_variable are shared between the towers.
      inputs: tensors whose first dimension is the batch (divisible by the
        number of devices).
      tower_devices: from `devices()`.

    Returns:
      (mean of the tower losses, [(averaged gradient, variable)], the list of
      the second values `build_loss` returned). Only tower 0's UPDATE_OPS
      (batch norm) remain in the collection.
    """
    if len(tower_devices) == 1:      # one device: the plain graph, placed by TensorFlow
        loss, extra = build_loss(*inputs)
        return loss, _gradients(loss), [extra]
    slices = list(zip(*[tf.split(x, len(tower_devices)) for x in inputs]))
    updates = tf.get_collection_ref(tf.GraphKeys.UPDATE_OPS)
    losses, extras, tower_grads = [], [], []
    for i, device in enumerate(tower_devices):
        updates_before = len(updates)
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE), \
                tf.name_scope('tower_%d' % i), _on_device(device):
            loss, extra = build_loss(*slices[i])
            tower_grads.append(_gradients(loss))
        if i > 0:     # batch-norm averages: tower 0's updates only, as the tutorial did
            del updates[updates_before:]
        losses.append(loss)
        extras.append(extra)
    with tf.name_scope('average_towers'):
        return tf.add_n(losses) / len(losses), average_gradients(tower_grads), extras


def average_gradients(tower_grads):
    """[[(gradient, variable)] per tower] -> [(mean gradient, variable)]."""
    averaged = []
    for pairs in zip(*tower_grads):
        gradients = [g for g, _ in pairs if g is not None]
        mean = tf.add_n(gradients) / len(gradients) if gradients else None
        averaged.append((mean, pairs[0][1]))
    return averaged
