"""Your own pictures: a folder of class folders, read into arrays for training.

    flowers/                      flowers/
      daisy/*.jpg                   train/daisy/*.jpg, train/rose/...
      rose/*.jpg          or        test/daisy/*.jpg,  test/rose/...
      tulip/**/*.png

The layout Keras' `image_dataset_from_directory` and torchvision's
`ImageFolder` read: one folder per class, pictures anywhere below it, the class
names the folder names, sorted. With `train/` and `test/` those are the splits;
otherwise `test_split` of each class is held out at random (by `seed`).

* `prepare_picture()`: one picture file -> uint8 [size, size, 3 (or 1)], the
  one preparation training, predict.py and the export share: decoded by
  Pillow (JPEG, PNG, GIF's first frame, BMP, WebP), turned upright by its EXIF
  orientation, made RGB (grayscale repeated, alpha dropped, palette, CMYK and
  16-bit converted), optionally cut to its central square, then resized with
  antialiasing to size x size; a picture already that size keeps its pixels.
* `load_folder()`: the whole folder, decoded on every core with progress on a
  terminal, cached (a second run reads it in seconds), checked: bad files are
  named and skipped, a folder that cannot train stops with one line.
* `find_pictures()`: the listing and its rules (hidden files, symlink loops).

This module imports no TensorFlow: the decoding workers are plain Python
processes (`python image_folders.py --decode-worker`) that start in a tenth
of a second.
"""

import collections
import glob
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
from PIL import Image, ImageOps
# The decoders of FORMATS (Image.open loads only some of them by itself)
from PIL import (BmpImagePlugin, GifImagePlugin, JpegImagePlugin,  # noqa: F401
                 PngImagePlugin, WebPImagePlugin)

from downloads import cache_dir, remove_stale
from errors import DataError, short_list

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp')
FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP', 'WEBP')   # JPEG includes cameras' multi-picture MPO
MAX_PICTURE_BYTES = 64 << 20          # a larger file is refused, not read
MAX_PICTURE_PIXELS = 20000 * 20000    # more is a decompression bomb (1.2 GB as RGB)
MAX_FAILED_FRACTION = 0.01            # more pictures than this failing stops the run
BYTES_PER_PIXEL_TO_TRAIN = 9          # uint8 pixels + cnn.py's float32 copy + the graph's
CACHE_VERSION = 2                     # bump when prepare_picture() changes its pixels

Image.MAX_IMAGE_PIXELS = None         # checked here, with a message that says why
# Pillow's warnings on odd but readable files (a damaged EXIF block, a
# palette's transparency) are not the user's to act on: silenced for its
# modules once, here (warnings.catch_warnings around each picture swaps the
# process's filters, which threads decoding at once leave in disorder)
warnings.filterwarnings('ignore', module=r'PIL\.')


# -----------------------------------------------------------------------------
# One picture
# -----------------------------------------------------------------------------

