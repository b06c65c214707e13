"""export.py: every kind of run exported, then loaded in a fresh eager process
(TensorFlow 2, Keras 3, TFLite) and compared with the training graph; predict.py
on an export; the errors."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import saved_model_pb2

import checkpoints
import cli
import cnn
import data_helpers
import export
import fast_cnn
import predict
import softmax
import two_layer_mlp
from conftest import (end_processes, narrow_fast_cnn_recipes, needs_native_bf16, run_as_main,
                      write_fake_cifar10, write_fake_mnist)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each kind of run: its script, its flags for a few steps on the fake data, and
# the extra export flags. fast_cnn trains in float32 for the exact comparison;
# the bfloat16 runs are compared with a tolerance below. (fast-muon scores
# without test-time augmentation: its export is compared with the plain output)
KINDS = {
    'softmax': (softmax, ['--max-steps', '20'], []),
    'wolfib': (two_layer_mlp, ['--preset', 'wolfib', '--max-steps', '20', '--batch-size', '50'], []),
    'mnist': (two_layer_mlp, ['--preset', 'mnist', '--epochs', '1'], []),
    'keras-mlp': (two_layer_mlp, ['--preset', 'keras-mlp', '--epochs', '1'], []),
    'small': (cnn, ['--model', 'small', '--max-steps', '5', '--batch-size', '16',
                    '--no-plots', '--precision', 'fp32'], []),
    'batchnorm': (cnn, ['--model', 'batchnorm', '--max-steps', '1', '--batch-size', '8',
                        '--no-plots', '--precision', 'fp32'], []),
    'batchnorm-bf16': (cnn, ['--model', 'batchnorm', '--max-steps', '1', '--batch-size', '8',
                             '--no-plots', '--precision', 'bf16'], []),
    'augmented': (cnn, ['--model', 'augmented', '--max-steps', '5', '--batch-size', '16',
                        '--no-plots', '--precision', 'fp32'], []),
    'fast': (fast_cnn, ['--recipe', 'airbench94', '--epochs', '1', '--batch-size', '50',
                        '--precision', 'fp32'], []),
    'fast-tta': (None, 'fast', ['--tta']),         # the run of 'fast', exported with --tta
    'fast-bf16': (fast_cnn, ['--recipe', 'airbench94', '--epochs', '1', '--batch-size', '50',
                             '--precision', 'bf16'], []),
    'fast-muon': (fast_cnn, ['--recipe', 'muon', '--epochs', '1', '--batch-size', '50',
                             '--precision', 'fp32', '--tta', '0'], []),
    'fast-muon-bf16': (fast_cnn, ['--recipe', 'muon', '--epochs', '1', '--batch-size', '50',
                                  '--precision', 'bf16'], []),
}

# Run in a fresh process in eager mode, as a TensorFlow 2 or Keras 3 user would.
# It starts before the training, so that its imports overlap it, and reads
# what to load from stdin once the exports exist (nothing at end of input).
EAGER_CHECK = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    import keras
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:        # TensorFlow's own, deprecated but still in 2.21
        Interpreter = tf.lite.Interpreter
    job = sys.stdin.readline()
    if not job:
        sys.exit(0)
    exports, images_file, out_file = json.loads(job)
    images, results = np.load(images_file), {}
    for kind, folder in exports.items():
        x = images[kind]
        serve = tf.saved_model.load(folder + '/1').signatures['serving_default']
        out = serve(image=tf.constant(x))
        results[kind + '/probabilities'] = out['probabilities'].numpy()
        results[kind + '/classes'] = out['classes'].numpy()
        results[kind + '/batch1'] = np.concatenate(
            [serve(image=tf.constant(x[i:i + 1]))['probabilities'].numpy()
             for i in range(len(x))])
        layer = keras.layers.TFSMLayer(folder + '/1', call_endpoint='serving_default')
        results[kind + '/keras'] = np.asarray(layer(x)['probabilities'])
        interpreter = Interpreter(model_path=folder + '/model.tflite')
        entry = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(entry['index'], list(x.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(entry['index'], x)
        interpreter.invoke()
        for detail in interpreter.get_output_details():
            results[kind + '/tflite_' + detail['name']] = interpreter.get_tensor(detail['index'])
    np.savez(out_file, **results)
''')


def training_graph_probabilities(run_dir, images):
    """What the run's own graph (as predict.py loads it) gives for uint8 images."""
    session, info, input_tensor, output_tensor = predict.load_model(run_dir)
    with session:
        rows = predict.model_inputs(images.astype(np.float32), info)
        return session.run(output_tensor, {input_tensor: rows})


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Each kind trained a few steps (batchnorm one; fast_cnn's 32 channels
    wide) and exported with --tflite; the eager process's results; the
    training graphs' probabilities on the same images."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        narrow_fast_cnn_recipes(monkeypatch)
        return export_every_kind(tmp_path_factory.mktemp('export'))


