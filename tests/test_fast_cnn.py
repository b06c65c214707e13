"""fast_cnn.py: network, whitening, augmentation, loss, schedules, optimisers (SGD
groups, Muon), lookahead, TTA, FLOP count, runs of both recipes."""

import collections
import gc
import json
import math
import os
import re
import weakref

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import checkpoints
import cli
import data_helpers
import fast_cnn
import predict

REAL_CIFAR10 = os.environ.get('CIFAR10_DIR')    # read before the fixtures hide it
AIRBENCH94, MUON = fast_cnn.RECIPES['airbench94'], fast_cnn.RECIPES['muon']


def smooth_images(count, seed=0):
    """Images whose neighbouring pixels and channels are correlated, as in
    photographs, so the whitening has something to undo."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(count, 34, 34, 1)) + 0.3 * rng.normal(size=(count, 34, 34, 3))
    blurred = (noise[:, :-2, :-2] + noise[:, 1:-1, 1:-1] + noise[:, 2:, 2:]) / 3
    return blurred.astype(np.float32)


def whitening_for_tests():
    return fast_cnn.whitening_filters(smooth_images(20))


def test_output_shape_and_parameter_count():
    # whitening bias 24; block 1: 3*3*24*64 + 3*3*64*64 + 2*64 biases;
    # block 2: 3*3*64*256 + 3*3*256*256 + 2*256; block 3: 2*3*3*256*256 + 2*256;
    # head 256*10 (the whitening filters are fixed, not counted)
    expected = (24 + 13_824 + 36_864 + 128 + 147_456 + 589_824 + 512
                + 2 * 589_824 + 512 + 2_560)
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [None, 32, 32, 3])
        logits = fast_cnn.inference(images, whitening_for_tests(), False, AIRBENCH94)
        assert logits.shape.as_list() == [None, 10]
        assert sum(int(np.prod(v.shape)) for v in tf.trainable_variables()) == expected
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            assert sess.run(logits, {images: np.zeros((3, 32, 32, 3))}).shape == (3, 10)


@pytest.mark.skipif(not cli.cpu_has_bf16(), reason='this CPU has no native bfloat16 '
                    '(AVX-512 BF16 or AMX), where --precision auto never picks bf16')
@pytest.mark.parametrize('recipe', ['airbench94', 'muon'])     # ReLU; GELU
def test_bf16_network_is_close_to_fp32(recipe):
    hyp = fast_cnn.RECIPES[recipe]
    images_value = np.random.default_rng(1).random((4, 32, 32, 3)).astype(np.float32)
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        images = tf.placeholder(tf.float32, [None, 32, 32, 3])
        whitening = whitening_for_tests()
        full = fast_cnn.inference(images, whitening, False, hyp, 'fp32')
        half = fast_cnn.inference(images, whitening, False, hyp, 'bf16')   # the same weights
        assert half.dtype == tf.float32
        assert len(tf.trainable_variables()) == 1 + 3 * 4 + 1     # shared, not doubled
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            full_value, half_value = sess.run([full, half], {images: images_value})
    assert np.allclose(full_value, half_value, atol=0.05 * np.abs(full_value).max())


def called_functions(graph):
    """{call op's name: the FunctionDef it calls} for the graph's function calls."""
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    return {op.name: library[op.get_attr('f').name] for op in graph.get_operations()
            if op.type in ('PartitionedCall', 'StatefulPartitionedCall')}


def test_gelu_and_its_gradient_are_the_exact_formula_compiled_by_xla():
    values = np.array([-3, -1, -0.5, 0, 0.25, 1, 2.5], np.float64)
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in values])
    density = np.exp(-values ** 2 / 2) / math.sqrt(2 * math.pi)
    with tf.Graph().as_default() as graph:
        x = tf.constant(values, tf.float32)
        y = fast_cnn.gelu(x)
        gradient = tf.gradients(y, x)[0]
        with tf.Session() as sess:
            y, gradient = sess.run([y, gradient])
    np.testing.assert_allclose(y, values * phi, atol=1e-6)
    np.testing.assert_allclose(gradient, phi + values * density, atol=1e-6)
    # Forward and backward are each one function that XLA must compile
    calls = called_functions(graph)
    forward = [f for name, f in calls.items() if not name.startswith('gradients/')]
    backward = [f for name, f in calls.items() if name.startswith('gradients/')]
    assert len(forward) == len(backward) == 1
    for function in forward + backward:
        assert function.attr['_XlaMustCompile'].b
    assert {'Erf', 'Mul', 'AddV2'} <= {node.op for node in forward[0].node_def}
    assert {'Exp', 'Square'} <= {node.op for node in backward[0].node_def}


def test_gelu_is_one_function_for_all_the_activations_of_a_shape():
    with tf.Graph().as_default() as graph:
        x = tf.zeros([2, 4, 4, 8])
        y = fast_cnn.gelu(fast_cnn.gelu(x) + 1)
        other_shape = fast_cnn.gelu(tf.zeros([2, 2, 2, 8]))
        tf.gradients(y, x)
    calls = {op: f.signature.name for op, f in called_functions(graph).items()}
    forward = {op: name for op, name in calls.items() if not op.startswith('gradients/')}
    backward = [name for op, name in calls.items() if op.startswith('gradients/')]
    # The two activations of one shape call one function (compiled once), and
    # their gradients one backward function; another shape has its own.
    other = forward.pop(other_shape.op.name)
    assert len(forward) == 2 and len(set(forward.values())) == 1, forward
    assert other not in forward.values()
    assert len(backward) == 2 and len(set(backward)) == 1, backward


def test_a_graph_that_used_gelu_is_freed_with_it():
    graph = tf.Graph()
    with graph.as_default():
        fast_cnn.gelu(tf.zeros([3]))
    graph_alive = weakref.ref(graph)
    del graph
    gc.collect()
    assert graph_alive() is None


def test_gelu_of_bfloat16_keeps_its_constant_exact_in_float32():
    # (values exact in bfloat16)
    values = np.array([-3, -1, -0.5, 0, 0.25, 1, 2.5], np.float32)
    exact = values * np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in values])
    with tf.Graph().as_default() as graph:
        y = fast_cnn.gelu(tf.constant(values, tf.bfloat16))
        with tf.Session() as sess:
            result = sess.run(tf.cast(y, tf.float32))
    assert y.dtype == tf.bfloat16
    # bfloat16 rounds erf near +-1 to steps of 2**-8: 1 + erf(-3 / sqrt 2) loses digits
    np.testing.assert_allclose(result, exact, rtol=2 ** -7, atol=0.01)
    # 1/sqrt(2) is stored in float32 (an export makes the graph float32 and
    # TFLite's converter wants that exact value) and cast for the product
    function, = called_functions(graph).values()
    constants = [node.attr['value'].tensor for node in function.node_def
                 if node.op == 'Const' and node.attr['dtype'].type == tf.float32.as_datatype_enum]
    assert [tf.make_ndarray(c) for c in constants] == [np.float32(1 / math.sqrt(2))]


def filter_gradient_source(gradient):
    """The op type that computed a kernel's gradient, behind its casts,
    reshapes and transposes: Conv2DBackpropFilter, MatMul (one tap's
    product), or Conv2D (a forward convolution)."""
    op = gradient.op
    while op.type in ('Cast', 'Reshape', 'Pack', 'Identity', 'Transpose'):
        op = op.inputs[0].op
    return op.type


@pytest.mark.parametrize('precision, onednn, by_taps, gradients', [
    ('fp32', False, [], {b'Conv2DByForward': 6}),
    ('fp32', True, [], {}),
    ('bf16', True, ['block2/conv2', 'block3/conv1', 'block3/conv2'], {b'Conv2DByTaps': 3}),
    ('bf16', False, ['block2/conv2', 'block3/conv1', 'block3/conv2'], {b'Conv2DByTaps': 3})])
def test_training_takes_the_gradients_measured_faster(precision, onednn, by_taps, gradients,
                                                      monkeypatch):
    # The maps: block 1 at 31x31 and 15x15, block 2 at 15x15 and 7x7, block 3
    # at 7x7 and 3x3. The graph is only built (every CPU), on TensorFlow's own
    # kernels or on oneDNN's as if this process ran them
    monkeypatch.setattr(fast_cnn.convolutions, 'onednn_kernels', lambda: onednn)
    hyp = dict(MUON, widths=(32, 32, 32))
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [None, 32, 32, 3])
        logits = fast_cnn.inference(images, whitening_for_tests(), True, hyp, precision)
        kernels = [v for v in tf.trainable_variables() if v.op.name.endswith('conv1/kernel')
                   or v.op.name.endswith('conv2/kernel')]
        sources = {kernel.op.name[len('net/'):-len('/kernel')]: filter_gradient_source(gradient)
                   for kernel, gradient in zip(kernels, tf.gradients(logits, kernels))}
        fast_cnn.inference(images, whitening_for_tests(), False, hyp, precision)
    assert len(sources) == 6
    assert sorted(name for name, source in sources.items() if source == 'MatMul') == by_taps
    # On TensorFlow's own kernels in float32 every filter and input gradient
    # is a forward convolution; on oneDNN's, oneDNN's kernels (but in
    # bfloat16 the filter gradients by taps)
    by_forward = precision == 'fp32' and not onednn
    assert all(source == ('Conv2D' if by_forward else 'Conv2DBackpropFilter')
               for name, source in sources.items() if name not in by_taps), sources
    has_input_gradient_kernel = any(op.type == 'Conv2DBackpropInput'
                                    for op in graph.get_operations())
    assert has_input_gradient_kernel == (not by_forward)
    # Only training has other gradients: the evaluation graph, which
    # predict.py and the exports take, is plain convolutions
    overridden = collections.Counter(op.node_def.attr['_gradient_op_type'].s
                                     for op in graph.get_operations()
                                     if op.type == 'Conv2D' and not op.name.startswith('gradients'))
    plain = 6 - sum(gradients.values()) + 6 + 2     # training's others, evaluation, whitening
    assert overridden == {**gradients, b'': plain}


def test_whitening_filters_whiten_the_patch_covariance():
    images = smooth_images(200, seed=3)
    filters = fast_cnn.whitening_filters(images, eps=1e-9)
    assert filters.shape == (2, 2, 3, 24)
    assert np.allclose(filters[..., 12:], -filters[..., :12])    # +/- pairs
    # Apply the filters to every 2x2 patch of a sample, as the first layer does
    with tf.Graph().as_default(), tf.Session() as sess:
        out = sess.run(tf.nn.conv2d(images, filters, 1, 'VALID'))
    outputs = out[..., :12].reshape(-1, 12).astype(np.float64)
    covariance = outputs.T @ outputs / len(outputs)
    assert np.allclose(covariance, np.eye(12), atol=1e-3)
    # ... and the raw patches were far from white
    patch = images[:, :2, :2, :].reshape(len(images), -1)
    raw = patch.T @ patch / len(patch)
    assert np.abs(raw - np.diag(np.diag(raw))).max() > 0.1


def test_augmentation_translates_and_flips_each_image():
    rng = np.random.default_rng(0)
    padded = rng.random((16, 36, 36, 3)).astype(np.float32)
    flips = rng.random(16) < 0.5
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        images = tf.placeholder(tf.float32, [None, 36, 36, 3])
        flip = tf.placeholder(tf.bool, [None])
        augmented = fast_cnn.augment(images, flip)
        with tf.Session() as sess:
            first = sess.run(augmented, {images: padded, flip: flips})
            second = sess.run(augmented, {images: padded, flip: flips})
    assert first.shape == (16, 32, 32, 3)
    assert not np.array_equal(first, second)                      # random every call
    offsets = set()
    for source, result, flipped in zip(padded, first, flips):
        source = source[:, ::-1] if flipped else source
        # The result is one 32x32 window of the (mirrored) padded image
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(source[dy:dy + 32, dx:dx + 32], result)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 3                                       # per image, not per batch


def test_loss_is_the_label_smoothed_cross_entropy():
    rng = np.random.default_rng(0)
    logits_value = rng.normal(size=(5, 10)).astype(np.float32)
    labels_value = np.array([0, 3, 9, 2, 2])
    with tf.Graph().as_default(), tf.Session() as sess:
        value = sess.run(fast_cnn.loss(tf.constant(logits_value), tf.constant(labels_value),
                                       0.2))
    log_p = logits_value - np.log(np.exp(logits_value).sum(1, keepdims=True))
    target = np.full((5, 10), 0.2 / 10)
    target[np.arange(5), labels_value] += 0.8
    assert value == pytest.approx(-(target * log_p).sum(1).mean(), rel=1e-5)


def test_learning_rate_schedule_warms_up_then_decays():
    schedule = fast_cnn.lr_schedule(AIRBENCH94, 100)
    assert len(schedule) == 101
    assert schedule[0] == pytest.approx(0.2)
    assert schedule.argmax() == 23 and schedule.max() == pytest.approx(1.0)
    assert schedule[-1] == pytest.approx(0.07)
    assert np.all(np.diff(schedule[:24]) > 0) and np.all(np.diff(schedule[23:]) < 0)
    # The whitening bias follows it for its first steps, then freezes
    assert fast_cnn.whiten_lr_factor(AIRBENCH94, 10, 30, schedule) == schedule[10]
    assert fast_cnn.whiten_lr_factor(AIRBENCH94, 30, 30, schedule) == 0.0


def test_muon_schedules_fall_linearly_to_zero():
    # airbench94_muon: lr = initial * (1 - step / total), the whitening bias's
    # (1 - step / its steps), then frozen
    schedule = fast_cnn.lr_schedule(MUON, 200)
    np.testing.assert_allclose(schedule, 1 - np.arange(201) / 200, atol=1e-12)
    scales = [fast_cnn.whiten_lr_factor(MUON, step, 75, schedule) for step in (0, 15, 74, 75, 199)]
    assert scales == pytest.approx([1.0, 0.8, 1 / 75, 0.0, 0.0])


def test_batch_norm_moving_averages_take_the_batch_momentum():
    x_value = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 4, 4, 8)).astype(np.float32)
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None, 4, 4, 8])
        train_out = fast_cnn.batch_norm(x, True, 'norm', momentum=0.6)
        with tf.variable_scope('', reuse=True):
            moving_mean = tf.get_variable('norm/moving_mean')
        updates = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            out, _ = sess.run([train_out, updates], {x: x_value})
            mean = sess.run(moving_mean)
    assert np.allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-4)      # batch statistics
    # 0.6 of the old value (0), 0.4 of the batch's
    assert np.allclose(mean, 0.4 * x_value.mean(axis=(0, 1, 2)), atol=1e-4)


def test_parameter_groups_by_name():
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [None, 32, 32, 3])
        fast_cnn.inference(images, whitening_for_tests(), True, AIRBENCH94)
        groups = fast_cnn.parameter_groups(tf.trainable_variables())
    names = {group: sorted(v.op.name for v in variables) for group, variables in groups.items()}
    blocks = [(block, layer) for block in (1, 2, 3) for layer in (1, 2)]
    assert names == {
        'whiten': ['net/whiten/bias'],
        'biases': sorted('net/block%d/norm%d/bias' % b for b in blocks),
        'filters': sorted('net/block%d/conv%d/kernel' % b for b in blocks),
        'head': ['net/head/weights']}


def test_one_step_moves_each_group_at_its_own_rate(narrow_fast_cnn):
    # The first Nesterov step from zero momentum moves a weight w with
    # gradient g by -lr_scale * gate * (1 + momentum) * (group_lr * g + decay * w):
    # batch-norm biases 64x faster, decay the same for all, the whitening bias
    # frozen when its gate is 0.
    rng = np.random.default_rng(0)
    images_value = rng.random((8, 32, 32, 3)).astype(np.float32)
    labels_value = rng.integers(0, 10, 8)
    group_lr, decay = fast_cnn.learning_rates(AIRBENCH94, 1024)
    momentum = 0.85
    # airbench94's lr 11.5 and decay 0.0153 per 1024 images of a summed loss,
    # with the momentum's gain 1 + 1 / (1 - 0.85) divided out
    assert group_lr['filters'] == group_lr['head'] == group_lr['whiten'] == pytest.approx(
        11.5 / (1 + 1 / 0.15))
    assert group_lr['biases'] == pytest.approx(64 * 11.5 / (1 + 1 / 0.15))
    assert decay == pytest.approx(0.0153 / (1 + 1 / 0.15))
    assert fast_cnn.learning_rates(AIRBENCH94, 512)[1] == pytest.approx(decay / 2)  # with batch
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        logits = fast_cnn.inference(tf.constant(images_value), whitening_for_tests(), True,
                                    AIRBENCH94)
        loss = fast_cnn.loss(logits, tf.constant(labels_value), 0.2)
        lr_scale, whiten_scale = tf.placeholder(tf.float32, []), tf.placeholder(tf.float32, [])
        variables = tf.trainable_variables()
        gradients = tf.gradients(loss, variables)
        train_step = fast_cnn.training(loss, AIRBENCH94, 1024, lr_scale, whiten_scale)
        groups = fast_cnn.parameter_groups(variables)
        group_of = {v.op.name: name for name, group in groups.items() for v in group}
        with tf.Session() as sess:
            for gate_value in (1.0, 0.0):
                sess.run(tf.global_variables_initializer())
                before, grads = sess.run([variables, gradients])
                sess.run(train_step, {lr_scale: 0.5, whiten_scale: 0.5 * gate_value})
                after = sess.run(variables)
                for var, w, g, w_new in zip(variables, before, grads, after):
                    name = group_of[var.op.name]
                    on = gate_value if name == 'whiten' else 1.0
                    expected = -0.5 * on * (1 + momentum) * (group_lr[name] * g + decay * w)
                    assert_step(w_new, w, expected, var.op.name)


def assert_step(w_new, w, expected, name):
    """w_new - w is the step `expected`, to 1e-3 of it, give or take the
    rounding of w + step to float32: half an ulp of the weight, one allowed.
    (A step a million times smaller than its weight is known only to that
    ulp; one such weight failed a tolerance of the largest step's 1e-6.)"""
    error = np.abs((w_new - w).astype(np.float64) - expected)
    allowed = 1e-3 * np.abs(expected) + np.spacing(np.abs(w).astype(np.float32))
    worst = np.unravel_index(np.argmax(error - allowed), error.shape)
    assert error[worst] <= allowed[worst], (name, worst, w[worst], (w_new - w)[worst],
                                            expected[worst])


def newton_schulz_by_hand(matrix, steps):
    """airbench94_muon's zeropower_via_newtonschulz5, in numpy (float64)."""
    x = matrix / (np.linalg.norm(matrix) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize('shape', [(12, 5), (5, 12)])
def test_orthogonalize_keeps_the_singular_vectors_and_brings_the_values_near_1(shape):
    rng = np.random.default_rng(0)
    # A matrix with known singular vectors and values spread over 0.2-5
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], shape[0])))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))
    k = min(shape)
    singular = np.geomspace(5, 0.2, k)
    matrix = (u[:, :k] * singular) @ v[:, :k].T
    with tf.Graph().as_default(), tf.Session() as sess:
        x = tf.constant(matrix.astype(np.float32))
        results = sess.run([fast_cnn.orthogonalize(x, 3), fast_cnn.orthogonalize(x, 10),
                            fast_cnn.orthogonalize(x, 3, tf.bfloat16)])
    three, ten, bf16 = results
    np.testing.assert_allclose(three, newton_schulz_by_hand(matrix, 3), rtol=1e-4, atol=1e-5)
    for result, low, high in ((three, 0.6, 1.25), (ten, 0.6, 1.25), (bf16, 0.55, 1.3)):
        # In the matrix's own singular vectors the result is diagonal: the same
        # vectors, each singular value mapped to one near 1
        inner = u[:, :k].T @ result @ v[:, :k]
        diagonal = np.diag(inner)
        assert np.all((low < diagonal) & (diagonal < high)), diagonal
        assert np.abs(inner - np.diag(diagonal)).max() < (0.03 if result is bf16 else 1e-4)
        np.testing.assert_allclose(np.linalg.svd(result, compute_uv=False),
                                   np.sort(diagonal)[::-1], rtol=1e-3)
    # Without the iteration the values would span 25x; after it, under 2x
    assert np.ptp(np.diag(u[:, :k].T @ ten @ v[:, :k])) < 0.65


