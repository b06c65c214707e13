"""Name what is in your own pictures with a model trained by any of the scripts.

    python predict.py RUN_DIR photo.jpg other.png folder_of_pictures/
    python predict.py RUN_DIR cat.jpg --top-k 5 --json
    python predict.py RUN_DIR --test-index 7          # a CIFAR-10 test image
    python predict.py RUN_DIR pictures/ --plot predictions.png

RUN_DIR is a run folder written by `softmax.py --train-dir`, `two_layer_mlp.py`,
`cnn.py` or `fast_cnn.py` (or the folder holding such run folders: the newest
is used; in it, the newest complete checkpoint). The
model is not rebuilt: its graph comes from the checkpoint's meta graph
(`import_meta_graph`) and its pre-processing from the `model.json` beside it.
RUN_DIR may also be a folder export.py wrote (or its version folder): the
SavedModel then takes the pixels as they are and does its own pre-processing.

Pictures are prepared as training prepared a folder of pictures, by the same
function (`image_folders.prepare_picture`): JPEG, PNG, GIF (first frame), BMP
or WebP of any size decoded by Pillow, turned upright by their EXIF
orientation (a phone's portrait photo), made RGB (or grayscale for MNIST
models), cut to their central square when the run was trained so (`--crop`,
default: the run's), resized to the model's input with antialiasing, then
normalised as in training. For MNIST models a dark digit on a light
background (a photo of paper) is inverted to the light-on-dark of the
training images. Pictures are decoded in one thread per core and
classified 256 at a time, each batch's lines printed as it is done
(`--json` prints the list at the end).
"""

import argparse
import collections
import concurrent.futures
import itertools
import json
import os
import sys

import numpy as np

import cli  # (no TensorFlow inside: it sets how TensorFlow loads)
cli.prepare_tensorflow()  # a quiet start; oneDNN's kernels on every x86-64 CPU
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import data_helpers  # noqa: E402
import image_folders  # noqa: E402
import run_folders  # noqa: E402
from errors import DataError, error_line  # noqa: E402

tf.disable_eager_execution()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Classify your own pictures with a trained model.')
    parser.add_argument('run_dir', help='a run folder with a checkpoint and model.json, '
                        'or a folder export.py wrote')
    parser.add_argument('images', nargs='*', metavar='IMAGE_OR_FOLDER',
                        help='picture files, or folders of them')
    parser.add_argument('--top-k', type=cli.positive_int, default=3,
                        help='how many classes to show per picture (default: 3)')
    parser.add_argument('--crop', choices=['none', 'center'], default=None,
                        help="'center': cut the largest central square before "
                             "resizing, keeping the aspect ratio; 'none': squeeze the "
                             "whole picture (default: as the run was trained on its "
                             "pictures; none for CIFAR-10 and MNIST runs)")
    parser.add_argument('--json', action='store_true', help='print one JSON list')
    parser.add_argument('--plot', metavar='PNG', help='also draw the pictures with '
                        'their predicted labels into this PNG file')
    parser.add_argument('--test-index', type=int, action='append', default=[],
                        metavar='N', help='also predict image N of the CIFAR-10 test '
                        'set and show its true label (repeatable)')
    parser.add_argument('--data-dir', default=None,
                        help='where CIFAR-10 is, for --test-index')
    # (options anywhere: `predict.py RUN --top-k 5 cat.png` works too)
    args = parser.parse_intermixed_args(argv)
    if os.path.isfile(args.run_dir):
        if args.run_dir.lower().endswith(image_folders.EXTENSIONS):
            parser.error('the first argument is the run folder (predict.py RUN_DIR PICTURE...): '
                         '%s is a picture' % args.run_dir)
        parser.error('argument run_dir: %s is a file; give the run folder, or the folder '
                     'export.py wrote%s' % (args.run_dir, ' (predict.py does not run TFLite '
                                            'files)' if args.run_dir.endswith('.tflite') else ''))
    if not args.images and not args.test_index:
        parser.error('give at least one IMAGE_OR_FOLDER or --test-index')
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        parser.error('argument --plot: the folder of %s does not exist' % args.plot)
    return args