def read_bytes(path):
    """A picture file's bytes, refusing what is not a regular file of at most
    MAX_PICTURE_BYTES (a FIFO or a device would hang the read).

    Raises:
      DataError: one line naming the file and the reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
        with os.fdopen(fd, 'rb') as f:
            info = os.fstat(f.fileno())
            if not (info.st_mode & 0o170000 == 0o100000):      # S_ISREG
                raise DataError('%s: not a regular file' % path)
            if info.st_size > MAX_PICTURE_BYTES:
                raise DataError('%s: %.1f MB, more than the %g MB a picture may have'
                                % (path, info.st_size / 2 ** 20, MAX_PICTURE_BYTES / 2 ** 20))
            data = f.read(MAX_PICTURE_BYTES + 1)
            if not data:            # (a copy cut short, a placeholder a sync left)
                raise DataError('%s: an empty file' % path)
            return data
    except OSError as e:
        raise DataError('%s: cannot read (%s)' % (path, e.strerror or e)) from None


def prepare_picture(data, size, crop='none', channels=3, name='picture'):
    """Decodes a picture's bytes into what a model of `size` takes.

    Args:
      data: the file's bytes.
      size: the side of the square result, in pixels.
      crop: 'center' cuts the largest central square first (the aspect ratio
        is kept); 'none' squeezes the whole picture into the square.
      channels: 3 (RGB) or 1 (grayscale, for the MNIST models).
      name: the file's name, for the error message.

    Returns:
      uint8 [size, size, channels].

    Raises:
      DataError: not a readable picture in a supported format, or too many pixels.
      ValueError: a crop that is neither.
    """
    if crop not in ('center', 'none'):
        raise ValueError("crop must be 'center' or 'none', not %r" % crop)
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PICTURE_PIXELS:
                raise DataError('%s: %dx%d pixels, more than the %d million a picture '
                                'may have (a decompression bomb?)'
                                % (name, width, height, MAX_PICTURE_PIXELS // 10 ** 6))
            # A JPEG decodes straight to 1/2, 1/4 or 1/8 of its size where
            # that is still at least `size`: a 12-megapixel photo in a
            # fraction of the time, the same for training and prediction.
            image.draft('RGB', (size, size))
            image = _upright(image)
            image = _rgb(image)
            width, height = image.size
            box = (0, 0, width, height)
            if crop == 'center':
                side = min(width, height)
                left, top = (width - side) // 2, (height - side) // 2
                box = (left, top, left + side, top + side)
            if box != (0, 0, size, size):
                # Pillow's resampling widens its filter when shrinking,
                # so every source pixel counts (antialiasing).
                image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
            if channels == 1:
                image = image.convert('L')
            pixels = np.asarray(image, np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError('%s: %s' % (name, e)) from None
    except Exception as e:     # whatever a damaged or hostile file makes a decoder raise
        reason = str(e).split('\n')[0][:120] or type(e).__name__
        if isinstance(e, Image.UnidentifiedImageError):
            reason = 'not a JPEG, PNG, GIF, BMP or WebP picture'
        raise DataError('%s: cannot decode (%s)' % (name, reason)) from None
    return pixels.reshape(size, size, channels)


def _upright(image):
    """The picture as it should be seen: phones store a portrait photo lying
    on its side with an EXIF orientation tag saying how to turn it."""
    try:
        if image.getexif().get(0x0112, 1) in (None, 1):     # 1: stored upright
            return image
        return ImageOps.exif_transpose(image)
    except Exception:       # a damaged EXIF block: keep the pixels as stored
        return image


def _rgb(image):
    """Any mode as 8-bit RGB: grayscale repeated, alpha dropped, palette and
    CMYK converted, 16- and 32-bit grayscale scaled to 0..255."""
    if image.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
        values = np.asarray(image, np.float64)
        top = 65535.0 if image.mode.startswith('I;16') or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8))
    if image.mode == 'P' and 'transparency' in image.info:
        image = image.convert('RGBA')     # then RGB below, as any picture with alpha
    return image if image.mode == 'RGB' else image.convert('RGB')


def read_picture(path, size, crop='none', channels=3):
    """`prepare_picture` of a file: uint8 [size, size, channels].

    Raises:
      DataError: the file cannot be read or decoded; one line naming it.
    """
    return prepare_picture(read_bytes(path), size, crop, channels, name=path)


# -----------------------------------------------------------------------------
# The folder: listing
# -----------------------------------------------------------------------------

def is_hidden(name):
    """Hidden files and folders (.DS_Store, .ipynb_checkpoints, ._resource
    forks) and macOS archives' __MACOSX are never pictures or classes."""
    return name.startswith('.') or name == '__MACOSX'


def find_pictures(folder, notes):
    """The picture files below `folder`, sorted, following symbolic links but
    reading every real folder once (a link back up is a loop, skipped).

    Args:
      folder: a class folder.
      notes: a Counter that gets 'hidden', 'not a picture (.ext)' and
        'folder read before (a symlink loop?)' counts.

    Returns:
      Paths of the files whose extension is a picture's, sorted.

    Raises:
      DataError: a folder below cannot be listed (its permissions).
    """
    pictures, seen, pending = [], set(), [folder]
    while pending:
        current = pending.pop()
        try:
            status = os.stat(current)
            if (status.st_dev, status.st_ino) in seen:
                notes['folder read before (a symlink loop?)'] += 1
                continue
            seen.add((status.st_dev, status.st_ino))
            entries = list(os.scandir(current))
        except OSError as e:
            raise DataError('cannot list %s (%s)' % (current, e.strerror or e)) from None
        for entry in entries:
            if is_hidden(entry.name):
                notes['hidden'] += 1
            elif entry.is_dir():
                pending.append(entry.path)
            elif entry.name.lower().endswith(EXTENSIONS):
                pictures.append(entry.path)
            else:
                notes['not a picture (%s)' % (os.path.splitext(entry.name)[1].lower()
                                              or 'no extension')] += 1
    return sorted(pictures)