def export_every_kind(root):
    eager = subprocess.Popen([sys.executable, '-c', EAGER_CHECK], stdin=subprocess.PIPE,
                             text=True, cwd=ROOT)
    try:
        exports, images, expected = train_and_export_every_kind(root)
        np.savez(str(root / 'images.npz'), **images)
        try:
            eager.stdin.write(json.dumps([exports, str(root / 'images.npz'),
                                          str(root / 'results.npz')]) + '\n')
            eager.stdin.close()
        except BrokenPipeError:      # it died first: its exit status says so below
            pass
        assert eager.wait(timeout=600) == 0
    finally:                         # the training failed, or the check is stuck
        end_processes([eager])
    results = dict(np.load(str(root / 'results.npz')))
    return root, exports, images, expected, results


def train_and_export_every_kind(root):
    """Each kind trained and exported: {kind: export folder}, {kind: 7
    images}, {kind: the training graph's probabilities for them}."""
    cifar = write_fake_cifar10(str(root / 'cifar'))
    mnist = write_fake_mnist(str(root / 'mnist'), train=5200)
    rng = np.random.default_rng(0)
    exports, images, expected = {}, {}, {}
    for kind, (script, flags, export_flags) in KINDS.items():
        data = mnist if kind == 'mnist' else cifar
        if script is None:          # another kind's run, exported otherwise
            run_dir = str(root / 'runs' / flags)
        else:
            run_dir = str(root / 'runs' / kind)
            script.main(script.parse_args(flags + ['--seed', '1', '--data-dir', data,
                                                   '--train-dir', run_dir]))
        out = str(root / 'exports' / kind)
        export.export(export.parse_args([run_dir, '--out', out, '--tflite'] + export_flags))
        # (MNIST pictures dark on average, so predict.py's inversion of dark
        # digits on light paper stays out of the comparison)
        images[kind] = (rng.integers(0, 128, (7, 28, 28, 1), dtype=np.uint8) if kind == 'mnist'
                        else rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8))
        exports[kind] = out
        expected[kind] = training_graph_probabilities(run_dir, images[kind])
    return exports, images, expected


BF16_KINDS = ['fast-bf16', 'fast-muon-bf16', 'batchnorm-bf16']
if not cli.cpu_has_bf16():      # trained only where bfloat16 is native (conftest)
    KINDS = {kind: value for kind, value in KINDS.items() if kind not in BF16_KINDS}
PLAIN_KINDS = ['fast', 'fast-muon']     # exported without TTA: compared with the plain output
EXACT_KINDS = [kind for kind in KINDS if kind not in PLAIN_KINDS + BF16_KINDS]


