"""Take a trained model out of the scripts: a SavedModel for TensorFlow 2, Keras 3
and model servers, and optionally a TFLite file.

    python export.py RUN_DIR                       # -> RUN_DIR/export/1/
    python export.py RUN_DIR --out models/cifar10 --tflite --quantize
    python export.py runs/fast-...  --tta          # fast_cnn with its test-time augmentation

RUN_DIR is a run folder of any script (`softmax.py --train-dir`, every
`two_layer_mlp.py` preset, every `cnn.py` model, `fast_cnn.py`), or a folder of
run folders (the newest is used). What is written (OUT, default RUN_DIR/export):

    OUT/1/saved_model.pb          tag 'serve', signature 'serving_default'
    OUT/1/assets/class_names.txt  one class name per line, in output order
    OUT/1/assets/crop.txt         'center' or 'none': how the run cut pictures
    OUT/model.tflite              with --tflite (float; --quantize: int8 weights)

The signature takes `image`: uint8 [batch, height, width, channels], raw pixels
as a user has them (32x32x3 for CIFAR-10, 28x28x1 for MNIST), and returns
`probabilities` float32 [batch, 10] and `classes` int64 [batch] (the index of
the top class). The model's own pre-processing (scaling to [0, 1] or the mean
image, the R,G,B planes of the flat models, the centre crop of `cnn.py
--model augmented`) is inside the graph. The version folder `1` is the layout
model servers (TensorFlow Serving) expect.

How: the run's inference graph is taken from its checkpoint's meta graph, from
the input `images` to the output model.json names, and frozen: the weights of
the checkpoint the run reports its accuracy with (the averaged weights of
fast_cnn) become constants, so the exported model holds no variables, no
training switch and no batch size, and is for inference only. A run trained in
bfloat16 is exported in float32 (its weights are float32; only the arithmetic
changes). The functions the graph calls (fast_cnn's GELU) go with it, no longer
marked for XLA, so that every runtime can run them. The whole folder is written
under a temporary name and renamed, so it appears complete or not at all.
"""

import argparse
import contextlib
import io
import itertools
import os
import shutil
import sys
import tempfile

import numpy as np

import cli  # (no TensorFlow inside: it sets how TensorFlow loads)
cli.prepare_tensorflow()  # a quiet start; oneDNN's kernels on every x86-64 CPU
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import run_folders  # noqa: E402
from errors import DataError, current_umask, error_line  # noqa: E402

tf.disable_eager_execution()  # the scripts' graphs are TensorFlow 1 graphs
tf.logging.set_verbosity(tf.logging.ERROR)  # the v1 freezing and saving APIs print 'deprecated'

SCRIPTS = ('softmax', 'two_layer_mlp', 'cnn', 'fast_cnn')
VERSION = '1'                   # the version folder a model server loads
TFLITE = 'model.tflite'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a trained run as a SavedModel (and TFLite) that takes raw '
                    'uint8 pixels.')
    parser.add_argument('run_dir', help='a run folder with a checkpoint and model.json')
    parser.add_argument('--out', help='folder to create (must not exist; default: '
                        'RUN_DIR/export)')
    parser.add_argument('--tflite', action='store_true',
                        help='also write OUT/%s' % TFLITE)
    parser.add_argument('--quantize', action='store_true',
                        help='with --tflite: int8 weights (dynamic-range quantisation)')
    parser.add_argument('--tta', action='store_true',
                        help="export the run's test-time augmentation (fast_cnn: the "
                             "accuracy it prints; about 10x the compute per image)")
    args = parser.parse_args(argv)
    if args.quantize and not args.tflite:
        parser.error('argument --quantize: only with --tflite')
    return args


# -----------------------------------------------------------------------------
# The inference graph: frozen from the checkpoint, pre-processing in front
# -----------------------------------------------------------------------------

def frozen_inference_graph(run_dir, tta):
    """The run's graph from its input to its output, with the weights as constants.

    Returns:
      (GraphDef, model.json's info, the checkpoint prefix, input node name,
      output node name).

    Raises:
      DataError: no usable checkpoint, a run of unknown kind, --tta where the
        run has none.
    """
    session, graph, checkpoint, info = checkpoints.load_trained_model(run_dir)
    with session:
        info_file = os.path.join(os.path.dirname(checkpoint), run_folders.MODEL_INFO)
        if info['script'] not in SCRIPTS:
            raise DataError('%s does not say which script trained it (%s): only runs of %s, '
                            'trained since export.py exists, can be exported'
                            % (info_file, info['script'], ', '.join(SCRIPTS)))
        if tta and 'output_without_tta' not in info:
            raise DataError('--tta: this run (%s) has no test-time augmentation' % info['script'])
        output = info['output'] if tta else info.get('output_without_tta', info['output'])
        input_name, output_name = info['input'][:-2], output[:-2]
        graph_def = graph.as_graph_def()
        for node in graph_def.node:
            if node.name == input_name:     # cut the default that feeds training batches
                cut_input(node)
        frozen = tf.graph_util.convert_variables_to_constants(session, graph_def, [output_name])
    return portable(frozen), info, checkpoint, input_name, output_name