def test_two_muon_steps_by_hand():
    # Nesterov momentum: buffer = m * buffer + g, direction = g + m * buffer;
    # each step rescales the kernel to norm sqrt(filters), then moves it by
    # -lr * NS(direction), the kernel seen as a [h * w * in, out] matrix
    rng = np.random.default_rng(0)
    kernel_value = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    gradient_values = rng.normal(size=(2, 3, 3, 4, 6)).astype(np.float32)
    with tf.Graph().as_default():
        kernel = tf.Variable(kernel_value)
        gradient = tf.placeholder(tf.float32, [3, 3, 4, 6])
        step = fast_cnn.muon([(gradient, kernel)], lr=0.1, momentum=0.6, steps=3)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            after = []
            for value in gradient_values:
                sess.run(step, {gradient: value})
                after.append(sess.run(kernel))
    w, buffer = kernel_value.astype(np.float64), np.zeros_like(kernel_value, np.float64)
    for g, got in zip(gradient_values, after):
        buffer = 0.6 * buffer + g
        direction = (g + 0.6 * buffer).reshape(-1, 6)
        w = w * np.sqrt(6) / np.linalg.norm(w) - 0.1 * newton_schulz_by_hand(
            direction, 3).reshape(w.shape)
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


def test_muon_recipe_trains_filters_with_muon_and_the_rest_with_sgd(narrow_fast_cnn):
    rng = np.random.default_rng(0)
    images_value = rng.random((8, 32, 32, 3)).astype(np.float32)
    labels_value = rng.integers(0, 10, 8)
    group_lr, decay = fast_cnn.learning_rates(MUON, 2000)
    # SGD's rates per image of a summed loss, times the batch for our mean loss
    assert group_lr == pytest.approx({'biases': 0.053 * 2000, 'whiten': 0.053 * 2000,
                                      'head': 0.67 * 2000, 'filters': 0.24})
    assert decay == pytest.approx(2e-6 * 2000)
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        logits = fast_cnn.inference(tf.constant(images_value), whitening_for_tests(), True, MUON)
        loss = fast_cnn.loss(logits, tf.constant(labels_value), 0.2)
        variables = tf.trainable_variables()
        groups = fast_cnn.parameter_groups(variables)
        gradients = tf.gradients(loss, variables)
        train_step = fast_cnn.training(loss, MUON, 8, tf.constant(0.5), tf.constant(0.0))
        group_lr_8, decay_8 = fast_cnn.learning_rates(MUON, 8)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            before = {v.op.name: value for v, value in zip(variables, sess.run(variables))}
            gradient_values = {v.op.name: value
                               for v, value in zip(variables, sess.run(gradients))}
            head_std = before['net/head/weights'].std()
            sess.run(train_step)
            after = {v.op.name: value for v, value in zip(variables, sess.run(variables))}
    assert 0.8 < head_std < 1.2                       # the head starts with unit variance
    assert np.array_equal(before['net/whiten/bias'], after['net/whiten/bias'])   # scale 0
    for var in groups['filters']:
        w = after[var.op.name]
        # Muon's step: rescaled to norm sqrt(filters), then an update whose
        # largest singular values are near lr_scale * filter_lr = 0.12, however
        # large the gradient (8 images leave some directions with next to none)
        step_matrix = (w - before[var.op.name] * np.sqrt(w.shape[-1])
                       / np.linalg.norm(before[var.op.name])).reshape(-1, w.shape[-1])
        singular = np.linalg.svd(step_matrix, compute_uv=False) / (0.5 * 0.24)
        assert 0.6 < singular.max() < 1.3, (var.op.name, singular)
    # The first Nesterov SGD step from zero momentum, as for airbench94:
    # -lr_scale * (1 + momentum) * (group_lr * g + decay * w)
    for var in groups['biases'] + groups['head']:
        name = 'head' if var in groups['head'] else 'biases'
        w, g = before[var.op.name], gradient_values[var.op.name]
        expected = -0.5 * 1.85 * (group_lr_8[name] * g + decay_8 * w)
        assert_step(after[var.op.name], w, expected, var.op.name)


