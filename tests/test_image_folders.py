"""image_folders.py and the scripts on a folder of class folders: the pixels
and labels (against CIFAR-10's pickles), every kind of picture, the split, the
cache, the workers, and each kind of bad input with its one line."""

import glob
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

import checkpoints
import cnn
import data_helpers
import export
import fast_cnn
import image_folders
import predict
import run_folders
from conftest import write_fake_cifar10
from errors import DataError

NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
         'truck']


def save(path, array, **options):
    """Writes a uint8 array as a picture file (the format from the extension)."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(str(path), **options)
    return str(path)


def cifar_as_folders(tmp_path, per_batch=30):
    """A fake CIFAR-10 (conftest) and the same images as train/ and test/
    PNG trees named by their index; returns (pickle folder, picture folder)."""
    pickles = write_fake_cifar10(str(tmp_path / 'cifar-10-batches-py'), per_batch=per_batch)
    images_train, labels_train, images_test, labels_test = data_helpers.load_raw(pickles)
    root = tmp_path / 'pictures'
    for split, images, labels in (('train', images_train, labels_train),
                                  ('test', images_test, labels_test)):
        for index, (image, label) in enumerate(zip(data_helpers.to_nhwc(images), labels)):
            save(root / split / NAMES[label] / ('%05d.png' % index), image)
    return pickles, str(root)


def class_tree(root, counts, size=(12, 10), seed=0):
    """root/<class>/<i>.png with random pictures: counts {class: how many}."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        for i in range(count):
            save(os.path.join(str(root), name, '%03d.png' % i),
                 rng.integers(0, 256, (size[1], size[0], 3)))
    return str(root)


def load(root, lines=None, **options):
    return image_folders.load_folder(str(root), log=(lines.append if lines is not None
                                                     else lambda line: None), **options)


# -----------------------------------------------------------------------------
# The folder path loses nothing
# -----------------------------------------------------------------------------

def test_cifar10_as_folders_loads_the_pickles_pixels_and_labels(tmp_path):
    pickles, root = cifar_as_folders(tmp_path)
    images_train, labels_train, images_test, labels_test = data_helpers.load_raw(pickles)
    data = data_helpers.load_images(root, seed=3)
    assert data['dataset'] == 'folder' and data['classes'] == NAMES
    for split, images, labels in (('train', images_train, labels_train),
                                  ('test', images_test, labels_test)):
        order = [int(os.path.basename(name)[:5]) for name in data['files_' + split]]
        assert sorted(order) == list(range(len(labels)))        # every picture, once
        np.testing.assert_array_equal(data['images_' + split],
                                      data_helpers.to_nhwc(images)[order])
        np.testing.assert_array_equal(data['labels_' + split], labels[order])
    # Both shuffled: cnn.py holds out the training set's last 20%, fast_cnn.py
    # shows progress on the first test pictures (the folders list them by class)
    for split in ('train', 'test'):
        labels = data['labels_' + split].tolist()
        assert labels != sorted(labels)


def test_cifar10_pickles_still_load_and_refuse_another_size(tmp_path):
    pickles = write_fake_cifar10(str(tmp_path / 'cifar-10-batches-py'))
    data = data_helpers.load_images(pickles)
    assert data['dataset'] == 'cifar10' and data['images_train'].shape == (150, 32, 32, 3)
    with pytest.raises(DataError, match='--image-size 64: CIFAR is 32x32'):
        data_helpers.load_images(pickles, image_size=64)


def test_decoding_in_worker_processes_gives_the_same_arrays(tmp_path, monkeypatch):
    root = class_tree(tmp_path / 'pictures', {'a': 70, 'b': 60})
    one = load(root, workers=1, seed=0)
    os.environ['XDG_CACHE_HOME'] = str(tmp_path / 'other-cache')     # decode again
    ignoring = []

    class CtrlCAtOnce(subprocess.Popen):
        # Each worker gets a SIGINT, as a terminal's Ctrl-C sends the whole
        # group one, once it says (Linux: /proc) that it ignores them
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            status = '/proc/%d/status' % self.pid
            if os.path.exists(status):
                deadline = time.time() + 10
                while time.time() < deadline and not ignores_sigint(status):
                    time.sleep(0.01)
                ignoring.append(ignores_sigint(status))
                os.kill(self.pid, signal.SIGINT)

    def ignores_sigint(status):
        with open(status) as f:
            mask = next(line for line in f if line.startswith('SigIgn:')).split()[1]
        return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))
    monkeypatch.setattr(subprocess, 'Popen', CtrlCAtOnce)
    two = load(root, workers=2, seed=0)
    assert ignoring in ([], [True, True])      # ([]: no /proc here) and they decoded on
    for key in ('images_train', 'labels_train', 'images_test', 'labels_test'):
        np.testing.assert_array_equal(one[key], two[key])
    assert one['files_test'] == two['files_test']