@pytest.mark.parametrize('kind', EXACT_KINDS + PLAIN_KINDS)
def test_tf2_signature_matches_the_training_graph(exported, kind):
    _, _, _, expected, results = exported
    # fast_cnn's graph `probabilities` are the TTA ones (where the run had
    # them); without --tta the export gives its plain output, which the run
    # also reports
    reference = plain_probabilities(exported, kind) if kind in PLAIN_KINDS else expected[kind]
    # The exported graph, and one image at a time, may sum each dot product
    # in another order (another kernel: a matrix-vector product, or Eigen's
    # instead of oneDNN's), which float32 rounds differently: on an AVX2 CPU
    # softmax's probabilities moved by 1.4e-5 that way.
    tolerance = max(1e-5, reordering_tolerance(exported, kind))
    np.testing.assert_allclose(results[kind + '/probabilities'], reference, atol=tolerance)
    np.testing.assert_allclose(results[kind + '/batch1'], reference, atol=tolerance)
    np.testing.assert_array_equal(results[kind + '/classes'], reference.argmax(1))
    assert results[kind + '/probabilities'].shape == (7, 10)


def reordering_tolerance(exported, kind):
    """How far the probabilities of a linear model (softmax.py) may move when
    its dot products are summed in another order, from the arithmetic.

    Each logit z_j = sum_k W_kj x_k of n = 3072 float32 terms: summed in any
    order, its rounding error is at most about sqrt(n) * u * sum_k |W_kj x_k|
    (u = 2^-24; the probabilistic bound of Higham and Mary, "A new approach
    to probabilistic rounding error analysis", 2019). Two orders differ by
    twice that, and a probability moves by at most half the largest change
    of a logit (softmax's Jacobian has row sums <= 1/2). The deeper models'
    logits are small, and 1e-5 holds for them on AVX2, AVX-512 and AMX.
    """
    if kind != 'softmax':
        return 0.0
    root, _, images, _, _ = exported
    session, _, checkpoint, info = checkpoints.load_trained_model(str(root / 'runs' / kind))
    session.close()
    reader = tf.train.load_checkpoint(checkpoint)
    weights, = [reader.get_tensor(name) for name, shape in tf.train.list_variables(checkpoint)
                if len(shape) == 2]
    inputs = predict.model_inputs(images[kind].astype(np.float32), info)
    magnitudes = np.abs(inputs).astype(np.float64) @ np.abs(weights)
    n, u = weights.shape[0], 2.0 ** -24
    return 0.5 * 2 * math.sqrt(n) * u * float(magnitudes.max())


def plain_probabilities(exported, kind):
    """fast_cnn's output without test-time augmentation, from the training graph."""
    root, _, images, _, _ = exported
    session, graph, _, _ = checkpoints.load_trained_model(str(root / 'runs' / kind))
    with session:
        return session.run(graph.get_tensor_by_name('plain_probabilities:0'),
                           {graph.get_tensor_by_name('images:0'): images[kind] / 255})


@pytest.mark.parametrize('kind', KINDS)
def test_keras3_tfsmlayer_predicts_the_same(exported, kind):
    _, _, _, _, results = exported
    np.testing.assert_allclose(results[kind + '/keras'], results[kind + '/probabilities'],
                               atol=1e-6)


@pytest.mark.parametrize('kind', KINDS)
def test_tflite_predicts_the_same_top_class(exported, kind):
    _, _, _, _, results = exported
    np.testing.assert_allclose(results[kind + '/tflite_probabilities'],
                               results[kind + '/probabilities'], atol=1e-4)
    np.testing.assert_array_equal(results[kind + '/tflite_classes'],
                                  results[kind + '/classes'])


@needs_native_bf16
@pytest.mark.parametrize('kind', BF16_KINDS)
def test_bf16_run_is_exported_in_float32_close_to_its_training_graph(exported, kind):
    root, exports, _, expected, results = exported
    reference = plain_probabilities(exported, kind) if kind.startswith('fast') else expected[kind]
    np.testing.assert_allclose(results[kind + '/probabilities'], reference, atol=2e-2)
    graph_def = saved_graph(exports[kind]).graph_def
    assert 'DT_BFLOAT16' not in str(graph_def)


