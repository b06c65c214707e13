"""The graph and the session around every run: what every training script shares.

* `fresh_graph(seed)`: a new default graph, seeded, and a numpy generator.
* `session_config()`: the session options these small graphs run best with.
* `evaluate()`: a model's accuracy (and mean loss) over a whole set, in batches;
  each script's `do_eval` calls it.

Importing it also gives TensorFlow's CPU the allocator its GPUs have.
"""

import os

import numpy as np
import tensorflow.compat.v1 as tf

# TensorFlow's best-fit-with-coalescing allocator on the CPU too: it keeps the
# memory a step frees for the next step, where the default hands large tensors
# back to the system and pays a page fault per 4 KB page when it takes them
# again. On an AVX2 AMD EPYC that made elementwise ops 2-5x faster and
# fast_cnn's step 1.15-1.2x (BENCHMARKS.md, "On a real AVX2 CPU"). TensorFlow
# reads this when it first allocates on the CPU: before any session.
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')

EVAL_BATCH_SIZE = 500   # images per session.run: bounded memory for any set


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
