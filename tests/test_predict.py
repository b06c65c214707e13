"""predict.py: any trained run folder, any picture, one clear line per bad input."""

import json
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import checkpoints
import cnn
import data_helpers
import image_folders
import predict
import softmax
import two_layer_mlp
from conftest import run_as_main, write_fake_cifar10, write_fake_mnist


def encode(pixels, kind):
    """PNG or JPEG bytes of a uint8 [H, W, C] array, by TensorFlow's encoders."""
    with tf.Graph().as_default(), tf.Session() as sess:
        op = (tf.io.encode_png(pixels) if kind == 'png'
              else tf.io.encode_jpeg(pixels, quality=95))
        return sess.run(op)


def bmp(pixels):
    """A 24-bit BMP of a uint8 [H, W, 3] array (rows bottom-up, BGR, padded)."""
    height, width, _ = pixels.shape
    row = width * 3 + (-width * 3) % 4
    body = b''.join(pixels[y, :, ::-1].tobytes().ljust(row, b'\0')
                    for y in range(height - 1, -1, -1))
    header = struct.pack('<2sIHHI', b'BM', 54 + len(body), 0, 0, 54)
    info = struct.pack('<IiiHHIIiiII', 40, width, height, 1, 24, 0, len(body), 0, 0, 0, 0)
    return header + info + body


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Run folders of each script, trained for a few steps on tiny fake data."""
    base = tmp_path_factory.mktemp('predict')
    cifar = write_fake_cifar10(str(base / 'cifar-10-batches-py'))
    mnist = write_fake_mnist(str(base / 'mnist'))
    folders = {}
    softmax.main(softmax.parse_args(
        ['--data-dir', cifar, '--max-steps', '20', '--train-dir', str(base / 'softmax'),
         '--seed', '0']))
    two_layer_mlp.main(two_layer_mlp.parse_args(
        ['--data-dir', cifar, '--max-steps', '20', '--batch-size', '20',
         '--train-dir', str(base / 'mlp'), '--seed', '0']))
    two_layer_mlp.main(two_layer_mlp.parse_args(
        ['--preset', 'mnist', '--data-dir', mnist, '--max-steps', '20',
         '--train-dir', str(base / 'mnist_mlp'), '--seed', '0']))
    cnn.main(cnn.parse_args(
        ['--model', 'small', '--data-dir', cifar, '--max-steps', '5', '--batch-size', '16',
         '--train-dir', str(base / 'cnn'), '--no-plots', '--seed', '0']))
    cnn.main(cnn.parse_args(
        ['--model', 'augmented', '--data-dir', cifar, '--max-steps', '5', '--batch-size', '16',
         '--train-dir', str(base / 'cnn_augmented'), '--no-plots', '--seed', '0']))
    for name in ('softmax', 'mlp', 'mnist_mlp', 'cnn', 'cnn_augmented'):   # the run folders
        folders[name] = checkpoints.checkpoint_folder(str(base / name))
    folders['cifar'] = cifar
    return folders


@pytest.fixture
def pictures(tmp_path):
    rng = np.random.default_rng(0)
    files = {
        'exact.png': encode(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), 'png'),
        'large.jpg': encode(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8), 'jpeg'),
        'gray.png': encode(rng.integers(0, 256, (40, 40, 1), dtype=np.uint8), 'png'),
        'alpha.png': encode(rng.integers(0, 256, (17, 50, 4), dtype=np.uint8), 'png'),
        'picture.bmp': bmp(rng.integers(0, 256, (33, 31, 3), dtype=np.uint8)),
    }
    folder = tmp_path / 'pictures'
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def predict_main(capsys, *argv):
    status = predict.main(predict.parse_args([str(a) for a in argv]))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize('run', ['softmax', 'mlp', 'mnist_mlp', 'cnn', 'cnn_augmented'])
def test_every_script_any_picture_top_k(runs, pictures, capsys, run):
    status, out, err = predict_main(capsys, runs[run], pictures, '--json', '--top-k', '4')
    assert status == 0, err
    results = json.loads(out)
    assert sorted(os.path.basename(r['image']) for r in results) == sorted(
        os.listdir(pictures))
    classes = [str(d) for d in range(10)] if run == 'mnist_mlp' else data_helpers.CLASSES
    for result in results:
        probabilities = [entry['probability'] for entry in result['top']]
        assert len(result['top']) == 4
        assert all(entry['class'] in classes for entry in result['top'])
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 <= min(probabilities) and sum(probabilities) <= 1 + 1e-6


@pytest.mark.parametrize('run', ['softmax', 'mlp', 'cnn', 'cnn_augmented'])
def test_a_picture_at_model_size_gets_the_training_pipelines_probabilities(
        runs, tmp_path, capsys, run):
    # Test image 3 saved as a lossless PNG must give exactly the probabilities
    # that the model gives the same image through load_data's pre-processing.
    _, _, images_test, _ = data_helpers.load_raw(runs['cifar'])
    path = tmp_path / 'test3.png'
    path.write_bytes(encode(data_helpers.to_nhwc(images_test[3:4])[0], 'png'))
    _, out, _ = predict_main(capsys, runs[run], path, '--test-index', '3', '--json',
                             '--top-k', '10', '--data-dir', runs['cifar'])
    from_file, from_dataset = json.loads(out)
    assert from_dataset['true'] is not None
    for a, b in zip(from_file['top'], from_dataset['top']):
        assert a['class'] == b['class']
        assert a['probability'] == pytest.approx(b['probability'], abs=1e-5)


def test_training_pipeline_and_predict_agree_with_the_training_graph(runs, capsys):
    # The --test-index path itself against the trained graph fed by cnn.py's loader.
    data = data_helpers.load_data(runs['cifar'], normalization='scale', layout='nhwc')
    session, info, images, probabilities = predict.load_model(runs['cnn'])
    expected = session.run(probabilities, {images: data['images_test'][:1]})[0]
    _, out, _ = predict_main(capsys, runs['cnn'], '--test-index', '0', '--json',
                             '--top-k', '10', '--data-dir', runs['cifar'])
    got = {e['class']: e['probability'] for e in json.loads(out)[0]['top']}
    np.testing.assert_allclose([got[c] for c in info['classes']], expected, atol=1e-6)


def test_corrupt_file_is_reported_and_the_others_still_classified(runs, pictures, capsys):
    (pictures / 'broken.jpg').write_bytes(b'\xff\xd8\xff not a jpeg at all')
    (pictures / 'notes.png').write_text('hello')
    status, out, err = predict_main(capsys, runs['cnn'], pictures, pictures / 'missing.png')
    assert status == 1
    assert len(out.strip().splitlines()) == 5            # the five good pictures
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith('predict.py: error: ') for line in lines)
    assert any('broken.jpg: cannot decode (not a JPEG, PNG, GIF, BMP or WebP picture)' in line
               for line in lines)
    assert any('missing.png: cannot read' in line for line in lines)


def test_a_test_index_outside_the_set_is_one_line_and_the_others_are_classified(runs, capsys):
    status, out, err = predict_main(capsys, runs['cnn'], '--test-index', '99999', '--test-index',
                                    '2', '--data-dir', runs['cifar'])
    size = len(data_helpers.load_test_batch(runs['cifar'])[1])
    assert status == 1
    assert err == 'predict.py: error: --test-index 99999 is outside 0..%d\n' % (size - 1)
    assert out.startswith('test image 2 (true: ') and len(out.splitlines()) == 1


def test_pictures_anywhere_below_a_folder_options_anywhere_an_empty_folder_one_line(
        runs, pictures, tmp_path, capsys):
    # As training reads a class folder: pictures in folders below it too
    nested = pictures / 'cats' / 'indoor'
    nested.mkdir(parents=True)
    (nested / 'copy.png').write_bytes((pictures / 'exact.png').read_bytes())
    (tmp_path / 'empty').mkdir()
    status, out, err = predict_main(capsys, runs['cnn'], pictures, '--json', tmp_path / 'empty',
                                    '--top-k', '2')
    assert status == 1
    results = json.loads(out)
    assert sorted(os.path.relpath(r['image'], str(pictures)) for r in results) == sorted(
        [name for name in os.listdir(pictures) if name != 'cats'] +
        [os.path.join('cats', 'indoor', 'copy.png')])
    assert all(len(r['top']) == 2 for r in results)
    assert err.strip().splitlines() == [
        'predict.py: error: %s holds no pictures (%s)' % (tmp_path / 'empty',
                                                          ', '.join(image_folders.EXTENSIONS))]


def test_mnist_dark_on_light_is_inverted():
    info = {'dataset': 'mnist', 'layout': 'flat', 'normalization': 'scale', 'image_size': 28,
            'channels': 1}
    paper = np.full((28, 28, 1), 250.0, np.float32)
    paper[10:18, 12:15] = 5.0                         # a dark stroke on white paper
    row = predict.model_inputs(paper[None], info)[0]
    assert row.shape == (784,)
    assert row.reshape(28, 28)[14, 13] > 0.9 and row.reshape(28, 28)[0, 0] < 0.1


def test_center_crop_keeps_the_aspect_ratio(tmp_path):
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, 32:64] = 255                                # white centre square
    path = tmp_path / 'wide.png'
    path.write_bytes(encode(wide, 'png'))
    cropped = predict.ImageReader(32, 3, 'center').read(str(path))
    squeezed = predict.ImageReader(32, 3, 'none').read(str(path))
    assert cropped.min() == 255                         # only the white square is left
    assert squeezed.min() < 100                         # the black sides are squeezed in


def test_folder_without_checkpoint_is_one_line(tmp_path, pictures, capsys):
    status, line = run_as_main(predict, predict.main, [tmp_path, pictures], capsys)
    assert status == 1
    assert line.startswith('predict.py: error: no complete checkpoint in %s' % tmp_path)


def test_plot_is_written(runs, pictures, tmp_path, capsys):
    status, _, _ = predict_main(capsys, runs['mnist_mlp'], pictures, '--plot',
                                tmp_path / 'grid.png')
    assert status == 0
    assert (tmp_path / 'grid.png').read_bytes().startswith(b'\x89PNG')


def test_many_pictures_go_in_batches_and_the_plot_takes_the_first(runs, pictures, tmp_path,
                                                                   capsys, monkeypatch):
    _, whole, _ = predict_main(capsys, runs['cnn'], pictures, '--json', '--top-k', '10')
    monkeypatch.setattr(predict, 'BATCH', 2)         # 5 pictures: batches of 2, 2 and 1
    monkeypatch.setattr(predict, 'PLOTTED', 3)
    status, batched, err = predict_main(capsys, runs['cnn'], pictures, '--json', '--top-k', '10',
                                        '--plot', tmp_path / 'grid.png')
    assert status == 0 and err == '--plot: the first 3 of the 5 pictures\n'
    whole, batched = json.loads(whole), json.loads(batched)
    assert len(whole) == len(batched) == 5
    for one, other in zip(whole, batched):
        assert one['image'] == other['image']
        np.testing.assert_allclose([e['probability'] for e in one['top']],
                                   [e['probability'] for e in other['top']], atol=1e-6)


def test_results_are_printed_batch_by_batch_as_the_pictures_are_read(runs, pictures, capsys,
                                                                      monkeypatch):
    # (a folder of thousands of photos printed nothing for minutes, and held them all)
    events = []
    read, print_result = predict.ImageReader.read, predict.print_result
    monkeypatch.setattr(predict.ImageReader, 'read',
                        lambda self, path: events.append('read') or read(self, path))
    monkeypatch.setattr(predict, 'print_result',
                        lambda result: events.append('printed') or print_result(result))
    monkeypatch.setattr(predict, 'BATCH', 2)         # 5 pictures: batches of 2, 2 and 1
    monkeypatch.setattr(predict, 'READ_AHEAD', 1)    # (decoded in threads, one ahead)
    status, out, _ = predict_main(capsys, runs['cnn'], pictures)
    assert status == 0 and len(out.splitlines()) == 5
    assert events.count('read') == events.count('printed') == 5
    assert events.index('printed') <= 3              # the first batch, one more begun at most


# --- run folders that were moved, copied, damaged or are still being written --

@pytest.fixture(scope='module')
def two_checkpoints(tmp_path_factory):
    """A two_layer_mlp run folder with checkpoints at steps 1000 and 1001, and
    the probabilities its newest checkpoint gives test images 0 and 1."""
    base = tmp_path_factory.mktemp('two_checkpoints')
    cifar = write_fake_cifar10(str(base / 'cifar-10-batches-py'))
    # A relative --train-dir, so that even a `checkpoint` file of absolute
    # paths would name the files of a copy, not of this original
    cwd = os.getcwd()
    os.chdir(base)
    try:
        two_layer_mlp.main(two_layer_mlp.parse_args(
            ['--data-dir', cifar, '--max-steps', '1001', '--batch-size', '10',
             '--train-dir', 'train', '--seed', '0']))
    finally:
        os.chdir(cwd)
    run_dir, = (base / 'train').iterdir()
    return run_dir, cifar


def predicted(capsys, run_dir, cifar):
    status, out, err = predict_main(capsys, run_dir, '--test-index', '0', '--test-index', '1',
                                    '--json', '--top-k', '10', '--data-dir', cifar)
    assert status == 0, err
    return [{e['class']: e['probability'] for e in result['top']} for result in json.loads(out)]


def test_a_run_folder_moved_elsewhere_predicts_as_before(fake_cifar10, tmp_path, capsys):
    # The commands: an absolute --train-dir, the run folder moved away
    two_layer_mlp.main(two_layer_mlp.parse_args(
        ['--data-dir', fake_cifar10, '--max-steps', '5', '--batch-size', '10',
         '--train-dir', str(tmp_path / 'a'), '--seed', '0']))
    run_dir, = (tmp_path / 'a').iterdir()
    capsys.readouterr()
    expected = predicted(capsys, run_dir, fake_cifar10)
    moved = tmp_path / 'b' / 'run1'
    moved.parent.mkdir()
    shutil.move(str(run_dir), str(moved))
    assert predicted(capsys, moved, fake_cifar10) == expected


def test_a_copy_uses_its_own_weights_not_the_originals(fake_cifar10, tmp_path, capsys):
    two_layer_mlp.main(two_layer_mlp.parse_args(
        ['--data-dir', fake_cifar10, '--max-steps', '1001', '--batch-size', '10',
         '--train-dir', str(tmp_path / 'a'), '--seed', '0']))
    run_dir, = (tmp_path / 'a').iterdir()
    cifar = fake_cifar10
    capsys.readouterr()
    copy = tmp_path / 'copy'
    shutil.copytree(run_dir, copy)
    for name in os.listdir(copy):                  # the copy's own weights: no more step 1001
        if 'model.ckpt-1001' in name:
            os.remove(copy / name)
    assert predicted(capsys, copy, cifar) != predicted(capsys, run_dir, cifar)


@pytest.mark.parametrize('damage', ['data truncated', 'meta not yet written', 'meta truncated',
                                    'index truncated'])
def test_a_damaged_or_live_folder_uses_the_newest_complete_checkpoint(
        two_checkpoints, tmp_path, capsys, damage):
    run_dir, cifar = two_checkpoints
    good = tmp_path / 'good'
    shutil.copytree(run_dir, good)
    for name in os.listdir(good):                          # only step 1000 left
        if 'model.ckpt-1001' in name:
            os.remove(good / name)
    expected = predicted(capsys, good, cifar)
    damaged = tmp_path / 'damaged'
    shutil.copytree(run_dir, damaged)
    newest = damaged / 'model.ckpt-1001'
    path = {'data truncated': '.data-00000-of-00001', 'meta not yet written': '.meta',
            'meta truncated': '.meta', 'index truncated': '.index'}[damage]
    path = str(newest) + path
    if damage == 'meta not yet written':
        os.remove(path)
    else:
        with open(path, 'r+b') as f:
            f.truncate(os.path.getsize(path) // 2)
    assert predicted(capsys, damaged, cifar) == expected


def test_no_usable_checkpoint_is_one_line(two_checkpoints, tmp_path, capsys):
    run_dir, _ = two_checkpoints
    damaged = tmp_path / 'damaged'
    shutil.copytree(run_dir, damaged)
    for data in damaged.glob('*.data-*'):
        data.write_bytes(b'\0' * 7)
    status, line = run_as_main(predict, predict.main, [damaged, '--test-index', '0'], capsys)
    assert status == 1
    assert line.startswith(
        'predict.py: error: no usable checkpoint: %s is damaged' % (damaged / 'model.ckpt-1001'))


def test_a_model_json_of_another_input_shape_is_one_line(two_checkpoints, tmp_path, capsys):
    run_dir, cifar = two_checkpoints
    copy = tmp_path / 'copy'
    shutil.copytree(run_dir, copy)
    info = json.loads((copy / 'model.json').read_text())
    info.update(normalization='scale', mean_image=None, image_size=28, channels=1)
    (copy / 'model.json').write_text(json.dumps(info))
    with pytest.raises(data_helpers.DataError, match=r'say images of \[784\], but the '
                                                     r'model takes \[3072\]'):
        predict_main(capsys, copy, '--test-index', '0', '--data-dir', cifar)


def test_a_damaged_model_json_is_one_line(two_checkpoints, tmp_path, capsys):
    run_dir, cifar = two_checkpoints
    copy = tmp_path / 'copy'
    shutil.copytree(run_dir, copy)
    info = json.loads((copy / 'model.json').read_text())
    info['output'] = 'nowhere:0'
    (copy / 'model.json').write_text(json.dumps(info))
    with pytest.raises(data_helpers.DataError, match="model.json: 'output' names nowhere:0"):
        predict_main(capsys, copy, '--test-index', '0', '--data-dir', cifar)


def test_a_fifo_or_device_is_refused_and_the_others_classified(runs, pictures, capsys):
    fifo = pictures / 'pipe.png'
    os.mkfifo(str(fifo))
    status, out, err = predict_main(capsys, runs['cnn'], pictures, '/dev/zero')
    assert status == 1
    assert len(out.strip().splitlines()) == 5            # the five good pictures
    assert err.strip().splitlines() == ['predict.py: error: %s: not a regular file' % fifo,
                                        'predict.py: error: /dev/zero: not a regular file']


def test_a_picture_over_the_size_limit_is_refused(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(image_folders, 'MAX_PICTURE_BYTES', 2 ** 20)
    big = tmp_path / 'big.png'
    big.write_bytes(encode(np.zeros((64, 64, 3), np.uint8) + 7, 'png') + b'\0' * 1_500_000)
    status, _, err = predict_main(capsys, runs['cnn'], big)
    assert status == 1 and 'big.png: 1.4 MB, more than the 1 MB a picture may have' in err


def test_a_picture_or_a_tflite_file_as_the_run_folder_says_what_it_is(tmp_path, capsys):
    # (the run folder forgotten: 'give at least one IMAGE_OR_FOLDER' before)
    for name, said in [('cat.JPG', 'the first argument is the run folder (predict.py RUN_DIR '
                                   'PICTURE...): %s is a picture'),
                       ('model.tflite', 'argument run_dir: %s is a file; give the run folder, '
                                        'or the folder export.py wrote (predict.py does not '
                                        'run TFLite files)')]:
        (tmp_path / name).write_bytes(b'x')
        with pytest.raises(SystemExit) as exit_info:
            predict.parse_args([str(tmp_path / name)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.endswith(said % (tmp_path / name) + '\n')


def test_a_folder_of_runs_says_which_run_it_used(fake_cifar10, tmp_path, capsys,
                                                   monkeypatch):
    runs = tmp_path / 'runs'
    for _ in range(2):
        softmax.main(softmax.parse_args(['--data-dir', fake_cifar10, '--max-steps', '1',
                                         '--train-dir', str(runs)]))
    newest = checkpoints.checkpoint_folder(str(runs))
    capsys.readouterr()
    status, out, err = predict_main(capsys, runs, '--test-index', '0', '--data-dir',
                                    fake_cifar10)
    assert status == 0 and out.startswith('test image 0')
    assert err == 'predict.py: the newest run in %s: %s\n' % (runs, newest)
    assert predict_main(capsys, newest, '--test-index', '0', '--data-dir', fake_cifar10)[2] == ''
    monkeypatch.chdir(runs)             # (a run folder given as ./name is the run itself)
    assert predict_main(capsys, os.path.join('.', os.path.basename(newest)), '--test-index', '0',
                        '--data-dir', fake_cifar10)[2] == ''


def test_plot_into_a_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.parse_args([str(tmp_path), '--test-index', '0', '--plot',
                            str(tmp_path / 'missing' / 'grid.png')])
    assert exit_info.value.code == 2
    assert 'argument --plot: the folder of' in capsys.readouterr().err