def test_training_flops_per_image_as_counted_by_hand():
    # Forward, 2 x multiply-adds: whitening 31*31*(2*2*3)*24, block 1 31*31*9*24*64 and
    # 15*15*9*64*64, block 2 15*15*9*64*256 and 7*7*9*256*256, block 3
    # 7*7*9*256*256 and 3*3*9*256*256, head 256*10; backward twice all but the whitening
    forward = 2 * (31 * 31 * 12 * 24 + 31 * 31 * 9 * 24 * 64 + 15 * 15 * 9 * 64 * 64
                   + 15 * 15 * 9 * 64 * 256 + 7 * 7 * 9 * 256 * 256 + 7 * 7 * 9 * 256 * 256
                   + 3 * 3 * 9 * 256 * 256 + 256 * 10)
    expected = forward + 2 * (forward - 2 * 31 * 31 * 12 * 24)
    assert fast_cnn.training_flops_per_image((64, 256, 256)) == expected == 707_777_088
    # 64x64 pictures of 5 classes: sides 63, 31; 31, 15; 15, 7
    forward = 2 * (63 * 63 * 12 * 24 + 63 * 63 * 9 * 24 * 64 + 31 * 31 * 9 * 64 * 64
                   + 31 * 31 * 9 * 64 * 256 + 15 * 15 * 9 * 256 * 256 + 15 * 15 * 9 * 256 * 256
                   + 7 * 7 * 9 * 256 * 256 + 256 * 5)
    assert fast_cnn.training_flops_per_image((64, 256, 256), 64, 5) == (
        forward + 2 * (forward - 2 * 63 * 63 * 12 * 24))