# -----------------------------------------------------------------------------
# One picture: formats, modes, orientation, crop, size
# -----------------------------------------------------------------------------

def encoded(image, format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def test_every_format_and_mode_becomes_rgb(tmp_path):
    colour = (200, 40, 90)
    rgb = Image.new('RGB', (8, 8), colour)
    cases = {
        'png': encoded(rgb, 'PNG'),
        'bmp': encoded(rgb, 'BMP'),
        'webp': encoded(rgb, 'WEBP', lossless=True),
        'gif': encoded(rgb.convert('P', palette=Image.Palette.ADAPTIVE), 'GIF'),
        'rgba': encoded(Image.new('RGBA', (8, 8), colour + (0,)), 'PNG'),   # alpha dropped
        'palette-transparent': encoded(rgb.convert('P', palette=Image.Palette.ADAPTIVE),
                                       'PNG', transparency=0),
    }
    for name, data in cases.items():
        pixels = image_folders.prepare_picture(data, 8, name=name)
        assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8, name
        np.testing.assert_allclose(pixels[0, 0], colour, atol=2, err_msg=name)
    gray = image_folders.prepare_picture(encoded(Image.new('L', (8, 8), 77), 'PNG'), 8)
    np.testing.assert_array_equal(gray[0, 0], [77, 77, 77])          # repeated into RGB
    # 16-bit grayscale: 0..65535 scaled to 0..255 (51400 / 257 = 200)
    sixteen = Image.fromarray(np.full((8, 8), 51400, np.uint16))
    np.testing.assert_array_equal(image_folders.prepare_picture(
        encoded(sixteen, 'PNG'), 8)[0, 0], [200, 200, 200])
    # CMYK JPEG: no cyan, full magenta -> red and blue, no green
    cmyk = image_folders.prepare_picture(
        encoded(Image.new('CMYK', (8, 8), (0, 255, 0, 0)), 'JPEG', quality=95), 8)
    np.testing.assert_allclose(cmyk[4, 4], [255, 0, 255], atol=6)
    # grayscale for the MNIST models
    assert image_folders.prepare_picture(encoded(rgb, 'PNG'), 8, channels=1).shape == (8, 8, 1)


def test_exif_orientation_turns_a_phone_photo_upright(tmp_path):
    # Stored lying on its side: left half red, right half blue, 4 wide, 2 high;
    # orientation 6 says "turn 90 degrees clockwise to view": red on top.
    stored = np.zeros((2, 4, 3), np.uint8)
    stored[:, :2] = (255, 0, 0)
    stored[:, 2:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(Image.fromarray(stored), 'PNG', exif=exif.tobytes())
    upright = image_folders.prepare_picture(data, 4, crop='none')
    assert tuple(upright[0, 0]) == (255, 0, 0) and tuple(upright[3, 0]) == (0, 0, 255)
    # predict.py reads it the same way
    path = tmp_path / 'portrait.png'
    path.write_bytes(data)
    np.testing.assert_array_equal(predict.ImageReader(4, 3, 'none').read(str(path)), upright)
    # without the tag the picture stays as stored
    plain = image_folders.prepare_picture(encoded(Image.fromarray(stored), 'PNG'), 4)
    assert tuple(plain[0, 0]) == tuple(plain[3, 0]) == (255, 0, 0)


def test_center_crop_keeps_the_middle_and_a_picture_of_the_size_keeps_its_pixels():
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255                          # a white square in the middle
    cropped = image_folders.prepare_picture(encoded(Image.fromarray(wide), 'PNG'), 10, 'center')
    assert cropped.min() == 255
    squeezed = image_folders.prepare_picture(encoded(Image.fromarray(wide), 'PNG'), 10, 'none')
    assert squeezed.min() < 50
    exact = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    np.testing.assert_array_equal(image_folders.prepare_picture(
        encoded(Image.fromarray(exact), 'PNG'), 16), exact)


def png_header_only(width, height):
    """A PNG that claims width x height pixels and holds almost none."""
    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack(
            '>I', zlib.crc32(kind + body) & 0xffffffff)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height,
                                                            8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\0' * 10)) + chunk(b'IEND', b''))


def test_a_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(DataError, match=r'bomb.png: 30000x30000 pixels, more than the 400 '
                                        r'million a picture may have \(a decompression bomb'):
        image_folders.prepare_picture(png_header_only(30000, 30000), 32, name='bomb.png')


# -----------------------------------------------------------------------------
# The split
# -----------------------------------------------------------------------------

def test_a_drawn_split_is_stratified_and_follows_the_seed(tmp_path):
    root = class_tree(tmp_path / 'pictures', {'cats': 10, 'dogs': 20, 'owls': 5, 'bats': 2})
    first, again, other = (load(root, seed=1), load(root, seed=1), load(root, seed=2))
    held = {name: sum(os.path.dirname(f) == name for f in first['files_test'])
            for name in first['classes']}
    assert held == {'cats': 2, 'dogs': 4, 'owls': 1, 'bats': 1}     # 20%, at least one
    assert first['files_test'] == again['files_test']
    assert set(first['files_test']) != set(other['files_test'])
    assert not set(first['files_train']) & set(first['files_test'])
    assert len(first['files_train']) + len(first['files_test']) == 37
    assert load(root, seed=1, test_split=0.5)['labels_test'].tolist().count(1) == 5   # cats
    assert first['split'] == 'drawn: test_split 0.2 of each class, seed 1'
    assert load(root)['split'] == 'drawn: test_split 0.2 of each class, at random (no --seed)'


def test_the_split_is_written_into_the_run_folder(tmp_path, capsys):
    root = class_tree(tmp_path / 'pictures', {'cats': 10, 'dogs': 10})
    run_dir = str(tmp_path / 'runs')
    cnn.main(cnn.parse_args(['--model', 'small', '--data-dir', root, '--max-steps', '2',
                             '--no-plots', '--train-dir', run_dir, '--seed', '5',
                             '--precision', 'fp32']))
    # No --batch-size: the article's 128 is more than the 13 pictures left to
    # train on (20, less 4 to test and 3 to validate); it stopped, saying so
    assert ("Batches of 13 (the article's 128 would make 0 steps an epoch of the 13 training "
            "pictures; --batch-size sets it)\n") in capsys.readouterr().out
    folder = checkpoints.checkpoint_folder(run_dir)
    with open(os.path.join(folder, 'split.json')) as f:
        split = json.load(f)
    assert sorted(split['train'] + split['test']) == sorted(
        os.path.join(c, '%03d.png' % i) for c in ('cats', 'dogs') for i in range(10))
    assert split['test'] == load(root, seed=5)['files_test']
    info = run_folders.read_model_info(folder)
    assert info['dataset'] == 'folder' and info['classes'] == ['cats', 'dogs']
    assert info['crop'] == 'center' and info['image_size'] == 32


# -----------------------------------------------------------------------------
# Bad input: one clear line
# -----------------------------------------------------------------------------

def test_files_that_are_not_pictures_and_hidden_ones_are_skipped_and_counted(tmp_path):
    root = class_tree(tmp_path / 'pictures', {'cats': 5, 'dogs': 5})
    (tmp_path / 'pictures' / 'cats' / 'notes.txt').write_text('not a picture')
    (tmp_path / 'pictures' / 'cats' / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')
    class_tree(tmp_path / 'pictures' / '.ipynb_checkpoints', {'x': 3})   # not a class
    lines = []
    data = load(root, lines, seed=0)
    assert data['classes'] == ['cats', 'dogs']
    assert len(data['files_train']) + len(data['files_test']) == 10
    assert 'Ignored 1 file or folder: not a picture (.txt)' in lines
    assert 'Ignored 2 files or folders: hidden' in lines


def test_a_broken_picture_is_named_skipped_and_counted_and_too_many_stop(tmp_path):
    root = class_tree(tmp_path / 'pictures', {'cats': 60, 'dogs': 60})
    (tmp_path / 'pictures' / 'cats' / 'broken.jpg').write_bytes(b'\xff\xd8\xff not a jpeg')
    lines = []
    data = load(root, lines, seed=0, workers=1)
    assert len(data['files_train']) + len(data['files_test']) == 120
    assert any(line.startswith('Skipped ') and 'broken.jpg: cannot decode' in line
               for line in lines)
    (tmp_path / 'pictures' / 'dogs' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n')
    with pytest.raises(DataError, match=r'more than 1 of the 122 pictures cannot be read'):
        load(root, seed=0, workers=1)


def test_too_many_broken_pictures_stop_the_worker_processes_too(tmp_path):
    root = class_tree(tmp_path / 'pictures', {'cats': 60, 'dogs': 60})
    for i in range(3):
        (tmp_path / 'pictures' / 'dogs' / ('broken%d.png' % i)).write_bytes(b'\x89PNG\r\n')
    with pytest.raises(DataError, match=r'more than 1 of the 123 pictures cannot be read'):
        load(root, workers=2)
    folder = os.path.join(str(tmp_path / 'cache'), 'tf-image-recognition', 'pictures')
    assert [name for name in os.listdir(folder) if not name.startswith('.decoding')] == []
    assert not [name for name in os.listdir(folder) if name.endswith('.npy')]


def test_a_failing_name_with_a_carriage_return_is_one_skipped_picture(tmp_path):
    root = class_tree(tmp_path / 'pictures', {'cats': 100, 'dogs': 100})
    (tmp_path / 'pictures' / 'dogs' / 'odd\rname.png').write_bytes(b'\x89PNG\r\n')
    lines = []
    data = load(root, lines, workers=2)
    assert len(data['files_train']) + len(data['files_test']) == 200
    assert any(line.startswith('Skipped ') and 'odd\rname.png: cannot decode' in line
               for line in lines)


def test_a_crashed_decoder_names_the_picture_it_crashed_on(tmp_path, monkeypatch):
    # A worker that dies (as a decoder bug in C would kill it) on one picture
    root = class_tree(tmp_path / 'pictures', {'cats': 60, 'dogs': 60})
    worker = tmp_path / 'crashing_worker.py'
    worker.write_text(
        'import os, sys\n'
        'sys.path.insert(0, %r)\n'
        'import image_folders\n'
        'decode = image_folders._decode_one\n'
        'def dying(path, size, crop):\n'
        '    if path.endswith("017.png") and "dogs" in path:\n'
        '        os._exit(9)\n'
        '    return decode(path, size, crop)\n'
        'image_folders._decode_one = dying\n'
        'image_folders.decode_worker()\n' % os.path.dirname(image_folders.__file__))
    monkeypatch.setattr(image_folders, '__file__', str(worker))
    with pytest.raises(DataError, match=r'the decoder crashed \(exit status 9\) on \S*dogs'
                                        r'/017\.png; move that file out of the folder'):
        load(root, workers=2)


def test_a_decoder_that_cannot_start_is_not_blamed_on_a_picture(tmp_path, monkeypatch):
    root = class_tree(tmp_path / 'pictures', {'cats': 60, 'dogs': 60})
    worker = tmp_path / 'broken_worker.py'
    worker.write_text('import sys\nsys.exit("no such module")\n')
    monkeypatch.setattr(image_folders, '__file__', str(worker))
    with pytest.raises(DataError, match=r'^a decoding process could not start \(exit status '
                                        r'1; its error is above\)$'):
        load(root, workers=2)


def test_a_class_of_one_picture_trains_on_it(tmp_path):
    root = class_tree(tmp_path / 'pictures', {'cats': 5, 'dogs': 5, 'owls': 1})
    data = load(root, seed=0, test_split=0.6)
    assert 'owls/000.png' in data['files_train'] and len(data['files_test']) == 6


def test_a_flat_folder_of_pictures_is_told_to_make_class_folders(tmp_path):
    for i in range(3):
        save(tmp_path / 'flat' / ('%d.jpg' % i), np.zeros((8, 8, 3)))
    with pytest.raises(DataError, match='holds no class folders: a classifier needs at least '
                                        'two class folders'):
        data_helpers.load_images(str(tmp_path / 'flat'))


def test_an_image_size_too_small_for_the_networks_is_refused(capsys):
    for script in (cnn, fast_cnn):
        with pytest.raises(SystemExit):
            script.parse_args(['--image-size', '12'])
        assert "argument --image-size: must be in 16..512, not 12" in capsys.readouterr().err


def test_an_empty_class_one_class_and_case_twins_are_refused(tmp_path):
    root = class_tree(tmp_path / 'a', {'cats': 3, 'dogs': 3})
    os.makedirs(os.path.join(root, 'owls'))
    with pytest.raises(DataError, match=r"class folder .*owls holds no pictures"):
        load(root)
    with pytest.raises(DataError, match='at least two class folders'):
        load(class_tree(tmp_path / 'b', {'cats': 3}))
    twins = class_tree(tmp_path / 'c', {'Cats': 3, 'cats': 3})
    with pytest.raises(DataError, match='class folders Cats and cats differ only in case'):
        load(twins)


def test_train_and_test_folders_classes_missing_and_duplicated(tmp_path):
    root = tmp_path / 'pictures'
    class_tree(root / 'train', {'cats': 4, 'dogs': 4, 'owls': 4})
    class_tree(root / 'test', {'cats': 2, 'dogs': 2})          # the same pictures as train's
    lines = []
    data = load(root, lines)
    assert data['split'] == 'train/ and test/ folders' and len(data['files_test']) == 4
    assert 'Warning: no test pictures of owls: their accuracy is not measured' in lines
    assert any(line.startswith('Warning: 4 test pictures are also in the training set')
               for line in lines)
    class_tree(root / 'test', {'bats': 1})
    with pytest.raises(DataError, match='has class folders that .* lacks: bats'):
        load(root)


def test_pillows_warnings_stay_silent_and_the_filters_whole_when_threads_decode(tmp_path):
    # A damaged EXIF block makes Pillow warn. predict.py decodes in threads:
    # a warnings.catch_warnings() per picture let such warnings through and
    # left an ignore-everything filter behind. (A process of its own: the
    # warnings shown once per place, and the filters as a user's start.)
    exif = Image.Exif()
    exif[0x010E] = 'x' * 200
    for i in range(40):
        Image.fromarray(np.full((64, 64, 3), i, np.uint8)).save(
            str(tmp_path / ('%02d.jpg' % i)), exif=exif.tobytes()[:-150])
    script = '\n'.join([
        'import concurrent.futures, glob, sys, warnings',
        'import image_folders',
        'before = list(warnings.filters)',
        'paths = sorted(glob.glob(sys.argv[1] + "/*.jpg"))',
        'with concurrent.futures.ThreadPoolExecutor(4) as pool:',
        '    list(pool.map(lambda p: image_folders.read_picture(p, 32, "center"), paths))',
        'print(warnings.filters == before)'])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, '-c', script, str(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert (done.stdout, done.stderr) == ('True\n', '')
    with pytest.raises(ValueError, match=re.escape("crop must be 'center' or 'none', "
                                                   "not 'center\\n'")):
        image_folders.read_picture(str(tmp_path / '00.jpg'), 32, 'center\n')   # crop.txt unstripped


def test_a_picture_filed_under_two_classes_is_a_warning_naming_both(tmp_path):
    root = class_tree(tmp_path / 'pictures', {'cats': 3, 'dogs': 3})
    lines = []
    load(root, lines)
    assert not [line for line in lines if 'another class' in line]
    shutil.copy(os.path.join(root, 'cats', '001.png'), os.path.join(root, 'dogs', 'x.png'))
    shutil.copy(os.path.join(root, 'cats', '001.png'), os.path.join(root, 'dogs', 'y.png'))
    lines = []
    load(root, lines)
    # cats/001.png and its two copies in dogs/: three pictures, each with a copy elsewhere
    assert ('Warning: 3 pictures have a copy in another class, byte for byte (for example %s '
            'and %s): the model is taught two labels for one picture'
            % (os.path.join('cats', '001.png'), os.path.join('dogs', 'x.png'))) in lines


def test_train_and_val_a_third_folder_and_a_test_folder_of_loose_pictures(tmp_path):
    # train/ and val/ (not test/): not two classes called train and val
    root = tmp_path / 'pictures'
    class_tree(root / 'train', {'cats': 4, 'dogs': 4})
    class_tree(root / 'val', {'cats': 2, 'dogs': 2})
    with pytest.raises(DataError, match=r'^%s holds train/ and val/: the held-out pictures go '
                                        r'in test/ \(rename val/ to test/\), or give %s as '
                                        r'--data-dir' % (re.escape(str(root)),
                                                         re.escape(str(root / 'train')))):
        load(root)
    # ... and beside test/ it is left out, and said so
    class_tree(root / 'test', {'cats': 2, 'dogs': 2})
    lines = []
    data = load(root, lines)
    assert data['classes'] == ['cats', 'dogs'] and len(data['files_test']) == 4
    assert 'Ignored 1 file or folder: beside train/ and test/, not read' in lines
    # A test/ of unlabelled pictures (as some downloads come): not "empty"
    loose = tmp_path / 'loose'
    class_tree(loose / 'train', {'cats': 4, 'dogs': 4})
    (loose / 'test').mkdir()
    for name in ('1.png', '2.png', '3.png'):
        save(str(loose / 'test' / name), np.zeros((10, 12, 3)))
    with pytest.raises(DataError, match=r'^%s holds 3 pictures outside class folders: a test '
                                        r'picture needs its class'
                                        % re.escape(str(loose / 'test'))):
        load(loose)
    # train/ alone: one class called train, unless the hint is taken
    alone = tmp_path / 'alone'
    class_tree(alone / 'train', {'cats': 4, 'dogs': 4})
    with pytest.raises(DataError, match=r'holds one class folder \(train\): .*; if train/ holds '
                                        r'the class folders, give %s as --data-dir$'
                                        % re.escape(str(alone / 'train'))):
        load(alone)


def test_a_symlink_loop_ends(tmp_path):
    root = class_tree(tmp_path / 'pictures', {'cats': 3, 'dogs': 3})
    os.symlink(os.path.join(root, 'cats'), os.path.join(root, 'cats', 'again'))
    lines = []
    data = load(root, lines)
    assert len(data['files_train']) + len(data['files_test']) == 6
    assert 'Ignored 1 file or folder: folder read before (a symlink loop?)' in lines


def test_a_file_too_large_and_an_unreadable_one_are_skipped(tmp_path, monkeypatch):
    root = class_tree(tmp_path / 'pictures', {'cats': 3, 'dogs': 3})
    monkeypatch.setattr(image_folders, 'MAX_PICTURE_BYTES', 1000)
    save(tmp_path / 'pictures' / 'cats' / 'big.png',
         np.random.default_rng(0).integers(0, 256, (40, 40, 3)))
    lines = []
    data = load(root, lines)
    assert len(data['files_train']) + len(data['files_test']) == 6
    assert any(line.startswith('Skipped ') and 'big.png: 0.0 MB, more than the' in line
               for line in lines)


def test_an_empty_file_is_called_so(tmp_path):
    path = tmp_path / 'cut.jpg'
    path.write_bytes(b'')
    with pytest.raises(DataError, match='^%s: an empty file$' % re.escape(str(path))):
        image_folders.read_picture(str(path), 4)


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0,
                    reason='root reads a file whatever its permissions')
def test_an_unreadable_picture_is_named(tmp_path):
    path = save(tmp_path / 'locked.png', np.zeros((4, 4, 3)))
    os.chmod(path, 0)
    with pytest.raises(DataError, match='locked.png: cannot read'):
        image_folders.read_picture(path, 4)


def test_a_picture_the_user_may_not_read_is_named_and_skipped(tmp_path, monkeypatch):
    # (as root, which reads any file, the refusal is simulated where it happens)
    root = class_tree(tmp_path / 'pictures', {'cats': 3, 'dogs': 3})
    locked = os.path.join(root, 'cats', '001.png')
    real_open = os.open

    def refusing_open(path, flags, *rest):
        if path == locked:
            raise PermissionError(13, 'Permission denied', path)
        return real_open(path, flags, *rest)
    monkeypatch.setattr(os, 'open', refusing_open)
    lines = []
    data = load(root, lines)
    assert len(data['files_train']) + len(data['files_test']) == 5
    assert 'Skipped %s: cannot read (Permission denied)' % locked in lines


def test_a_folder_too_large_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    root = class_tree(tmp_path / 'pictures', {'cats': 3, 'dogs': 3})
    monkeypatch.setattr(image_folders, 'available_memory', lambda: 10 ** 6)
    monkeypatch.setattr(image_folders, 'decode_all', None)     # never reached
    with pytest.raises(DataError, match=r'6 pictures at 96x96 need about 0.0 GB to train, and '
                                        r'0.0 GB of memory is free'):
        load(root, image_size=96)


# -----------------------------------------------------------------------------
# The cache
# -----------------------------------------------------------------------------

def test_a_second_run_reads_the_cache_and_a_changed_file_is_decoded_again(tmp_path,
                                                                          monkeypatch):
    root = class_tree(tmp_path / 'pictures', {'cats': 4, 'dogs': 4})
    first = load(root, seed=0)
    decoded = []
    real = image_folders._decode_one
    monkeypatch.setattr(image_folders, '_decode_one',
                        lambda path, *rest: decoded.append(path) or real(path, *rest))
    again = load(root, seed=0)
    assert decoded == []
    np.testing.assert_array_equal(first['images_train'], again['images_train'])
    changed = os.path.join(root, 'cats', '000.png')
    save(changed, np.full((10, 12, 3), 9))
    os.utime(changed, ns=(1, 10 ** 18))
    third = load(root, seed=0)
    assert decoded == [changed]
    row = (third['files_train'] + third['files_test']).index(os.path.join('cats', '000.png'))
    images = np.concatenate([third['images_train'], third['images_test']])
    assert images[row].max() == images[row].min() == 9


def test_a_picture_whose_permissions_changed_is_read_again(tmp_path, monkeypatch):
    root = class_tree(tmp_path / 'pictures', {'cats': 4, 'dogs': 4})
    load(root, seed=0)
    decoded = []
    real = image_folders._decode_one
    monkeypatch.setattr(image_folders, '_decode_one',
                        lambda path, *rest: decoded.append(path) or real(path, *rest))
    changed = os.path.join(root, 'dogs', '002.png')
    time.sleep(0.01)
    os.chmod(changed, 0o600)        # its change time moves, its content does not
    load(root, seed=0)
    assert decoded == [changed]


def test_a_run_killed_while_caching_leaves_no_half_cache(tmp_path, monkeypatch):
    root = class_tree(tmp_path / 'pictures', {'cats': 4, 'dogs': 4})

    def killed(file, **arrays):
        file.write(b'PK\3\4 half')
        raise KeyboardInterrupt
    monkeypatch.setattr(np, 'savez', killed)
    with pytest.raises(KeyboardInterrupt):
        load(root)
    folder = os.path.join(str(tmp_path / 'cache'), 'tf-image-recognition', 'pictures')
    assert os.listdir(folder) == []


def test_progress_is_shown_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    stream = Terminal()
    progress = image_folders._Progress(3, stream)
    for done in range(1, 4):
        progress.update(done)
    progress.close()
    assert 'Reading pictures: 3/3' in stream.getvalue() and stream.getvalue().endswith('\n')
    quiet = io.StringIO()
    progress = image_folders._Progress(3, quiet)
    progress.update(1)
    progress.close()
    assert quiet.getvalue() == ''


# -----------------------------------------------------------------------------
# Train, predict and export on a folder
# -----------------------------------------------------------------------------

def test_fast_cnn_trains_on_a_folder_at_64_pixels_with_its_own_statistics(tmp_path, capsys,
                                                                          narrow_fast_cnn):
    root = class_tree(tmp_path / 'pictures', {'cats': 12, 'dogs': 12, 'owls': 12},
                      size=(80, 60))
    run_dir = str(tmp_path / 'runs')
    # No --batch-size: the recipe's 2000 is more than the 30 training pictures
    # (it stopped, saying so); batches of 16 instead, said so
    fast_cnn.main(fast_cnn.parse_args(['--data-dir', root, '--image-size', '64', '--epochs',
                                       '1', '--train-dir', run_dir, '--precision', 'fp32',
                                       '--seed', '0']))
    out = capsys.readouterr().out
    assert ("Batches of 16 (the recipe's 2000 would make 0 steps an epoch of the 30 training "
            "pictures; --batch-size sets it)\n") in out
    assert re.search(r'^epoch  1\.00  loss .* test acc [01]\.\d{4} ', out, re.M)
    folder = checkpoints.checkpoint_folder(run_dir)
    assert json.load(open(os.path.join(folder, 'result.json')))['batch_size'] == 16
    assert out.index('Writing to %s\n' % folder) < out.index('\nepoch ')    # where to look, first
    info = run_folders.read_model_info(folder)
    assert info['image_size'] == 64 and info['classes'] == ['cats', 'dogs', 'owls']
    train = load(root, image_size=64, seed=0)['images_train']
    mean, std = fast_cnn.channel_stats(train)
    np.testing.assert_allclose(info['channel_mean'], mean, rtol=1e-6)
    np.testing.assert_allclose(info['channel_mean'],
                               train.reshape(-1, 3).mean(0) / 255, rtol=1e-5)
    np.testing.assert_allclose(info['channel_std'], train.reshape(-1, 3).std(0) / 255,
                               rtol=1e-4)


@pytest.mark.parametrize('model, size, devices', [('batchnorm', '96', '1'), ('small', '32', '2')])
def test_cnn_trains_on_a_folder_at_other_sizes_and_on_two_devices(tmp_path, model, size,
                                                                  devices):
    root = class_tree(tmp_path / 'pictures', {'cats': 6, 'dogs': 6, 'owls': 6})
    cnn.main(cnn.parse_args(['--model', model, '--data-dir', root, '--image-size', size,
                             '--num-devices', devices, '--max-steps', '2', '--batch-size', '4',
                             '--no-plots', '--train-dir', str(tmp_path / 'runs'),
                             '--precision', 'fp32']))
    session, graph, _, info = checkpoints.load_trained_model(str(tmp_path / 'runs'))
    session.close()
    assert graph.get_tensor_by_name('images:0').shape.as_list() == [None, int(size),
                                                                   int(size), 3]
    assert graph.get_tensor_by_name('probabilities:0').shape.as_list() == [None, 3]


def test_restoring_a_folder_run_scores_its_own_test_pictures(tmp_path, capsys):
    root = class_tree(tmp_path / 'pictures', {'cats': 10, 'dogs': 10, 'owls': 10})
    run_dir = str(tmp_path / 'runs')
    accuracy = cnn.main(cnn.parse_args(['--model', 'small', '--data-dir', root, '--max-steps',
                                        '3', '--batch-size', '4', '--no-plots', '--train-dir',
                                        run_dir, '--seed', '5', '--precision', 'fp32',
                                        '--image-size', '24', '--crop', 'none']))
    save(os.path.join(root, 'owls', 'new.png'), np.zeros((10, 12, 3)))   # added since
    restored = cnn.main(cnn.parse_args(['--model', 'small', '--data-dir', root, '--restore',
                                        run_dir, '--precision', 'fp32']))    # no seed, no size
    assert restored == accuracy
    # Without --data-dir: the folder it trained on (not CIFAR-10's download)
    assert cnn.main(cnn.parse_args(['--model', 'small', '--restore', run_dir])) == accuracy
    # A class folder added since, sorted first: left out, the others keep their
    # numbers (the scores are the run's own)
    class_tree(tmp_path / 'pictures', {'ants': 4})
    capsys.readouterr()
    assert cnn.main(cnn.parse_args(['--restore', run_dir])) == accuracy
    assert 'Left out the class folder added since the run: ants\n' in capsys.readouterr().out
    # Another folder, of other classes with the same file names: one line, not
    # 'class ants has no readable training picture'
    others = class_tree(tmp_path / 'others', {'ants': 10, 'bees': 10, 'owls': 10})
    with pytest.raises(DataError, match='^the run was trained on the classes cats, dogs, owls, '
                                        'and %s holds ants, bees, owls: give the folder it was '
                                        'trained on$' % re.escape(others)):
        cnn.main(cnn.parse_args(['--data-dir', others, '--restore', run_dir]))
    os.rename(root, root + '-moved')
    with pytest.raises(DataError, match='^%s was trained on the pictures in %s, which is not '
                                        'there now; give their folder with --data-dir$'
                                        % (re.escape(run_dir), re.escape(root))):
        cnn.main(cnn.parse_args(['--model', 'small', '--restore', run_dir]))
    split, = glob.glob(os.path.join(run_dir, '*', 'split.json'))
    os.remove(split)
    with pytest.raises(DataError, match='^cannot read %s .*: give it with --data-dir$'
                                        % re.escape(split)):
        cnn.main(cnn.parse_args(['--restore', run_dir]))


def test_a_folder_run_predicts_and_exports_with_its_folder_names(tmp_path, capsys):
    root = class_tree(tmp_path / 'pictures', {'cats': 8, 'dogs': 8}, size=(40, 30))
    run_dir = str(tmp_path / 'runs')
    cnn.main(cnn.parse_args(['--model', 'small', '--data-dir', root, '--max-steps', '3',
                             '--batch-size', '4', '--no-plots', '--train-dir', run_dir,
                             '--precision', 'fp32', '--image-size', '48']))
    out = str(tmp_path / 'export')
    export.export(export.parse_args([run_dir, '--out', out, '--tflite']))
    photos = [os.path.join(root, 'cats', '000.png'), os.path.join(root, 'dogs', '001.png')]
    capsys.readouterr()

    def predicted(model_dir, pictures=photos):
        assert predict.main(predict.parse_args([model_dir] + pictures + ['--json'])) == 0
        import json
        return json.loads(capsys.readouterr().out)

    trained, exported = predicted(run_dir), predicted(out)
    for mine, theirs in zip(trained, exported):
        assert [e['class'] for e in mine['top']] == [e['class'] for e in theirs['top']]
        assert {e['class'] for e in mine['top']} == {'cats', 'dogs'}
        np.testing.assert_allclose([e['probability'] for e in mine['top']],
                                   [e['probability'] for e in theirs['top']], atol=1e-5)
    # TFLite on the same prepared pixels
    import tensorflow as tf2
    pixels = np.stack([image_folders.read_picture(p, 48, 'center') for p in photos])
    interpreter = tf2.lite.Interpreter(model_path=os.path.join(out, 'model.tflite'))
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry['index'], list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry['index'], pixels)
    interpreter.invoke()
    outputs = {d['name']: interpreter.get_tensor(d['index'])
               for d in interpreter.get_output_details()}
    probabilities = outputs['probabilities']
    for row, mine in zip(probabilities, trained):
        by_name = dict(zip(['cats', 'dogs'], row))
        for entry in mine['top']:
            assert abs(by_name[entry['class']] - entry['probability']) < 1e-4
    with open(os.path.join(out, '1', 'assets', 'class_names.txt')) as f:
        assert f.read().split() == ['cats', 'dogs']
    # A folder of pictures as predict.py's argument: hidden files are not pictures
    (tmp_path / 'mine').mkdir()
    save(tmp_path / 'mine' / 'a.png', np.zeros((10, 12, 3)))
    (tmp_path / 'mine' / '._a.png').write_bytes(b'\0\5\26\7 a macOS resource fork')
    assert len(predicted(run_dir, [str(tmp_path / 'mine')])) == 1
    # The export of other classes is not taken for CIFAR-10
    with pytest.raises(DataError, match='--test-index needs a CIFAR-10 model; this one was '
                                        'trained on other classes'):
        predict.main(predict.parse_args([out, '--test-index', '0']))
    # and its run folder says what it knows ('trained on folder' before)
    with pytest.raises(DataError, match='--test-index needs a CIFAR-10 model; this one was '
                                        'trained on a folder of pictures$'):
        predict.main(predict.parse_args([run_dir, '--test-index', '0']))


REAL_CIFAR10 = os.environ.get('CIFAR10_DIR')    # read before the fixtures hide it


@pytest.mark.skipif(not REAL_CIFAR10, reason='needs the real CIFAR-10: set $CIFAR10_DIR '
                                             '(../shared/README.md says how to build it)')
def test_real_cifar10_written_as_png_files_reads_back_exactly(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location('write_cifar10_folders', os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
        'write_cifar10_folders.py'))
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    images_train, labels_train, images_test, labels_test = data_helpers.load_raw(REAL_CIFAR10)
    root = tmp_path / 'cifar10-png'
    writer.write_split(str(root / 'train'), data_helpers.to_nhwc(images_train), labels_train, 20)
    writer.write_split(str(root / 'test'), data_helpers.to_nhwc(images_test), labels_test, 5)
    data = data_helpers.load_images(str(root), seed=0)
    assert data['classes'] == writer.NAMES
    for split, images, labels in (('train', images_train, labels_train),
                                  ('test', images_test, labels_test)):
        order = [int(os.path.basename(name)[:5]) for name in data['files_' + split]]
        np.testing.assert_array_equal(data['images_' + split],
                                      data_helpers.to_nhwc(images)[order])
        np.testing.assert_array_equal(data['labels_' + split], labels[order])