def exported_model_dir(path):
    """The SavedModel folder of an export: `path` itself if it holds
    saved_model.pb, else its highest numbered version folder (as a model
    server picks); None when `path` is not an export."""
    if os.path.isfile(os.path.join(path, 'saved_model.pb')):
        return path
    versions = [int(name) for name in (os.listdir(path) if os.path.isdir(path) else [])
                if name.isdigit() and os.path.isfile(os.path.join(path, name, 'saved_model.pb'))]
    return os.path.join(path, str(max(versions))) if versions else None


def load_exported_model(folder):
    """An exported SavedModel, in a session of its own.

    Returns:
      (session, image input tensor, probabilities tensor, info: dataset,
      image_size, channels and classes, layout 'nhwc', normalization 'none':
      the model takes uint8 pixels).

    Raises:
      DataError: not a SavedModel that export.py wrote.
    """
    graph = tf.Graph()
    session = tf.Session(graph=graph)
    try:
        with graph.as_default(), checkpoints.quiet_deprecations():   # the v1 loader's warning
            try:
                meta_graph = tf.saved_model.loader.load(session, [tf.saved_model.SERVING], folder)
                signature = meta_graph.signature_def[run_folders.SIGNATURE]
                image = graph.get_tensor_by_name(signature.inputs['image'].name)
                probabilities = graph.get_tensor_by_name(
                    signature.outputs['probabilities'].name)
            except (KeyError, ValueError, RuntimeError, OSError, tf.errors.OpError) as e:
                raise DataError('%s: not a model export.py wrote (%s)'
                                % (folder, error_line(e))) from None
        names_file = os.path.join(folder, 'assets', run_folders.CLASS_NAMES)
        try:
            with open(names_file, encoding='utf-8') as f:
                classes = f.read().splitlines()
        except (OSError, ValueError) as e:
            raise DataError('cannot read %s (%s)'
                            % (names_file, error_line(e))) from None
        shape = image.shape.as_list() if image.shape.rank == 4 else None
        if not shape or None in shape[1:] or probabilities.shape.rank != 2:
            raise DataError('%s: the signature is not image [batch, size, size, channels] -> '
                            'probabilities [batch, classes]' % folder)
        size, _, channels = shape[1:]
        if len(classes) != probabilities.shape[-1]:
            raise DataError('%s: %d class names for %s outputs'
                            % (names_file, len(classes), probabilities.shape[-1]))
    except DataError:
        session.close()
        raise
    try:      # exports written before crop.txt: pictures were squeezed
        with open(os.path.join(folder, 'assets', run_folders.CROP), encoding='utf-8') as f:
            crop = f.read().strip()
    except OSError:
        crop = 'none'
    # (what --test-index needs to know: CIFAR-10's classes, or another data set's)
    dataset = ('mnist' if channels == 1 else 'cifar10' if classes == data_helpers.CLASSES
               else 'other')
    info = {'dataset': dataset, 'image_size': size,
            'channels': channels, 'classes': classes, 'layout': 'nhwc',
            'normalization': 'none', 'crop': crop if crop in ('center', 'none') else 'none'}
    return session, image, probabilities, info


def load_model(run_dir):
    """Restores the newest usable checkpoint under run_dir into a new graph, or
    loads the SavedModel when run_dir is an export.

    Returns:
      (session, info dict from model.json, input tensor, output tensor).

    Raises:
      DataError: no run folder, no usable checkpoint, or a model.json that
        does not describe the checkpoint's graph; an export that does not load.
    """
    exported = exported_model_dir(run_dir)
    if exported:
        session, image, probabilities, info = load_exported_model(exported)
        return session, info, image, probabilities
    session, graph, checkpoint, info = checkpoints.load_trained_model(run_dir)
    if os.path.normpath(os.path.dirname(checkpoint)) != os.path.normpath(run_dir):   # of runs
        print('predict.py: the newest run in %s: %s' % (run_dir, os.path.dirname(checkpoint)),
              file=sys.stderr)
    try:
        return (session, info, *model_tensors(graph, info, checkpoint))
    except DataError:
        session.close()
        raise


