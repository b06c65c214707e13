"""Test accuracy of a run's exports: the run's own graph, the SavedModel, TFLite
float and TFLite with int8 weights (--quantize), with the files' sizes.

    CIFAR10_DIR=... python benchmarks/bench_export.py RUN_DIR [--tta]

Exports RUN_DIR twice into a temporary folder (float and quantised TFLite),
then scores the 10,000 test images through each. The run's own graph is the
one predict.py uses (model.json's `output`, which for fast_cnn includes its
test-time augmentation; with --tta the exports include it too).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cli  # noqa: E402  (no TensorFlow inside)
cli.prepare_tensorflow()  # TensorFlow's kernels as export.py and predict.py run them
import data_helpers  # noqa: E402
import export  # noqa: E402
import predict  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402


def batches(images, size=500):
    for start in range(0, len(images), size):
        yield images[start:start + size]


def run_graph_accuracy(run_dir, images, labels):
    """The run's own graph, inputs prepared as predict.py prepares them."""
    session, info, input_tensor, output_tensor = predict.load_model(run_dir)
    with session:
        predicted = np.concatenate([session.run(output_tensor, {
            input_tensor: predict.model_inputs(batch.astype(np.float32), info)})
            for batch in batches(images)]).argmax(1)
    return np.mean(predicted == labels)


def saved_model_accuracy(folder, images, labels):
    session, image, probabilities, _ = predict.load_exported_model(os.path.join(folder, '1'))
    with session:
        predicted = np.concatenate([session.run(probabilities, {image: batch})
                                    for batch in batches(images)]).argmax(1)
    return np.mean(predicted == labels)


def tflite_accuracy(path, images, labels):
    """(accuracy, milliseconds per image at batch 500)."""
    interpreter = tf.lite.Interpreter(model_path=path)
    entry = interpreter.get_input_details()[0]
    predicted, size, start = [], None, time.perf_counter()
    for batch in batches(images):
        if len(batch) != size:
            size = len(batch)
            interpreter.resize_tensor_input(entry['index'], [size] + list(images.shape[1:]))
            interpreter.allocate_tensors()
            output = [d['index'] for d in interpreter.get_output_details()
                      if d['name'] == 'classes'][0]
        interpreter.set_tensor(entry['index'], batch)
        interpreter.invoke()
        predicted.append(interpreter.get_tensor(output).copy())
    milliseconds = 1000 * (time.perf_counter() - start) / len(images)
    return np.mean(np.concatenate(predicted) == labels), milliseconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('run_dir')
    parser.add_argument('--tta', action='store_true')
    args = parser.parse_args()
    images, labels = data_helpers.load_test_batch()
    images = data_helpers.to_nhwc(images)
    with tempfile.TemporaryDirectory() as work:
        folders = {}
        for name, flags in (('float', []), ('int8', ['--quantize'])):
            folders[name] = os.path.join(work, name)
            export.export(export.parse_args([args.run_dir, '--out', folders[name], '--tflite']
                                            + flags + (['--tta'] if args.tta else [])))
        print('run graph (predict.py)   accuracy %.4f' % run_graph_accuracy(
            args.run_dir, images, labels))
        print('SavedModel               accuracy %.4f  saved_model.pb %.2f MB' % (
            saved_model_accuracy(folders['float'], images, labels),
            os.path.getsize(os.path.join(folders['float'], '1', 'saved_model.pb')) / 1e6))
        for name in ('float', 'int8'):
            path = os.path.join(folders[name], 'model.tflite')
            accuracy, milliseconds = tflite_accuracy(path, images, labels)
            print('TFLite %-5s             accuracy %.4f  %.2f MB  %.3f ms/image' % (
                name, accuracy, os.path.getsize(path) / 1e6, milliseconds))


if __name__ == '__main__':
    main()