def test_lookahead_pulls_weights_to_the_average():
    with tf.Graph().as_default():
        weights = tf.Variable([1.0, 2.0])
        start, update, decay = fast_cnn.lookahead([weights])
        average = [v for v in tf.global_variables() if 'average' in v.op.name][0]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(start)                          # the average starts at the weights
            sess.run(tf.assign(weights, [5.0, 10.0]))    # as if training moved them
            sess.run(update, {decay: 0.75})
            expected = 0.75 * np.array([1.0, 2.0]) + 0.25 * np.array([5.0, 10.0])
            assert np.allclose(sess.run(weights), expected)
            assert np.allclose(sess.run(average), expected)
            sess.run(tf.assign(weights, [0.0, 0.0]))
            sess.run(update, {decay: 1.0})             # decay 1: back to the average
            assert np.allclose(sess.run(weights), expected)


def test_lookahead_updates_every_5_steps_from_the_first():
    decays = {step: fast_cnn.lookahead_decay(step, 100, 5) for step in range(1, 101)}
    assert [step for step, decay in decays.items() if decay is not None] == list(range(5, 101, 5))
    assert decays[5] == pytest.approx(0.95 ** 5 * 0.05 ** 3)      # 9e-5: hardly any memory
    assert decays[50] == pytest.approx(0.95 ** 5 / 8)
    assert decays[100] == pytest.approx(0.95 ** 5)                 # 0.774 at the end