def test_a_bf16_graph_with_functions_is_made_float32_throughout():
    # (on every CPU: the bf16 runs above train only where bfloat16 is native)
    values = np.array([-3, -1, -0.5, 0, 0.25, 1, 2.5], np.float32)
    exact = values * np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in values])
    with tf.Graph().as_default() as graph:
        x = tf.placeholder_with_default(tf.constant(values, tf.bfloat16), [7], name='x')
        y = tf.identity(fast_cnn.gelu(x), name='y')
        tf.gradients(y, x)                      # backward functions in the library too
    graph_def = export.portable(graph.as_graph_def())
    assert 'DT_BFLOAT16' not in str(graph_def)
    assert len(graph_def.library.function) >= 2
    for function in graph_def.library.function:
        assert not {'_XlaMustCompile', '_noinline'} & set(function.attr)
    with tf.Graph().as_default():
        y, = tf.import_graph_def(graph_def, return_elements=['y:0'])
        with tf.Session() as sess:
            result = sess.run(y, {'import/x:0': values})
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, exact, atol=1e-6)     # float32 now: no bfloat16 rounding


def saved_graph(folder):
    """The MetaGraphDef in an export's saved_model.pb."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(folder, '1', 'saved_model.pb'), 'rb') as f:
        proto.ParseFromString(f.read())
    assert len(proto.meta_graphs) == 1
    return proto.meta_graphs[0]


def test_exported_graph_has_only_the_inference_path(exported):
    _, exports, _, _, _ = exported
    for kind, folder in exports.items():
        meta_graph = saved_graph(folder)
        ops = {node.op for node in meta_graph.graph_def.node}
        placeholders = [node.name for node in meta_graph.graph_def.node
                        if node.op.startswith('Placeholder')]
        assert placeholders == ['image'], kind          # no training switch, no batch
        assert not ops & {'Switch', 'Merge', 'If', 'StatelessIf', 'VarHandleOp',
                          'VariableV2', 'RandomUniform', 'RandomUniformInt'}, kind
        # Functions (fast_cnn's GELU): only those called, free to be inlined (for
        # TFLite's converter), nothing left for XLA to compile (a server may have no XLA)
        library = meta_graph.graph_def.library.function
        called = {node.attr['f'].func.name for node in meta_graph.graph_def.node
                  if node.op in ('PartitionedCall', 'StatefulPartitionedCall')}
        assert {function.signature.name for function in library} == called, kind
        bodies = [node for function in library for node in function.node_def]
        assert not [item for item in list(meta_graph.graph_def.node) + bodies + list(library)
                    if {'_XlaMustCompile', '_noinline'} & set(item.attr)], kind
        assert list(meta_graph.meta_info_def.tags) == ['serve']
        signature = meta_graph.signature_def['serving_default']
        assert signature.inputs['image'].dtype == tf.uint8.as_datatype_enum
        assert [d.size for d in signature.inputs['image'].tensor_shape.dim][0] == -1
        assert sorted(signature.outputs) == ['classes', 'probabilities']
        with open(os.path.join(folder, '1', 'assets', 'class_names.txt')) as f:
            names = f.read().splitlines()
        assert names == (list('0123456789') if kind == 'mnist' else data_helpers.CLASSES)


def test_predict_reads_an_export_as_it_reads_the_run(exported, capsys):
    root, exports, _, _, _ = exported
    pictures = root / 'pictures'
    pictures.mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    for i, size in enumerate([(32, 32), (50, 70)]):
        pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        with tf.Graph().as_default(), tf.Session() as sess:
            (pictures / ('%d.png' % i)).write_bytes(sess.run(tf.io.encode_png(pixels)))
    outputs = []
    for folder in (str(root / 'runs' / 'small'), exports['small'],
                   os.path.join(exports['small'], '1')):
        assert predict.main(predict.parse_args([folder, str(pictures), '--json'])) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    for result in outputs[1:]:
        for ours, theirs in zip(result, outputs[0]):
            assert [e['class'] for e in ours['top']] == [e['class'] for e in theirs['top']]
            np.testing.assert_allclose([e['probability'] for e in ours['top']],
                                       [e['probability'] for e in theirs['top']], atol=1e-5)


def test_quantized_tflite_is_smaller(tmp_path, exported):
    root, exports, _, _, _ = exported
    out = str(tmp_path / 'quantized')
    export.export(export.parse_args([str(root / 'runs' / 'small'), '--out', out,
                                     '--tflite', '--quantize']))
    float_size = os.path.getsize(os.path.join(exports['small'], 'model.tflite'))
    assert os.path.getsize(os.path.join(out, 'model.tflite')) < 0.5 * float_size


def test_errors_are_one_line(exported, tmp_path, capsys):
    root, exports, _, _, _ = exported

    def run_export_here(*argv):
        return run_as_main(export, export.export, argv, capsys)
    status, line = run_export_here(str(tmp_path / 'nothing'))
    assert status and line == 'export.py: error: run folder %s does not exist' % (
        tmp_path / 'nothing')
    empty = tmp_path / 'empty'
    empty.mkdir()
    status, line = run_export_here(str(empty))
    assert status and line.startswith('export.py: error:') and 'checkpoint' in line
    status, line = run_export_here(str(root / 'runs' / 'small'), '--out', exports['small'])
    assert status and line == 'export.py: error: %s exists: give another --out, or remove ' \
                              'it first' % exports['small']
    status, line = run_export_here(str(root / 'runs' / 'small'), '--tta', '--out',
                                   str(tmp_path / 'x'))
    assert status and line == 'export.py: error: --tta: this run (cnn) has no test-time ' \
                              'augmentation'
    assert not [name for name in os.listdir(tmp_path) if name.startswith(('x', '.x'))]


@pytest.mark.parametrize('failing', ['write_saved_model', 'write_tflite'])
def test_a_failure_while_writing_leaves_nothing(exported, tmp_path, monkeypatch, failing):
    root, _, _, _, _ = exported

    def fail(*args):
        raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')
    monkeypatch.setattr(export, failing, fail)
    out = tmp_path / 'out' / 'cifar10'
    with pytest.raises(export.DataError, match='cannot write .*cifar10 .No space left on device'):
        export.export(export.parse_args([str(root / 'runs' / 'small'), '--out', str(out),
                                         '--tflite']))
    assert os.listdir(tmp_path / 'out') == []          # no folder, no temporary one


def test_the_tflite_converters_line_per_function_op_is_kept_out(exported, tmp_path, capsys):
    # fast_cnn's muon recipe has GELU as a function: the converter wrote one
    # line per op of it to stderr (40 for the full network)
    root, _, _, _, _ = exported
    capsys.readouterr()
    export.export(export.parse_args([str(root / 'runs' / 'fast-muon'), '--out',
                                     str(tmp_path / 'again'), '--tflite']))
    err = capsys.readouterr().err
    assert export.CONVERTER_NOISE.strip() not in err
    assert os.path.getsize(tmp_path / 'again' / 'model.tflite') > 0


def test_a_run_of_unknown_kind_is_refused(exported, tmp_path, capsys):
    root, _, _, _, _ = exported
    old = tmp_path / 'old'
    shutil.copytree(str(root / 'runs' / 'small'), str(old))
    run = [name for name in os.listdir(old) if name.startswith('small-')][0]
    info_file = old / run / 'model.json'
    info = json.loads(info_file.read_text())
    del info['script']
    info_file.write_text(json.dumps(info))
    status, line = run_as_main(export, export.export, [old, '--out', tmp_path / 'x'], capsys)
    assert status and 'does not say which script trained it' in line
    assert not os.path.exists(tmp_path / 'x')