def cut_input(node):
    """Makes a PlaceholderWithDefault a plain Placeholder, so that the
    training batches behind its default are no longer part of the model."""
    node.op = 'Placeholder'
    del node.input[:]
    for key in list(node.attr):
        if key not in ('dtype', 'shape'):
            del node.attr[key]


def portable(graph_def):
    """The GraphDef as every runtime runs it: bfloat16 arithmetic and constants
    made float32, in the graph and in the bodies of its library's functions
    (fast_cnn's GELU), and those functions free to be inlined, not marked for
    XLA (TFLite's converter inlines them or fails; TensorFlow Serving, for
    one, compiles with XLA only when told to, and fails such calls)."""
    bodies = [function.node_def for function in graph_def.library.function]
    for node in itertools.chain(graph_def.node, *bodies):
        in_float32(node.attr)
        drop(node.attr, XLA_MUST_COMPILE)
    for function in graph_def.library.function:
        drop(function.attr, XLA_MUST_COMPILE, NO_INLINE)
        for arg in itertools.chain(function.signature.input_arg, function.signature.output_arg):
            if arg.type == BF16:
                arg.type = F32
    return graph_def


BF16, F32 = tf.bfloat16.as_datatype_enum, tf.float32.as_datatype_enum
XLA_MUST_COMPILE, NO_INLINE = '_XlaMustCompile', '_noinline'


def drop(attrs, *keys):
    """Removes those keys from a node's or function's attributes, where present."""
    for key in keys:
        if key in attrs:
            del attrs[key]


def in_float32(attrs):
    """Makes a node's bfloat16 types and constants float32, in place."""
    for attr in attrs.values():
        if attr.type == BF16:
            attr.type = F32
        if BF16 in attr.list.type:
            attr.list.type[:] = [F32 if t == BF16 else t for t in attr.list.type]
        if attr.HasField('tensor') and attr.tensor.dtype == BF16:
            value = tf.make_ndarray(attr.tensor).astype(np.float32)
            attr.tensor.CopyFrom(tf.make_tensor_proto(value))


def export_graph(frozen, info, input_name, output_name):
    """The exported graph: `image` -> pre-processing -> the frozen model ->
    `probabilities` and `classes`, nothing else.

    Returns:
      (GraphDef, input tensor name, {output key: tensor name}).
    """
    size, channels = info['image_size'], info['channels']
    with tf.Graph().as_default() as graph:
        image = tf.placeholder(tf.uint8, [None, size, size, channels], name='image')
        probabilities, = tf.import_graph_def(
            frozen, input_map={input_name + ':0': run_folders.preprocess(image, info)},
            return_elements=[output_name + ':0'], name='model')
        probabilities = tf.identity(probabilities, name='probabilities')
        tf.argmax(probabilities, 1, name='classes')
    # The imported graph's own input placeholder is left unconnected: drop it
    graph_def = only_called_functions(tf.graph_util.extract_sub_graph(
        graph.as_graph_def(), ['probabilities', 'classes']))
    return graph_def, 'image:0', {'probabilities': 'probabilities:0', 'classes': 'classes:0'}


def only_called_functions(graph_def):
    """The GraphDef without the library functions that nothing in it calls
    (training's backward functions of fast_cnn's GELU, its other variants)."""
    library = {function.signature.name: function for function in graph_def.library.function}
    called, callers = set(), list(graph_def.node)
    while callers:
        for attr in callers.pop().attr.values():
            for name in [attr.func.name] + [func.name for func in attr.list.func]:
                if name in library and name not in called:
                    called.add(name)
                    callers.extend(library[name].node_def)
    gradients = [g for g in graph_def.library.gradient
                 if g.function_name in called and g.gradient_func in called]
    del graph_def.library.function[:], graph_def.library.gradient[:]
    graph_def.library.function.extend(library[name] for name in sorted(called))
    graph_def.library.gradient.extend(gradients)
    return graph_def