def class_folders(folder):
    """The class folders of `folder`: {name: path}, sorted by name.

    Raises:
      DataError: two names that differ only in case (one folder on Windows
        and macOS), or a name with a line break (class_names.txt has one per line).
    """
    try:
        names = sorted(entry.name for entry in os.scandir(folder)
                       if entry.is_dir() and not is_hidden(entry.name))
    except OSError as e:
        raise DataError('cannot list %s (%s)' % (folder, e.strerror or e)) from None
    by_case = collections.defaultdict(list)
    for name in names:
        by_case[name.lower()].append(name)
        if '\n' in name or '\r' in name:
            raise DataError('%s: a class folder name with a line break (%r); rename it'
                            % (folder, name))
        try:
            name.encode('utf-8')
        except UnicodeEncodeError:      # bytes the file system's encoding could not read
            raise DataError('%s: a class folder name that is not UTF-8 (%r); rename it'
                            % (folder, name)) from None
    clashes = [group for group in by_case.values() if len(group) > 1]
    if clashes:
        raise DataError('%s: class folders %s differ only in case, which Windows and macOS '
                        'take for one folder; merge or rename them'
                        % (folder, ' and '.join(clashes[0])))
    return {name: os.path.join(folder, name) for name in names}


def list_folder(root):
    """Which files train and which test, before anything is decoded.

    Returns:
      (classes, {'train': [(path, label)], 'test': [(path, label)] or None
      when the folder has no train/ and test/}, notes Counter).

    Raises:
      DataError: not a folder of class folders, fewer than two classes, an
        empty class, a test/ class that train/ lacks.
    """
    if not os.path.isdir(root):
        raise DataError('%s is not a folder' % root)
    notes = collections.Counter()
    top = class_folders(root)
    try:
        for entry in os.scandir(root):
            if is_hidden(entry.name):
                notes['hidden'] += 1
            elif entry.is_file():
                notes['outside the class folders'] += 1
    except OSError:
        pass
    split = {'train', 'test'} <= set(top) and class_folders(top['train'])
    held_out = [name for name in ('val', 'valid', 'validation') if name in top]
    if 'train' in top and held_out and not split and class_folders(top['train']):
        # (else train/ and val/ would be two classes, learnt as such)
        raise DataError('%s holds train/ and %s/: the held-out pictures go in test/ (rename '
                        '%s/ to test/), or give %s as --data-dir to hold out a share of its '
                        'pictures' % (root, held_out[0], held_out[0], top['train']))
    if split:
        notes['beside train/ and test/, not read'] += len(top) - 2
        try:
            loose = [entry.name for entry in os.scandir(top['test'])
                     if entry.is_file() and entry.name.lower().endswith(EXTENSIONS)
                     and not is_hidden(entry.name)]
        except OSError as e:
            raise DataError('cannot list %s (%s)' % (top['test'], e.strerror or e)) from None
        if loose and not class_folders(top['test']):
            raise DataError('%s holds %s pictures outside class folders: a test picture needs '
                            'its class (test/<class>/...); sort them so, or remove test/ to '
                            'hold out a share of train/' % (top['test'], format(len(loose), ',')))
    parts = {'train': top['train'], 'test': top['test']} if split else {'train': root}
    listed, classes = {}, None
    for part, folder in parts.items():
        folders = class_folders(folder)
        if classes is None:
            classes = list(folders)
            if len(classes) < 2:
                hint = ('; if train/ holds the class folders, give %s as --data-dir'
                        % folders['train'] if classes == ['train'] and not split else '')
                raise DataError('%s holds %s: a classifier needs at least two class folders, '
                                'each holding the pictures of one class%s'
                                % (folder, 'one class folder (%s)' % classes[0] if classes
                                   else 'no class folders', hint))
        else:
            unknown = sorted(set(folders) - set(classes))
            if unknown:
                raise DataError('%s has class folders that %s lacks: %s; the model cannot '
                                'learn a class it never sees' % (folder, parts['train'],
                                                                 ', '.join(unknown)))
        entries = []
        for name, path in folders.items():
            files = find_pictures(path, notes)
            if not files and part == 'train':
                raise DataError('class folder %s holds no pictures (%s); add some or remove '
                                'it' % (path, ', '.join(EXTENSIONS)))
            entries += [(file, classes.index(name)) for file in files]
        listed[part] = entries
    listed.setdefault('test', None)
    return classes, listed, notes