def test_tta_averages_the_views_as_airbench_does():
    rng = np.random.default_rng(0)
    images_value = rng.random((3, 32, 32, 3)).astype(np.float32)
    projection = rng.normal(size=(32 * 32 * 3, 10)).astype(np.float32)

    def network(x):      # any function of the image will do; a linear one is exact
        return tf.matmul(tf.reshape(x, [-1, 32 * 32 * 3]), projection)

    def by_hand(x):
        return x.reshape(len(x), -1) @ projection

    mirrored = lambda x: 0.5 * by_hand(x) + 0.5 * by_hand(x[:, :, ::-1])   # noqa: E731
    padded = np.pad(images_value, [(0, 0), (1, 1), (1, 1), (0, 0)], mode='reflect')
    expected = {0: by_hand(images_value), 1: mirrored(images_value),
                2: 0.5 * mirrored(images_value) + 0.25 * mirrored(padded[:, :32, :32])
                + 0.25 * mirrored(padded[:, 2:, 2:])}
    with tf.Graph().as_default(), tf.Session() as sess:
        images = tf.constant(images_value)
        for level in (0, 1, 2):
            got = sess.run(fast_cnn.tta_logits(images, network, level))
            assert np.allclose(got, expected[level], rtol=1e-4, atol=1e-3)