def model_tensors(graph, info, checkpoint):
    """The input and output tensors model.json names, checked against the graph."""
    info_file = os.path.join(os.path.dirname(checkpoint), run_folders.MODEL_INFO)
    tensors = []
    for key in ('input', 'output'):
        try:
            tensors.append(graph.get_tensor_by_name(info[key]))
        except (KeyError, ValueError):
            raise DataError('%s: %r names %s, which %s.meta does not have'
                            % (info_file, key, info[key], checkpoint)) from None
    size, channels = info['image_size'], info['channels']
    expected = ([size * size * channels] if info['layout'] == 'flat'
                else [size, size, channels])
    shape = tensors[0].shape.as_list()[1:] if tensors[0].shape.rank else None
    if shape is not None and (len(shape) != len(expected) or any(
            got is not None and got != want for got, want in zip(shape, expected))):
        raise DataError('%s: image_size, channels and layout say images of %s, but the '
                        'model takes %s' % (info_file, expected, shape))
    if tensors[1].shape[-1] != len(info['classes']):
        raise DataError('%s: %d classes, but the model has %s outputs'
                        % (info_file, len(info['classes']), tensors[1].shape[-1]))
    return tensors


class ImageReader:
    """Reads picture files as the model's input size, prepared as training
    prepared its pictures (image_folders.prepare_picture), as float32 pixels
    0..255."""

    def __init__(self, size, channels, crop):
        self.size, self.channels, self.crop = size, channels, crop

    def read(self, path):
        """Returns [size, size, channels] float32 in 0..255.

        Raises:
          DataError: the file cannot be read or is not a supported picture.
        """
        return image_folders.read_picture(path, self.size, self.crop,
                                          self.channels).astype(np.float32)


def model_inputs(pixels, info):
    """float pixels [N, size, size, channels] in 0..255 -> the model's input.

    MNIST models see light digits on black: a picture that is light on
    average (a dark digit on paper) is inverted first. The rest is the
    model's own pre-processing (`run_folders.preprocess`).
    """
    with tf.Graph().as_default(), tf.Session() as session:
        images = tf.placeholder(tf.float32, [None] + list(pixels.shape[1:]))
        x = images
        if info['dataset'] == 'mnist':
            light = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True) > 127.5
            x = tf.where(tf.broadcast_to(light, tf.shape(x)), 255 - x, x)
        return session.run(run_folders.preprocess(x, info), {images: pixels})


def pictures_named(path):
    """A file as given; a folder as the pictures anywhere below it, sorted
    (as training reads a class folder, so a folder of class folders works too).

    Raises:
      DataError: a folder that holds no picture, or cannot be listed.
    """
    if not os.path.isdir(path):
        return [path]
    found = image_folders.find_pictures(path, collections.Counter())
    if not found:
        raise DataError('%s holds no pictures (%s)' % (path, ', '.join(image_folders.EXTENSIONS)))
    return found


def read_pictures(args, reader, failed):
    """The pictures named on the command line, in their order, decoded in
    one thread per core (Pillow lets go of Python's lock while it decodes
    and resizes) and handed on as they come (a folder of thousands of
    photos is classified as it is read, not held whole).

    Args:
      failed: a list that gets the line of each picture that cannot be read,
        reported on stderr as its turn comes.

    Yields:
      (name, None (no true class), pixels).
    """
    def read(path):
        try:
            return reader.read(path), None
        except DataError as e:
            return None, e

    # The files in the order given (a folder: the pictures below it), each
    # with its decoding begun, or with the error of a folder that cannot be used
    listed = []
    for given in args.images:
        try:
            listed += [(path, None) for path in pictures_named(given)]
        except DataError as e:
            listed.append((given, e))

    def handed_on(path, error, decoding):
        pixels, error = decoding.result() if decoding else (None, error)
        if error:
            report_failure(error, failed)
        else:
            yield path, None, pixels

    # At most READ_AHEAD pictures decoded ahead of the one handed on, so
    # that the model's batches and the decoding overlap, in bounded memory
    pool = concurrent.futures.ThreadPoolExecutor(image_folders.usable_cores())
    try:
        ahead = collections.deque()
        for path, error in listed:
            ahead.append((path, error, None if error else pool.submit(read, path)))
            if len(ahead) > READ_AHEAD:
                yield from handed_on(*ahead.popleft())
        while ahead:
            yield from handed_on(*ahead.popleft())
    finally:
        pool.shutdown(cancel_futures=True)     # (Ctrl-C: only the pictures begun are finished)