# -----------------------------------------------------------------------------
# The folder: decoding on every core, with a cache
# -----------------------------------------------------------------------------

def _relative(paths, root):
    """The paths relative to root: a slice, as every listed path starts with
    root (os.path.relpath cost more than the rest of a cached start)."""
    prefix = os.path.join(root, '')
    return [path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
            for path in paths]


def _file_keys(paths, names):
    """What identifies each file's content for the cache: its path below
    root, size, modification time and change time (a changed file gets a new
    key; so does one whose permissions changed, which may now be readable)."""
    keys = []
    for path, name in zip(paths, names):
        try:
            status = os.stat(path)
            keys.append('%s\0%d\0%d\0%d' % (name, status.st_size, status.st_mtime_ns,
                                            status.st_ctime_ns))
        except OSError:          # gone or unreadable: decoding will say so
            keys.append('%s\0?' % name)
    return keys


def _cache_base(root, size, crop):
    """The cache's path without its suffix: one per folder, size and crop."""
    name = hashlib.sha256(json.dumps([os.path.abspath(root), size, crop, CACHE_VERSION])
                          .encode()).hexdigest()[:24]
    return os.path.join(cache_dir(), 'pictures', '%s-%dpx' % (name, size))


def _read_cache(base):
    """An earlier run's pictures: ({file key: row}, pixels memory-mapped,
    digests, errors), or None. The index (base.npz) names the pixels file
    it belongs to, so a cache is read whole or not at all."""
    try:
        with np.load(base + '.npz', allow_pickle=False) as index:
            keys, digests, errors = index['keys'], index['digests'], index['errors']
            token = str(index['token'])
        pixels = np.load('%s-%s.npy' % (base, token), mmap_mode='r')
    except (OSError, ValueError, KeyError, EOFError):    # none yet, or damaged: decode
        return None
    if len(pixels) != len(keys):
        return None
    return {key: row for row, key in enumerate(keys.tolist())}, pixels, digests, errors


def _reserved_memmap(path, dtype, shape):
    """A new .npy at `path`, memory-mapped for writing, its disk space
    reserved (a full disk under a memory map is a crash, not an error).

    Raises:
      OSError: no room.
    """
    np.lib.format.open_memmap(path, 'w+', dtype, shape).flush()   # the header, the size
    if hasattr(os, 'posix_fallocate'):
        with open(path, 'r+b') as f:
            os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
    return np.load(path, mmap_mode='r+')


def _new_pixels_file(base, shape):
    """A memory-mapped .npy of `shape` under a temporary name in the cache
    folder, which the workers write into and which then becomes the cache
    as it is (`_commit_cache`); elsewhere when the cache cannot be written.

    Returns:
      (the memory map, its path, whether it is in the cache folder).
    """
    folder = os.path.dirname(base)
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale(folder, '.decoding-*')
        fd, path = tempfile.mkstemp(prefix='.decoding-', suffix='.npy', dir=folder)
        cached = True
    except OSError:           # a read-only cache: decode all the same, keep nothing
        fd, path = tempfile.mkstemp(prefix='decoding-', suffix='.npy')
        cached = False
    os.close(fd)
    try:
        pixels = _reserved_memmap(path, np.uint8, shape)
    except OSError as e:
        os.remove(path)
        raise DataError('no room for the decoded pictures in %s (%.0f MB: %s); free some, '
                        'or point $XDG_CACHE_HOME elsewhere'
                        % (os.path.dirname(path), np.prod(shape) / 1e6, e.strerror or e)) from None
    return pixels, path, cached


def _commit_cache(base, pixels_path, keys, digests, errors):
    """Makes a finished pixels file the cache: renamed to a new name, then
    the index that names it written over the old one (a run killed meanwhile
    leaves the old cache, or none, never half of one); then the old pixels go.

    Returns:
      The pixels file's new path.
    """
    token = os.urandom(6).hex()
    final = '%s-%s.npy' % (base, token)
    fd, index = tempfile.mkstemp(prefix='.decoding-', dir=os.path.dirname(base))
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, keys=np.array(keys), digests=np.asarray(digests),
                     errors=np.array([errors.get(row, '') for row in range(len(keys))]),
                     token=np.array(token))
        os.replace(pixels_path, final)
        os.replace(index, base + '.npz')
    finally:
        if os.path.exists(index):
            os.remove(index)
    for old in glob.glob(glob.escape(base) + '-*.npy'):
        if old != final:
            try:
                os.remove(old)
            except OSError:
                pass
    return final