def test_tta_of_a_mirror_symmetric_image_equals_the_plain_prediction():
    half = np.random.default_rng(0).random((2, 32, 16, 3)).astype(np.float32)
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        images = tf.placeholder(tf.float32, [None, 32, 32, 3])
        whitening = whitening_for_tests()

        def network(x):
            return fast_cnn.inference(x, whitening, False, AIRBENCH94)

        plain, tta = network(images), fast_cnn.tta_logits(images, network, 1)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            plain_value, tta_value = sess.run([plain, tta], {images: symmetric})
            other = sess.run([plain, tta], {images: np.random.default_rng(1).random(
                (2, 32, 32, 3)).astype(np.float32)})
    assert np.allclose(tta_value, plain_value, atol=1e-5)
    assert not np.allclose(other[0], other[1], atol=1e-5)     # for others it differs


def run(folder, *flags):
    args = fast_cnn.parse_args(['--data-dir', folder, '--batch-size', '32',
                                '--precision', 'fp32', '--train-dir', 'runs'] + list(flags))
    accuracy = fast_cnn.main(args)
    run_dir = sorted(os.path.join('runs', name) for name in os.listdir('runs'))[-1]
    with open(os.path.join(run_dir, 'history.json')) as f:
        history = json.load(f)
    return accuracy, history, run_dir