# -----------------------------------------------------------------------------
# Writing: the SavedModel, TFLite, all under a temporary name
# -----------------------------------------------------------------------------

def write_saved_model(graph_def, input_name, outputs, info, folder):
    """A SavedModel (tag serve, signature serving_default) with the class
    names as an asset, and how its pictures were cut to a square (crop.txt)."""
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name='')
        with tempfile.TemporaryDirectory() as scratch:
            assets = []
            for name, text in (
                    (run_folders.CLASS_NAMES, ''.join(c + '\n' for c in info['classes'])),
                    (run_folders.CROP, info.get('crop', 'none') + '\n')):
                with open(os.path.join(scratch, name), 'w', encoding='utf-8') as f:
                    f.write(text)
                assets.append(tf.constant(os.path.join(scratch, name),
                                          name=name.replace('.', '_')))
            signature = tf.saved_model.signature_def_utils.predict_signature_def(
                inputs={'image': graph.get_tensor_by_name(input_name)},
                outputs={key: graph.get_tensor_by_name(name) for key, name in outputs.items()})
            with tf.Session(graph=graph) as session:
                builder = tf.saved_model.Builder(folder)
                builder.add_meta_graph_and_variables(
                    session, [tf.saved_model.SERVING],
                    signature_def_map={run_folders.SIGNATURE: signature},
                    assets_collection=assets, strip_default_attrs=True)
                builder.save()


CONVERTER_NOISE = "Use '@tf.function' or '@defun' to decorate the function.\n"


def write_tflite(graph_def, input_name, outputs, path, quantize):
    """The exported graph as TFLite (float, or int8 weights with --quantize).

    Converted from the graph rather than the SavedModel: TensorFlow's v1
    converter refuses SavedModels with assets.
    """
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name='')
        with tf.Session(graph=graph) as session:
            converter = tf.lite.TFLiteConverter.from_session(
                session, [graph.get_tensor_by_name(input_name)],
                [graph.get_tensor_by_name(name) for name in outputs.values()])
            if quantize:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            # It writes CONVERTER_NOISE to stderr once per op of a function in
            # the graph (fast_cnn's GELU: 40 lines); every other line passes
            said = io.StringIO()
            try:
                with contextlib.redirect_stderr(said):
                    data = converter.convert()
            except Exception as e:   # the converter's own ConverterError is not public API
                raise DataError('the TFLite converter refused the model (%s)'
                                % error_line(e)) from None
            finally:
                sys.stderr.write(said.getvalue().replace(CONVERTER_NOISE, ''))
    with open(path, 'wb') as f:
        f.write(data)


def export(args):
    """Writes the export folder; returns its path."""
    frozen, info, checkpoint, input_name, output_name = frozen_inference_graph(
        args.run_dir, args.tta)
    out = args.out or os.path.join(os.path.dirname(checkpoint), 'export')
    if os.path.lexists(out):
        raise DataError('%s exists: give another --out, or remove it first' % out)
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(prefix='.' + os.path.basename(out) + '.', dir=parent)
    except OSError as e:
        raise DataError('cannot create %s (%s)' % (out, e.strerror or e)) from None
    try:
        graph_def, image, outputs = export_graph(frozen, info, input_name, output_name)
        write_saved_model(graph_def, image, outputs, info, os.path.join(work, VERSION))
        if args.tflite:
            write_tflite(graph_def, image, outputs, os.path.join(work, TFLITE), args.quantize)
        os.chmod(work, 0o777 & ~current_umask())      # mkdtemp's 0700 is for secrets
        if os.path.lexists(out):     # made meanwhile: rename would replace an empty one
            raise DataError('%s exists: give another --out, or remove it first' % out)
        os.rename(work, out)
    except (OSError, tf.errors.OpError) as e:
        raise DataError('cannot write %s (%s)' % (out, error_line(e))) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('Exported %s (%s%s) to %s' % (checkpoint, info['script'],
                                        ' ' + info['model'] if info['model'] else '', out))
    print('  %s: SavedModel, signature serving_default: image uint8 %s -> probabilities, '
          'classes' % (os.path.join(out, VERSION),
                       [None, info['image_size'], info['image_size'], info['channels']]))
    if args.tflite:
        print('  %s: TFLite%s' % (os.path.join(out, TFLITE),
                                  ', int8 weights' if args.quantize else ''))
    return out


if __name__ == '__main__':
    cli.exit_on_error(export, parse_args())