def usable_cores():
    """The cores this process may run on (a container's or taskset's share)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _decode_one(path, size, crop):
    """(pixels or None, digest of the file's bytes, error line or '')."""
    try:
        data = read_bytes(path)
        digest = hashlib.blake2b(data, digest_size=12).hexdigest()
        return prepare_picture(data, size, crop, name=path), digest, ''
    except DataError as e:
        return None, '', str(e)


def decode_worker():
    """A decoding process. Reads as JSON on stdin {size, crop, output, digests,
    done, index, jobs: [[row, path]]}; writes each picture into row `row` of
    the .npy `output` and its digest into the same row of `digests`, then the
    count of its jobs finished into done[index], 0 once it is ready (all
    three memory-mapped: the parent follows the progress, and after a crash
    knows the picture, without a message a picture); a picture that fails is
    printed as a JSON line [row, error] (JSON escapes any byte a file name
    may hold)."""
    request = json.load(sys.stdin)
    output, digests, done = (np.load(request[name], mmap_mode='r+')
                             for name in ('output', 'digests', 'done'))
    done[request['index']] = 0
    for count, (row, path) in enumerate(request['jobs'], 1):
        pixels, digest, error = _decode_one(path, request['size'], request['crop'])
        if pixels is not None:
            output[row] = pixels
        digests[row] = digest
        if error:
            sys.stdout.write(json.dumps([row, error]) + '\n')
            sys.stdout.flush()
        done[request['index']] = count


# How a decoding process starts: `python image_folders.py --decode-worker`,
# ignoring Ctrl-C from its first line. A terminal's Ctrl-C goes to its whole
# foreground group, where each worker would print its traceback; the parent,
# interrupted, ends them and says so in one line. (Other signals to the group,
# a closed terminal's, end them as they end the parent.)
LAUNCH_IGNORING_CTRL_C = '\n'.join([
    'import os, runpy, signal, sys',
    'signal.signal(signal.SIGINT, signal.SIG_IGN)',
    'sys.argv = sys.argv[1:]',
    'sys.path.insert(0, os.path.dirname(sys.argv[0]))',
    'runpy.run_path(sys.argv[0], run_name="__main__")'])


def _decode_in_workers(output, jobs, size, crop, workers, failed, progress):
    """Decodes jobs [(row, path)] in `workers` processes, each writing its
    pictures into their rows of the memory-mapped .npy `output`.

    failed(row, error) is called for a picture that cannot be read, from a
    thread that reads its worker's output (raising in it stops all);
    progress(count) is called with the pictures done so far, every 0.1 s.

    Returns:
      the digests of the pictures' bytes, bytes [len(output)] (b'' where
      not decoded).
    """
    processes, failure = [], []

    def read(process):
        try:
            for line in process.stdout:
                failed(*json.loads(line))
        except Exception as e:        # the failure budget ran out: stop every worker
            failure.append(e)
            for other, _, _ in processes:
                other.kill()

    rows = len(np.load(output, mmap_mode='r'))
    # Beside the pixels (where the disk was reserved), a temporary name that a
    # later run clears if this one is killed
    with tempfile.TemporaryDirectory(prefix='.decoding-', dir=os.path.dirname(output)) as scratch:
        digests_path, done_path = (os.path.join(scratch, name + '.npy')
                                   for name in ('digests', 'done'))
        try:
            digests = _reserved_memmap(digests_path, 'S24', (rows,))
            done = _reserved_memmap(done_path, np.int64, (workers,))
        except OSError as e:
            raise DataError('no room to decode in %s (%s); free some, or point '
                            '$XDG_CACHE_HOME elsewhere' % (scratch, e.strerror or e)) from None
        done[:] = -1            # not started
        try:
            environment = {key: value for key, value in os.environ.items()
                           if key != 'PYTHONUNBUFFERED'}
            for index in range(workers):
                share = jobs[index::workers]   # every n-th: big and small pictures spread evenly
                process = subprocess.Popen(
                    [sys.executable, '-c', LAUNCH_IGNORING_CTRL_C, os.path.abspath(__file__),
                     '--decode-worker'],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    env=dict(environment, PYTHONDONTWRITEBYTECODE='1', OMP_NUM_THREADS='1',
                             OPENBLAS_NUM_THREADS='1'))
                # (listed before its jobs are written: interrupted while writing,
                # it is ended with the others)
                processes.append((process, threading.Thread(target=read, args=(process,),
                                                            daemon=True), share))
                process.stdin.write(json.dumps({
                    'size': size, 'crop': crop, 'output': output, 'digests': digests_path,
                    'done': done_path, 'index': index, 'jobs': share}))
                process.stdin.close()
            for _, reader, _ in processes:
                reader.start()
            for _, reader, _ in processes:
                while reader.is_alive():
                    progress(int(done.clip(0).sum()))
                    reader.join(0.1)
            if failure:
                raise failure[0]
            for index, (process, _, share) in enumerate(processes):
                if process.wait() != 0:
                    if done[index] < 0:
                        raise DataError('a decoding process could not start (exit status %d; '
                                        'its error is above)' % process.returncode)
                    crashed = share[done[index]][1] if done[index] < len(share) else '?'
                    raise DataError('the decoder crashed (exit status %d) on %s; move that '
                                    'file out of the folder' % (process.returncode, crashed))
            progress(int(done.clip(0).sum()))
            return np.array(digests)
        finally:
            for process, _, _ in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
            del digests, done       # unmapped before the folder goes (Windows)


class _Progress:
    """'Reading pictures: 12,345/60,000, 2,100/s, 22 s left' on a terminal."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.start = self.shown = time.time()
        self.live = total and getattr(stream, 'isatty', lambda: False)()

    def update(self, done):
        """Shows `done` of the total, at most four times a second and at the end."""
        self.done = done
        now = time.time()
        if self.live and (now - self.shown > 0.25 or done == self.total):
            rate = done / max(now - self.start, 1e-9)
            self.stream.write('\rReading pictures: %s/%s, %s/s, %d s left   ' % (
                format(done, ','), format(self.total, ','), format(int(rate), ','),
                (self.total - done) / max(rate, 1e-9)))
            self.stream.flush()
            self.shown = now

    def close(self):
        if self.live and self.done:
            self.stream.write('\n')


def decode_all(paths, size, crop, root, workers=None, log=print, names=None):
    """Every picture of `paths` prepared at `size`, from the cache where the
    file is unchanged, else decoded in `workers` processes (default: one per
    core) straight into a new cache file. `names`: the paths relative to
    root, when the caller has them.

    Returns:
      (pixels uint8 [len(paths), size, size, 3], memory-mapped from the
      cache (zeros where a picture failed), digests (hex strings, '' where
      it failed), {row: error line} of the pictures that failed).

    Raises:
      DataError: more than MAX_FAILED_FRACTION of the pictures fail (stopped
        as soon as that is certain).
    """
    base = _cache_base(root, size, crop)
    keys = _file_keys(paths, names or _relative(paths, root))
    cache = _read_cache(base)
    row_of, cached_pixels, cached_digests, cached_errors = cache or ({}, None, None, None)
    hits = [(row, row_of[key]) for row, key in enumerate(keys) if key in row_of]
    missing = [row for row, key in enumerate(keys) if key not in row_of]
    digests = np.full(len(paths), '', 'U24')
    errors = {}
    if hits:
        rows, sources = (np.array(column) for column in zip(*hits))
        digests[rows] = cached_digests[sources]
        errors = {int(row): str(cached_errors[source])
                  for row, source in zip(rows, sources) if cached_errors[source]}
        if not missing and len(rows) == len(cached_pixels) and np.array_equal(rows, sources):
            return cached_pixels, digests, errors       # nothing changed: the cache itself

    # A new cache file: the unchanged pictures copied, the others decoded into it
    pixels, pixels_path, cacheable = _new_pixels_file(base, (len(paths), size, size, 3))
    allowed = max(1, int(MAX_FAILED_FRACTION * len(paths)))
    progress = _Progress(len(missing))
    lock = threading.Lock()

    def check_budget():
        if len(errors) > allowed:
            raise DataError('more than %d of the %d pictures cannot be read (at most %g%% may '
                            'fail; the first: %s)' % (allowed, len(paths),
                                                      100 * MAX_FAILED_FRACTION,
                                                      errors[min(errors)]))

    def failed(row, error):
        with lock:
            errors[row] = error
            check_budget()

    try:
        if hits:
            pixels[rows] = cached_pixels[sources]
        check_budget()          # the cache's own failures count too
        workers = workers or usable_cores()
        workers = min(workers, max(1, len(missing) // 50))   # a few pictures: no processes
        try:
            if workers > 1:
                decoded = _decode_in_workers(pixels_path, [(row, paths[row]) for row in missing],
                                             size, crop, workers, failed, progress.update)
                digests[missing] = decoded[missing].astype('U24')
            else:
                for count, row in enumerate(missing, 1):
                    picture, digests[row], error = _decode_one(paths[row], size, crop)
                    if picture is not None:
                        pixels[row] = picture
                    if error:
                        failed(row, error)
                    progress.update(count)
        finally:
            progress.close()
        pixels.flush()
        if cacheable:
            try:
                _commit_cache(base, pixels_path, keys, digests, errors)
            except OSError as e:      # a full disk: train all the same
                log('Could not cache the decoded pictures in %s (%s)'
                    % (os.path.dirname(base), e.strerror or e))
        # The memory map stays valid under the file's new name; without a
        # cache the file goes now, its pages with the map
        return pixels, digests, errors
    finally:
        try:
            os.remove(pixels_path)
        except OSError:     # renamed into the cache (or, on Windows, still mapped)
            pass


# -----------------------------------------------------------------------------
# The folder, whole
# -----------------------------------------------------------------------------

def available_memory():
    """Bytes of memory free for use, or None where it cannot be told."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(count, size, root):
    """Refuses, before decoding, a folder whose pictures would not fit in memory
    for training: count x size x size x 3 bytes as uint8, and about
    BYTES_PER_PIXEL_TO_TRAIN bytes per pixel value while training."""
    needed = count * size * size * 3 * BYTES_PER_PIXEL_TO_TRAIN
    available = available_memory()
    if available is not None and needed > available:
        raise DataError('%s: %s pictures at %dx%d need about %.1f GB to train, and %.1f GB '
                        'of memory is free; use a smaller --image-size or fewer pictures'
                        % (root, format(count, ','), size, size, needed / 1e9,
                           available / 1e9))


def _filed_under_two_classes(digests, labels, rows):
    """The pictures of which another class holds a copy, byte for byte (a
    picture put in two class folders).

    Args:
      digests: each picture's digest of its bytes.
      labels: each picture's class.
      rows: the pictures to compare (the readable ones).

    Returns:
      [(row, the first row of a copy in another class)], in the order of rows.
    """
    first_of = {}            # digest -> {label: its first row}
    for row in rows:
        first_of.setdefault(digests[row], {}).setdefault(labels[row], row)
    return [(row, next(other for label, other in first_of[digests[row]].items()
                       if label != labels[row]))
            for row in rows if len(first_of[digests[row]]) > 1]


def _the_run_classes(classes, listed, trained, root, log):
    """A run's classes in a folder that has gained class folders since.

    Args:
      classes, listed: what `list_folder` found now.
      trained: the classes the run learnt, in its order.

    Returns:
      (trained, listed with the pictures of the added classes left out and
      the others numbered as the run numbered them).

    Raises:
      DataError: a class the run learnt is no longer there.
    """
    gone = [name for name in trained if name not in classes]
    if gone:
        raise DataError('the run was trained on the classes %s, and %s holds %s: give the '
                        'folder it was trained on' % (short_list(trained), root,
                                                      short_list(classes)))
    added = [name for name in classes if name not in trained]
    log('Left out the class folder%s added since the run: %s'
        % ('s' * (len(added) > 1), short_list(added)))
    number = [trained.index(name) if name in trained else None for name in classes]
    return trained, {part: None if entries is None else
                     [(path, number[label]) for path, label in entries
                      if number[label] is not None]
                     for part, entries in listed.items()}


def load_folder(root, image_size=32, crop='center', test_split=0.2, seed=None, workers=None,
                log=print, recorded=None):
    """A folder of class folders as training and test arrays.

    Args:
      root: the folder (see the module docstring for its layout).
      image_size: the side, in pixels, every picture is resized to.
      crop: 'center' or 'none' (see `prepare_picture`).
      test_split: where there is no test/, the fraction of each class held
        out for testing (at least one picture of a class of two or more).
      seed: draws that split and the order of the training pictures; None
        draws at random (the split is returned, for the run folder).
      workers: decoding processes (default: one per core).
      log: prints the one-line notes (skipped files, duplicates, warnings).
      recorded: a run's split.json ({'train': [...], 'test': [...]}, paths
        relative to root, and 'classes'): that split again, pictures added
        since left out; other classes are an error.

    Returns:
      A dict: images_train uint8 [N, size, size, 3], labels_train int64 [N],
      images_test, labels_test (each in an order shuffled by seed), classes (the
      folder names), files_train and files_test (the paths, relative to
      root, in the arrays' order), split (how: 'train/ and test/ folders',
      or 'drawn: test_split X of each class, seed S').

    Raises:
      DataError: the folder cannot be used (one line naming the problem).
    """
    start = time.time()
    classes, listed, notes = list_folder(root)
    if recorded is not None and recorded.get('classes', classes) != classes:
        classes, listed = _the_run_classes(classes, listed, recorded['classes'], root, log)
    entries = listed['train'] + (listed['test'] or [])
    paths = [path for path, _ in entries]
    check_memory(len(paths), image_size, root)
    names = _relative(paths, root)
    pixels, digests, errors = decode_all(paths, image_size, crop, root, workers, log, names)
    for row, error in list(errors.items())[:10]:
        log('Skipped %s' % error)
    if len(errors) > 10:
        log('Skipped %d more pictures that cannot be read' % (len(errors) - 10))
    for note, count in sorted(notes.items()):
        if count:
            log('Ignored %s file%s or folder%s: %s' % (format(count, ','), 's' * (count > 1),
                                                   's' * (count > 1), note))

    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in entries], np.int64)
    good = np.ones(len(entries), bool)
    good[list(errors)] = False
    train_count = len(listed['train'])
    if recorded is not None:
        trained, tested = set(recorded['train']), set(recorded['test'])
        good &= np.array([name in trained or name in tested for name in names], bool)
        is_test = np.array([name in tested for name in names], bool)
        split = 'as recorded in split.json'
    elif listed['test'] is not None:
        is_test = np.arange(len(entries)) >= train_count
        split = 'train/ and test/ folders'
    else:
        is_test = np.zeros(len(entries), bool)
        for label in range(len(classes)):
            rows = np.flatnonzero((labels == label) & good)
            held = 0     # a class of one picture trains on it
            if len(rows) >= 2:
                held = min(max(int(round(len(rows) * test_split)), 1), len(rows) - 1)
            is_test[rng.permutation(rows)[:held]] = True
        split = 'drawn: test_split %g of each class, %s' % (
            test_split, 'seed %d' % seed if seed is not None else 'at random (no --seed)')
    # Both in an order shuffled by seed: cnn.py validates on the training
    # set's end, fast_cnn.py shows progress on the first 2000 test pictures
    train_rows = rng.permutation(np.flatnonzero(good & ~is_test))
    test_rows = rng.permutation(np.flatnonzero(good & is_test))
    for label, name in enumerate(classes):
        if not np.any(labels[train_rows] == label):
            raise DataError('class %s has no readable training picture' % name)
    if not len(test_rows):
        raise DataError('%s: no test pictures (test/ is empty, or too few pictures to hold '
                        'any out); add some' % root)
    absent = [name for label, name in enumerate(classes)
              if not np.any(labels[test_rows] == label)]
    if absent:
        log('Warning: no test pictures of %s: their accuracy is not measured' % ', '.join(absent))
    twice = _filed_under_two_classes(digests, labels, np.flatnonzero(good))
    if twice:
        log('Warning: %d pictures have a copy in another class, byte for byte (for example '
            '%s and %s): the model is taught two labels for one picture' % (len(twice),
                names[twice[0][0]], names[twice[0][1]]))
    repeated = test_rows[np.isin(digests[test_rows], digests[train_rows])]
    if len(repeated):
        log('Warning: %d test picture%s also in the training set, byte for byte (for example '
            '%s): the test accuracy will flatter the model' % (
                len(repeated), 's are' if len(repeated) > 1 else ' is',
                names[repeated[0]]))
    log('Read %s pictures of %d classes from %s (%s training, %s test; %s) in %.1f s' % (
        format(int(good.sum()), ','), len(classes), root, format(len(train_rows), ','),
        format(len(test_rows), ','), split, time.time() - start))
    return {
        'images_train': pixels[train_rows], 'labels_train': labels[train_rows],
        'images_test': pixels[test_rows], 'labels_test': labels[test_rows],
        'classes': classes,
        'files_train': [names[row] for row in train_rows],
        'files_test': [names[row] for row in test_rows],
        'split': split,
    }


if __name__ == '__main__' and sys.argv[1:] == ['--decode-worker']:
    decode_worker()