def saved_run_accuracy(run_dir, data_dir):
    """The test accuracy of the run's checkpoint, restored from its folder as
    predict.py does (the output model.json names, with test-time augmentation)."""
    images, labels = data_helpers.load_test_batch(data_dir)
    session, graph, _, info = checkpoints.load_trained_model(run_dir)
    with session:
        probabilities = session.run(graph.get_tensor_by_name(info['output']), {
            graph.get_tensor_by_name(info['input']):
                data_helpers.to_nhwc(images).astype(np.float32) / 255})
    return float(np.mean(probabilities.argmax(1) == labels))


def test_a_few_epochs_lower_the_loss_and_save_a_usable_run(fake_cifar10, capsys,
                                                           narrow_fast_cnn):
    accuracy, history, run_dir = run(fake_cifar10, '--recipe', 'airbench94', '--epochs', '5',
                                     '--seed', '0', '--tta', '2')
    assert len(history['loss']) == 5
    # 32 channels wide, at rates set for 64/256/256, it learns slowly: below
    # the loss of a net that has learnt nothing (ln 10, uniform probabilities,
    # label smoothing or not) by 5% (2.12 against 2.30 here)
    assert history['loss'][-1] < min(0.95 * math.log(10), history['loss'][0])
    with open(os.path.join(run_dir, 'result.json')) as f:
        assert json.load(f)['test_accuracy'] == saved_run_accuracy(run_dir, fake_cifar10)
    out = capsys.readouterr().out
    assert 'Test accuracy' in out and 'epoch  5.00' in out
    # predict.py restores it like any other run
    args = predict.parse_args([run_dir, '--test-index', '0', '--test-index', '1',
                               '--top-k', '10', '--json', '--data-dir', fake_cifar10])
    assert predict.main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2
    for result in results:
        assert sum(entry['probability'] for entry in result['top']) == pytest.approx(1, abs=1e-4)


def test_the_muon_recipe_lowers_the_loss_and_prints_its_compute(fake_cifar10, capsys,
                                                                narrow_fast_cnn):
    accuracy, history, run_dir = run(fake_cifar10, '--recipe', 'muon', '--epochs', '5',
                                     '--seed', '0', '--tta', '0')
    assert history['loss'][-1] < 0.8 * history['loss'][0]
    with open(os.path.join(run_dir, 'result.json')) as f:
        result = json.load(f)
    assert result['recipe'] == 'muon'
    assert result['test_accuracy'] == saved_run_accuracy(run_dir, fake_cifar10)
    # --tta 0: the plain network is built once for evaluation, scored once
    session, graph, _, _ = checkpoints.load_trained_model(run_dir)
    session.close()
    assert (graph.get_tensor_by_name('probabilities:0').op.inputs[0] is
            graph.get_tensor_by_name('plain_probabilities:0').op.inputs[0])
    assert result['test_accuracy'] == result['test_accuracy_without_tta']
    # 5 epochs of 4 steps of 32 images (the fake set holds 150), 32 channels wide
    assert result['training_pflop'] == pytest.approx(
        20 * 32 * fast_cnn.training_flops_per_image((32, 32, 32)) / 1e15)
    out = capsys.readouterr().out
    flop = fast_cnn.flop_text(result['training_pflop'] * 1e15)
    assert flop.endswith(' TFLOP') and flop != '0.000 TFLOP'      # ('0.000 PFLOP' before)
    assert 'recipe muon, 20 steps of 32 (5.0 epochs, %s)' % flop in out
    assert re.search(r'Total time: .* %s at \d+ GFLOP/s\)' % flop, out)
    args = predict.parse_args([run_dir, '--test-index', '0', '--data-dir', fake_cifar10])
    assert predict.main(args) == 0