def report_failure(error, failed):
    """One line on stderr for a picture or index that cannot be used; the
    run goes on with the others (and exits with status 1)."""
    print('predict.py: error: %s' % error, file=sys.stderr, flush=True)
    failed.append(str(error))


def test_set_images(args, info, failed):
    """The --test-index images of the CIFAR-10 test set, with their true class.

    Returns:
      A list of (name, true class, pixels); an index outside the set is
      reported and added to `failed`.

    Raises:
      DataError: the model is not a CIFAR-10 model, or CIFAR-10 is not found.
    """
    if not args.test_index:
        return []
    if info['dataset'] != 'cifar10':
        raise DataError('--test-index needs a CIFAR-10 model; this one was trained on %s'
                        % {'mnist': 'MNIST', 'cifar100': 'CIFAR-100',
                           'folder': 'a folder of pictures'}.get(info['dataset'],
                                                                 'other classes'))
    images_test, labels_test = data_helpers.load_test_batch(args.data_dir)
    items = []
    for index in args.test_index:
        if not 0 <= index < len(images_test):
            report_failure('--test-index %d is outside 0..%d' % (index, len(images_test) - 1),
                           failed)
            continue
        pixels = data_helpers.to_nhwc(images_test[index:index + 1])[0].astype(np.float32)
        items.append(('test image %d' % index, info['classes'][labels_test[index]], pixels))
    return items


def in_batches(items, size):
    """Lists of up to `size` items, from any iterable."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def print_result(result):
    labels = ', '.join('%s %.3f' % (entry['class'], entry['probability'])
                       for entry in result['top'])
    truth = ' (true: %s)' % result['true'] if result['true'] else ''
    print('%s%s: %s' % (result['image'], truth, labels))


BATCH = 256       # pictures per run of the model
READ_AHEAD = 256  # pictures decoded ahead of the model at most
PLOTTED = 100     # pictures drawn at most by --plot (20 rows of 5)


def main(args):
    session, info, input_tensor, output_tensor = load_model(args.run_dir)
    reader = ImageReader(info['image_size'], info['channels'],
                         args.crop or info.get('crop', 'none'))
    failed, results, plotted = [], [], []
    try:
        test_images = test_set_images(args, info, failed)     # (its errors before any work)
        pictures = itertools.chain(read_pictures(args, reader, failed), test_images)
        # BATCH pictures at a time through the model, each batch's results
        # printed as it is done: a folder of thousands of photos takes minutes
        for batch in in_batches(pictures, BATCH):
            inputs = model_inputs(np.stack([pixels for _, _, pixels in batch]), info)
            probabilities = session.run(output_tensor, {input_tensor: inputs})
            for (name, truth, pixels), row in zip(batch, probabilities):
                top = np.argsort(-row)[:args.top_k]
                results.append({'image': name, 'true': truth, 'top': [
                    {'class': info['classes'][i], 'probability': float(row[i])} for i in top]})
                if not args.json:
                    print_result(results[-1])
                if args.plot and len(plotted) < PLOTTED:
                    plotted.append(pixels)
            sys.stdout.flush()
    finally:
        session.close()

    if args.json:
        print(json.dumps(results, indent=1))
    if args.plot and results:
        import reporting
        if len(results) > PLOTTED:
            print('--plot: the first %d of the %d pictures' % (PLOTTED, len(results)),
                  file=sys.stderr)
        titles = [('True: %s\n' % r['true'] if r['true'] else '') + 'Predict: %s %.2f'
                  % (r['top'][0]['class'], r['top'][0]['probability'])
                  for r in results[:PLOTTED]]
        reporting.plot_images(np.stack(plotted) / 255, titles, args.plot)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(cli.exit_on_error(main, parse_args()))