@pytest.mark.parametrize('recipe', ['airbench94', 'muon'])
def test_seed_reproduces_the_run(fake_cifar10, recipe, narrow_fast_cnn):
    first = run(fake_cifar10, '--recipe', recipe, '--epochs', '2', '--seed', '7', '--tta', '0')
    second = run(fake_cifar10, '--recipe', recipe, '--epochs', '2', '--seed', '7', '--tta', '0')
    assert first[1]['loss'] == second[1]['loss']
    assert first[0] == second[0]


@pytest.mark.parametrize('native_bf16', [True, False])
def test_the_default_recipe_is_muon_with_its_schedule(native_bf16, monkeypatch):
    monkeypatch.setattr(cli, 'cpu_has_bf16', lambda: native_bf16)
    args = fast_cnn.parse_args([])
    # 'auto' trains in bf16 where the CPU has it, 8 epochs; elsewhere fp32, 9
    epochs, note = (8, '') if native_bf16 else (9, ', 1 more in fp32')
    assert (args.recipe, args.epochs, args.batch_size, args.tta) == ('muon', epochs, 2000, 2)
    assert args.epochs_note == note
    args = fast_cnn.parse_args(['--recipe', 'airbench94'])
    assert (args.recipe, args.epochs, args.batch_size) == ('airbench94', 12, 1024)
    assert args.epochs_note == ''


@pytest.mark.parametrize('flags, epochs', [(['--precision', 'fp32'], 9), (['--precision', 'bf16'], 8),
                                           (['--precision', 'fp32', '--epochs', '8'], 8),
                                           (['--recipe', 'airbench94', '--precision', 'fp32'], 12)])
def test_float32_trains_the_recipe_s_extra_epoch_unless_told(flags, epochs):
    assert fast_cnn.parse_args(flags).epochs == epochs


@pytest.mark.parametrize('flags', [['--epochs', '0'], ['--epochs', '1e12'], ['--precision', 'fp16'],
                                   ['--tta', '3'], ['--batch-size', '-1'], ['--recipe', 'adam']])
def test_bad_flags_are_refused(flags, capsys):
    with pytest.raises(SystemExit):
        fast_cnn.parse_args(flags)
    assert 'error' in capsys.readouterr().err


def test_batch_larger_than_the_training_set_is_one_line(fake_cifar10):
    with pytest.raises(data_helpers.DataError, match='--batch-size'):
        fast_cnn.main(fast_cnn.parse_args(['--data-dir', fake_cifar10,
                                           '--batch-size', '1000']))


# The default recipe, muon, learns on official CIFAR-10: half an epoch (13
# steps) in fp32, without test-time augmentation. Measured (2026-12-02, Intel
# Xeon with AMX): 0.6495, 0.6168, 0.6710 for seeds 0-2, 130 s of training
# each; the bar sits below the seed spread, another CPU's rounding moving a
# seed as another seed would. A whole epoch with TTA (0.7982 for seed 0 on
# 2026-11-24) cost 591 s under the AVX2 cap; BENCHMARKS.md holds the full runs.
@pytest.mark.skipif(not REAL_CIFAR10, reason='needs $CIFAR10_DIR (real CIFAR-10; '
                    'CI builds it from ../shared)')
def test_half_an_epoch_of_the_default_recipe_learns_on_real_cifar10(tmp_path):
    args = fast_cnn.parse_args(['--data-dir', REAL_CIFAR10, '--epochs', '0.5', '--tta', '0',
                                '--seed', '0', '--precision', 'fp32', '--train-dir', str(tmp_path)])
    assert args.recipe == 'muon'
    assert fast_cnn.main(args) >= 0.58


def test_more_steps_than_the_schedule_may_hold_is_one_line(fake_cifar10, monkeypatch):
    monkeypatch.setattr(fast_cnn, 'MAX_STEPS', 100_000)
    with pytest.raises(data_helpers.DataError, match='--epochs 1000 of --batch-size 1 is '
                                                     '150000 steps; at most 100000'):
        fast_cnn.main(fast_cnn.parse_args(['--data-dir', fake_cifar10, '--epochs', '1000',
                                           '--batch-size', '1']))


def test_flop_text_picks_a_unit_that_shows_the_figure():
    assert fast_cnn.flop_text(0.283e15) == '0.283 PFLOP'      # CIFAR-10's default, as printed
    assert fast_cnn.flop_text(4.2e12) == '4.200 TFLOP'
    assert fast_cnn.flop_text(3.1e9) == '3.100 GFLOP'
