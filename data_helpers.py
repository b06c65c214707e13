"""CIFAR-10 (and MNIST) for the tutorials: find it, read it, check it, draw batches.

The article's own `data_helpers.py` read the five training batches and the
test batch with `pickle`, turned them into float64 and subtracted the mean
training image. `load_data()` below does the same (in float32, which halves
the memory); the rest is what a tool needs around it:

* `load_images()`: uint8 images for the convolutional scripts, from CIFAR-10,
  CIFAR-100 (`load_cifar100()`) or a folder of your own pictures
  (image_folders.py reads those);
* `load_data()`: the article's function; `load_raw()` and `load_test_batch()`
  give the uint8 pixels as stored, `load_CIFAR10_batch()` one file;
* `find_cifar10()`: an explicit `data_dir`, else `$CIFAR10_DIR`, else
  `./cifar-10-batches-py` (where the article puts it), else the per-user cache
  folder, where it is downloaded, md5-checked and extracted when absent
  (downloads.py does the fetching);
* `load_mnist()`: the four official IDX files, as TensorFlow's old `input_data`;
* the three ways the tutorials draw training batches: `random_batch` (part 1:
  with replacement, fed through `feed_dict`), `epoch_indices` / `gen_batch`
  (part 2: shuffled epochs without replacement) and `InGraphSampler` (the
  training set held once in device memory, batches drawn inside the graph).

Every file read is validated, so a truncated or foreign file gives one clear
`DataError` naming it instead of a traceback. The official batches are Python
pickles, and unpickling can run arbitrary code: they are read by a restricted
unpickler that builds numpy arrays and nothing else.
"""

import gzip
import os
import pickle
import zlib

import numpy as np
import tensorflow.compat.v1 as tf

import image_folders
from downloads import cache_dir, download_and_extract, download_from_mirrors
from errors import DataError

CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
CIFAR10_MD5 = 'c58f30108f718f92721af3b95e74349a'
CIFAR10_FOLDER = 'cifar-10-batches-py'
CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'
CIFAR100_MD5 = 'eb9058c3a382ffc7106e4002c42a8d85'
CIFAR100_FOLDER = 'cifar-100-python'
CIFAR100_FILES = ['train', 'test', 'meta']
TRAIN_BATCHES = ['data_batch_%d' % i for i in range(1, 6)]
TEST_BATCH = 'test_batch'
# The article's short class names (batches.meta has 'airplane', 'automobile').
CLASSES = ['plane', 'car', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
           'ship', 'truck']
IMAGE_PIXELS = 32 * 32 * 3


# -----------------------------------------------------------------------------
# The article's load_data()
# -----------------------------------------------------------------------------

def load_data(data_dir=None, normalization='mean', layout='flat'):
    """Loads CIFAR-10 as the article's `load_data()` does, in float32.

    Args:
      data_dir: where the batches are (see `find_cifar10`); None searches and,
        failing that, downloads.
      normalization: 'mean' subtracts the mean training image from raw 0..255
        pixel values, as the article does; 'scale' divides by 255 so pixels lie
        in [0, 1], as the Keras-style tutorials do.
      layout: 'flat' gives images as [N, 3072] rows (R, G, B planes), 'nhwc'
        as [N, 32, 32, 3] arrays for convolutions.

    Returns:
      The article's dict: images_train (50000, 3072) float32, labels_train
      (50000,) int64, images_test (10000, 3072) float32, labels_test (10000,)
      int64, classes (10 names); and mean_image, the mean training image that
      was subtracted (in the images' layout), or None for 'scale'.

    Raises:
      DataError: the data is missing, corrupt or cannot be fetched.
    """
    if normalization not in ('mean', 'scale'):
        raise ValueError("normalization must be 'mean' or 'scale', not %r" % normalization)
    if layout not in ('flat', 'nhwc'):
        raise ValueError("layout must be 'flat' or 'nhwc', not %r" % layout)
    images_train, labels_train, images_test, labels_test = load_raw(data_dir)

    if normalization == 'mean':
        # Normalize data: subtract the mean training image, as the article does.
        offset = np.mean(images_train, axis=0, dtype=np.float64).astype(np.float32)
        scale = np.float32(1)
    else:
        offset, scale = np.float32(0), np.float32(1 / 255)
    if layout == 'nhwc':
        images_train, images_test = to_nhwc(images_train), to_nhwc(images_test)
        offset = to_nhwc(offset) if np.ndim(offset) else offset

    return {
        'images_train': to_float32(images_train, offset, scale),
        'labels_train': labels_train,
        'images_test': to_float32(images_test, offset, scale),
        'labels_test': labels_test,
        'classes': list(CLASSES),
        # What was subtracted (None when scaled), for predicting on new images.
        'mean_image': offset if normalization == 'mean' else None,
    }


def to_float32(images, offset=np.float32(0), scale=np.float32(1 / 255)):
    """(images - offset) * scale in one pass from uint8 into a new aligned
    float32 array (no float64 copy); by default pixels scaled to [0, 1]."""
    result = aligned_empty(images.shape)
    np.subtract(images, offset, out=result, dtype=np.float32)
    if scale != 1:
        result *= scale
    return result


# -----------------------------------------------------------------------------
# The convolutional scripts' data: CIFAR-10, or a folder of your own pictures
# -----------------------------------------------------------------------------

def is_picture_folder(data_dir):
    """Whether --data-dir names a folder of class folders rather than CIFAR."""
    if (not data_dir or not os.path.isdir(data_dir) or _batches_folder(data_dir)
            or _batches_folder(data_dir, 'cifar100')):
        return False
    return any((entry.is_dir() and entry.name not in (CIFAR10_FOLDER, CIFAR100_FOLDER)
                or entry.name.lower().endswith(image_folders.EXTENSIONS))
               and not image_folders.is_hidden(entry.name) for entry in os.scandir(data_dir))


def is_cifar100_folder(data_dir):
    """Whether --data-dir names CIFAR-100's python version (or a folder holding it)."""
    return bool(data_dir) and os.path.isdir(data_dir) and bool(_batches_folder(data_dir,
                                                                                'cifar100'))


def load_images(data_dir=None, image_size=32, crop='center', test_split=0.2, seed=None,
                dataset='cifar10', labels='fine', recorded=None):
    """The training and test images of cnn.py and fast_cnn.py, as uint8 pixels.

    Args:
      data_dir: CIFAR-10 (see `find_cifar10`), CIFAR-100's python version,
        or a folder of class folders (image_folders.py: one sub-folder of
        pictures per class, or train/ and test/ each holding them).
      image_size, crop, test_split, seed: how a folder's pictures are
        prepared and split (`image_folders.load_folder`); CIFAR is 32x32.
      dataset: 'cifar100' finds (or downloads) CIFAR-100 where there is no
        data_dir; a data_dir holding CIFAR-100 is read as such anyway, one
        holding other data with 'cifar100' is an error.
      labels: CIFAR-100's 'fine' (100) or 'coarse' (20) classes (None:
        fine); 'coarse' for other data is an error.
      recorded: a folder run's split.json, to score a run on its own test
        pictures again (`image_folders.load_folder`).

    Returns:
      A dict: images_train uint8 [N, size, size, 3], labels_train int64,
      images_test, labels_test, classes, dataset ('cifar10', 'cifar100' or
      'folder');
      for a folder also root, image_size, crop, files_train, files_test and
      split (which picture went where: `split_record`).

    Raises:
      DataError: the data is missing or unusable, other than dataset or
        labels say, or --image-size is not 32 for CIFAR.
    """
    holds = dataset             # what --data-dir holds: 'cifar10', 'cifar100' or 'folder'
    if data_dir and not os.path.isdir(data_dir):
        find_cifar10(data_dir, download=False, dataset=dataset)   # says: gone, or a file
    if data_dir:
        holds = ('cifar100' if is_cifar100_folder(data_dir) else
                 'cifar10' if _batches_folder(data_dir) else
                 'folder' if is_picture_folder(data_dir) else None)
        if holds is None:
            spec = _spec(dataset)
            raise DataError('--data-dir %s holds no %s %s and no class folders of pictures (one '
                            'folder of pictures per class); fix the path, or unset it to use '
                            'the download in %s' % (data_dir, spec['title'], spec['what'],
                                                    cache_dir()))
        if dataset == 'cifar100' and holds != 'cifar100':
            raise DataError('--dataset cifar100, but --data-dir %s holds %s; point it at '
                            'cifar-100-python, or leave out one of the two'
                            % (data_dir, 'CIFAR-10' if holds == 'cifar10' else 'your own pictures'))
    labels = labels or 'fine'
    if labels == 'coarse' and holds != 'cifar100':
        raise DataError("--labels coarse: only CIFAR-100 has coarse classes (this is %s)"
                        % ('CIFAR-10' if holds == 'cifar10' else 'a folder of your own pictures'))
    cifar100 = holds == 'cifar100'
    if holds == 'folder':
        return dict(image_folders.load_folder(data_dir, image_size, crop, test_split, seed,
                                              recorded=recorded),
                    dataset='folder', root=os.path.abspath(data_dir), image_size=image_size,
                    crop=crop)
    if image_size != 32:
        raise DataError('--image-size %d: CIFAR is 32x32; other sizes are for folders of '
                        'your own pictures (--data-dir)' % image_size)
    if cifar100:
        images_train, labels_train, images_test, labels_test, classes = load_cifar100(
            data_dir, labels)
    else:
        images_train, labels_train, images_test, labels_test = load_raw(data_dir)
        classes = CLASSES
    return {'images_train': to_nhwc(images_train), 'labels_train': labels_train,
            'images_test': to_nhwc(images_test), 'labels_test': labels_test,
            'classes': list(classes), 'dataset': 'cifar100' if cifar100 else 'cifar10'}


def split_record(data_sets):
    """For a folder's run: which pictures trained and which tested, and how
    they were drawn (the run folder's split.json); None for CIFAR-10."""
    if data_sets['dataset'] != 'folder':
        return None
    return {'root': data_sets['root'], 'split': data_sets['split'],
            'classes': data_sets['classes'], 'train': data_sets['files_train'],
            'test': data_sets['files_test']}


def picture_info(data_sets):
    """What model.json records of how a folder's pictures were prepared
    (image_size, crop), so predict.py prepares new ones the same way."""
    if data_sets['dataset'] != 'folder':
        return {}
    return {'image_size': data_sets['image_size'], 'crop': data_sets['crop']}


# -----------------------------------------------------------------------------
# Reading the batches
# -----------------------------------------------------------------------------

def load_raw(data_dir=None):
    """Reads the six batches as stored, without normalising.

    Returns:
      (images_train uint8 [50000, 3072], labels_train int64 [50000],
       images_test uint8 [10000, 3072], labels_test int64 [10000]).
    """
    folder = find_cifar10(data_dir)
    count = _images_per_batch(folder)
    train = [load_CIFAR10_batch(os.path.join(folder, name), count)
             for name in TRAIN_BATCHES]
    images_test, labels_test = load_CIFAR10_batch(
        os.path.join(folder, TEST_BATCH), count)
    images_train = np.concatenate([images for images, _ in train])
    labels_train = np.concatenate([labels for _, labels in train])
    return images_train, labels_train, images_test, labels_test


def load_test_batch(data_dir=None):
    """Reads only the test batch, as stored: (images uint8 [10000, 3072],
    labels int64 [10000]), for tools that never need the training set."""
    folder = find_cifar10(data_dir)
    return load_CIFAR10_batch(os.path.join(folder, TEST_BATCH), _images_per_batch(folder))


def load_CIFAR10_batch(filename, expected_count=None):
    """Loads one CIFAR-10 batch file, as the article's function of that name.

    Args:
      filename: path of data_batch_N or test_batch.
      expected_count: the number of images the batch must hold, or None.

    Returns:
      (images uint8 [N, 3072], labels int64 [N]); each image row holds the
      1024 red, then 1024 green, then 1024 blue values.

    Raises:
      DataError: the file is missing, truncated or not a CIFAR-10 batch.
    """
    batch = _unpickle(filename)
    missing = [key for key in ('data', 'labels') if key not in batch]
    if missing:
        raise DataError('%s is not a CIFAR-10 batch: it has no %s'
                        % (filename, ' or '.join(repr(k) for k in missing)))
    images, labels = _checked_batch(filename, batch['data'], batch['labels'], 10)
    if expected_count is not None and images.shape[0] != expected_count:
        raise DataError('%s holds %d images, expected %d: the file is truncated'
                        % (filename, images.shape[0], expected_count))
    return images, labels


def _checked_batch(filename, images, labels, num_classes):
    """A batch's data and labels, checked: uint8 images [N, 3072], N integer
    labels in 0..num_classes-1 (10: a CIFAR-10 batch, else CIFAR-100's).

    Returns:
      [images, labels as int64].
    """
    kind = 'a CIFAR-10 batch' if num_classes == 10 else 'a CIFAR-100 file'
    try:
        labels = np.asarray(labels)
    except ValueError:          # a ragged list
        labels = np.zeros(0, np.float64)
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8
            and images.ndim == 2 and images.shape[1] == IMAGE_PIXELS):
        found = ('%s %s' % (images.dtype, images.shape) if isinstance(images, np.ndarray)
                 else type(images).__name__)
        raise DataError('%s is not %s: data is %s, expected uint8 '
                        '(N, 3072)' % (filename, kind, found))
    if not len(images):
        raise DataError('%s holds no images: the file is truncated' % filename)
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError('%s is not %s: %d images need %d integer labels, '
                        'not %s of shape %s' % (filename, kind, len(images), len(images),
                                                labels.dtype, labels.shape))
    if labels.min() < 0 or labels.max() > num_classes - 1:
        raise DataError('%s is not %s: labels outside 0..%d' % (filename, kind,
                                                               num_classes - 1))
    return [images, labels.astype(np.int64)]


def _images_per_batch(folder):
    """num_cases_per_batch from batches.meta (10000 in the official set)."""
    meta_file = os.path.join(folder, 'batches.meta')
    if not os.path.exists(meta_file):
        return None
    meta = _unpickle(meta_file)
    count = meta.get('num_cases_per_batch')
    if not isinstance(count, int) or count <= 0:
        raise DataError('%s is not CIFAR-10 metadata: no num_cases_per_batch' % meta_file)
    return count


class _BatchUnpickler(pickle._Unpickler):
    """An unpickler that builds only what the official batches hold.

    Unpickling can call any function a file names; this one refuses every
    global but numpy's array reconstruction (and `_codecs.encode` and `bytes`,
    which Python 3's protocol-2 pickles use for bytes). It is the pure-Python
    unpickler, whose memo is a dict: a damaged memo index in a file cannot make
    it allocate gigabytes, as the C unpickler's array memo does.
    """
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'),
               ('numpy._core.multiarray', '_reconstruct'),
               ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
               ('__builtin__', 'bytes'), ('builtins', 'bytes')}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _ForbiddenGlobal('%s.%s' % (module, name))
        return super().find_class(module, name)


class _ForbiddenGlobal(Exception):
    pass


def _unpickle(filename, kind='a CIFAR-10 batch'):
    """Loads one Python-2 pickle with str keys, whatever the encoding gave;
    `kind` names what the file should be in the error messages."""
    try:
        with open(filename, 'rb') as f:
            # latin1 turns the Python-2 str keys into str and leaves numpy's
            # uint8 buffers as they were; bytes keys are turned into str below.
            content = _BatchUnpickler(f, encoding='latin1').load()
    except _ForbiddenGlobal as e:
        raise DataError('%s is not %s: it asks to call %s, which the '
                        'official files never do; refusing to load it (delete it and '
                        'download or place it again)' % (filename, kind, e)) from None
    except OSError as e:
        raise DataError('cannot read %s (%s)' % (filename, e.strerror or e)) from None
    except Exception as e:     # whatever a damaged pickle makes the unpickler raise
        raise DataError('%s is truncated or not %s (%s: %s); '
                        'delete it and download or place it again'
                        % (filename, kind, type(e).__name__, e)) from None
    if not isinstance(content, dict):
        raise DataError('%s is not %s (it holds a %s, not a dict)'
                        % (filename, kind, type(content).__name__))
    return {k.decode('latin1') if isinstance(k, bytes) else k: v
            for k, v in content.items()}


def aligned_empty(shape, dtype=np.float32, alignment=64):
    """An uninitialised C-ordered array whose data starts on a 64-byte boundary.

    TensorFlow uses a fed numpy array in place, without copying it, only when
    its data is aligned like this; numpy's own large arrays are 16-byte aligned,
    and a copy of the 600 MB training set costs seconds here (BENCHMARKS.md).
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + size].view(dtype).reshape(shape)


def to_nhwc(images):
    """[N, 3072] rows of R, G, B planes -> [N, 32, 32, 3] (a view, no copy)."""
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


# -----------------------------------------------------------------------------
# Where the data is
# -----------------------------------------------------------------------------

def _spec(dataset):
    """What finding `dataset` ('cifar10' or 'cifar100') needs, read when
    called (tests point the URLs at a local server)."""
    if dataset == 'cifar100':
        return dict(title='CIFAR-100', folder=CIFAR100_FOLDER, files=CIFAR100_FILES,
                    what='files (train, test, meta)', holds='train, test and meta',
                    env='CIFAR100_DIR', url=CIFAR100_URL, md5=CIFAR100_MD5)
    return dict(title='CIFAR-10', folder=CIFAR10_FOLDER, files=TRAIN_BATCHES + [TEST_BATCH],
                what='batches (data_batch_1..5, test_batch)',
                holds='data_batch_1..5 and test_batch', env='CIFAR10_DIR', url=CIFAR10_URL,
                md5=CIFAR10_MD5)


def _batches_folder(folder, dataset='cifar10'):
    """`folder` itself if it holds the data set's files, else its
    cifar-10-batches-py (cifar-100-python) if that does."""
    spec = _spec(dataset)
    for candidate in (folder, os.path.join(folder, spec['folder'])):
        if all(os.path.isfile(os.path.join(candidate, name)) for name in spec['files']):
            return candidate
    return None


def _place_by_hand(folder, dataset='cifar10'):
    spec = _spec(dataset)
    return ('download %s by hand, check its md5 (%s), extract it so that %s '
            'holds %s, or point $%s or --data-dir at an existing copy'
            % (spec['url'], spec['md5'], os.path.join(folder, spec['folder']), spec['holds'],
               spec['env']))


def find_cifar10(data_dir=None, download=True, dataset='cifar10'):
    """Returns the folder that holds the CIFAR-10 batches, downloading if needed.

    Args:
      data_dir: a `cifar-10-batches-py` folder or a folder containing one. When
        given (or when $CIFAR10_DIR is set) it must hold the data: nothing is
        downloaded into a folder the user named.
      download: whether to download into the per-user cache when no copy is found.
      dataset: 'cifar100' finds CIFAR-100 instead, the same way
        (`cifar-100-python`, $CIFAR100_DIR, its official URL and md5).

    Returns:
      The path of the folder holding data_batch_1..5 and test_batch.

    Raises:
      DataError: the data is not where it was said to be, or cannot be fetched.
    """
    spec = _spec(dataset)
    named = data_dir or os.environ.get(spec['env'])
    if named:
        found = _batches_folder(named, dataset)
        if found is None:
            source = '--data-dir' if data_dir else '$' + spec['env']
            if not os.path.exists(named):
                what = 'does not exist'
            elif not os.path.isdir(named):
                what = 'is a file, not a folder'
            else:
                what = 'holds no %s %s' % (spec['title'], spec['what'])
            raise DataError('%s %s %s; fix the path, or unset it to use the download in %s'
                            % (source, named, what, cache_dir()))
        return found
    for folder in (os.getcwd(), cache_dir()):
        found = _batches_folder(folder, dataset)
        if found is not None:
            return found
        partial = os.path.join(folder, spec['folder'])
        if os.path.isdir(partial):     # say why it is not used, rather than download
            missing = [name for name in spec['files']
                       if not os.path.isfile(os.path.join(partial, name))]
            raise DataError('%s lacks %s: complete it, or remove it to download %s '
                            'again' % (partial, ', '.join(missing), spec['title']))
    if not download:
        raise DataError('%s not found in ./%s or %s; %s'
                        % (spec['title'], spec['folder'], cache_dir(),
                           _place_by_hand(cache_dir(), dataset)))
    return download_and_extract(spec['url'], spec['md5'], cache_dir(), spec['folder'],
                                _place_by_hand(cache_dir(), dataset))


# -----------------------------------------------------------------------------
# CIFAR-100: one training and one test file, fine and coarse labels
# -----------------------------------------------------------------------------

def load_cifar100(data_dir=None, labels='fine'):
    """Reads CIFAR-100's python version as stored, through the same
    restricted unpickler as CIFAR-10's batches.

    Args:
      data_dir: a `cifar-100-python` folder or one holding it (see
        `find_cifar10` with dataset='cifar100'); None searches, then downloads.
      labels: 'fine' (100 classes) or 'coarse' (20 superclasses).

    Returns:
      (images_train uint8 [50000, 3072], labels_train int64, images_test
      uint8 [10000, 3072], labels_test int64, class names from meta).

    Raises:
      DataError: a file is missing, damaged or not CIFAR-100's.
    """
    folder = find_cifar10(data_dir, dataset='cifar100')
    meta_file = os.path.join(folder, 'meta')
    names = _unpickle(meta_file, 'CIFAR-100 metadata').get(labels + '_label_names')
    if not (isinstance(names, list) and len(names) >= 2
            and all(isinstance(name, (str, bytes)) for name in names)):
        raise DataError('%s is not CIFAR-100 metadata: no list %s_label_names'
                        % (meta_file, labels))
    names = [name.decode('latin1') if isinstance(name, bytes) else name for name in names]
    arrays = []
    for split in ('train', 'test'):
        filename = os.path.join(folder, split)
        batch = _unpickle(filename, 'a CIFAR-100 file')
        key = labels + '_labels'
        if 'data' not in batch or key not in batch:
            raise DataError('%s is not a CIFAR-100 file: it has no %r or no %r'
                            % (filename, 'data', key))
        arrays += _checked_batch(filename, batch['data'], batch[key], len(names))
    return (*arrays, names)


# -----------------------------------------------------------------------------
# -----------------------------------------------------------------------------
# MNIST: the four official IDX files
# -----------------------------------------------------------------------------

# Yann LeCun's own site no longer serves the files reliably; these maintained
# mirrors hold byte-identical copies, tried in order.
MNIST_MIRRORS = ['https://storage.googleapis.com/cvdf-datasets/mnist/',
                 'https://ossci-datasets.s3.amazonaws.com/mnist/']
MNIST_FILES = {
    'train-images-idx3-ubyte.gz': 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
    'train-labels-idx1-ubyte.gz': 'd53e105ee54ea40749a09fcbcd1e9432',
    't10k-images-idx3-ubyte.gz': '9fb629c4189551a2d022fa330f9573f3',
    't10k-labels-idx1-ubyte.gz': 'ec29112dd5afa0611ce80d1b7f02629c',
}
MNIST_VALIDATION_SIZE = 5000   # as TensorFlow's old input_data.read_data_sets


def find_mnist(data_dir=None, download=True):
    """Returns the folder holding the four MNIST files, downloading if needed.

    Looks in `data_dir`, else $MNIST_DIR (either must hold the files), else
    ./MNIST_data and the per-user cache; downloads into the cache otherwise.
    """
    names = list(MNIST_FILES)

    def holds(folder):
        return all(os.path.isfile(os.path.join(folder, n)) for n in names)

    named = data_dir or os.environ.get('MNIST_DIR')
    if named:
        if not holds(named):
            source = '--data-dir' if data_dir else '$MNIST_DIR'
            raise DataError('%s %s does not hold the MNIST files (%s); fix the path, '
                            'or unset it to use the download in %s'
                            % (source, named, ', '.join(names), cache_dir()))
        return named
    cached = os.path.join(cache_dir(), 'mnist')
    for folder in ('MNIST_data', cached):
        if holds(folder):
            return folder
    if not download:
        raise DataError('MNIST not found in ./MNIST_data or %s' % cached)
    return download_from_mirrors(
        MNIST_MIRRORS, MNIST_FILES, cached,
        'place the four files (%s) in %s by hand or point $MNIST_DIR or --data-dir at '
        'them' % (', '.join(names), cached))


def load_mnist(data_dir=None):
    """Loads MNIST as TensorFlow's old `input_data` did.

    Returns:
      A dict: images_train (55000, 784), images_validation (5000, 784) and
      images_test (10000, 784), float32 pixels in [0, 1]; labels_* int64 in
      0..9; classes ('0'..'9'). The validation images are the first 5000 of
      the official training file.

    Raises:
      DataError: a file is missing, damaged or cannot be fetched.
    """
    folder = find_mnist(data_dir)
    arrays = {}
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        images = parse_idx(os.path.join(folder, prefix + '-images-idx3-ubyte.gz'),
                           (None, 28, 28))
        labels_file = os.path.join(folder, prefix + '-labels-idx1-ubyte.gz')
        labels = parse_idx(labels_file, (len(images),))
        if not labels.size:
            raise DataError('%s holds no images; the official file has %d' % (
                labels_file.replace('labels-idx1', 'images-idx3'),
                60000 if split == 'train' else 10000))
        if labels.max() > 9:
            raise DataError('%s holds labels outside 0..9' % labels_file)
        scaled = aligned_empty((len(images), 784))
        np.multiply(images.reshape(len(images), 784), np.float32(1 / 255), out=scaled,
                    dtype=np.float32)
        arrays[split] = (scaled, labels.astype(np.int64))
    if len(arrays['train'][0]) <= MNIST_VALIDATION_SIZE:
        raise DataError('%s holds only %d training images; the official file has 60000'
                        % (os.path.join(folder, 'train-images-idx3-ubyte.gz'),
                           len(arrays['train'][0])))
    (train_images, train_labels), (test_images, test_labels) = arrays['train'], arrays['test']
    cut = MNIST_VALIDATION_SIZE
    return {
        'images_train': train_images[cut:], 'labels_train': train_labels[cut:],
        'images_validation': train_images[:cut], 'labels_validation': train_labels[:cut],
        'images_test': test_images, 'labels_test': test_labels,
        'classes': [str(d) for d in range(10)],
    }


def parse_idx(filename, expected_dims):
    """Reads one IDX file (gzip-compressed or not) into a uint8 array.

    The format: two zero bytes, a type byte (0x08 for unsigned bytes), the
    number of dimensions, each dimension as a big-endian int32, then the data.

    Args:
      filename: path of the file.
      expected_dims: the dimensions it must have; None in a position accepts
        any size there.

    Raises:
      DataError: the file is unreadable, truncated or not of that shape.
    """
    try:
        with open(filename, 'rb') as f:
            raw = f.read()
        if raw[:2] == b'\x1f\x8b':
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError('cannot read %s (%s); delete it and download or place it '
                        'again' % (filename, e)) from None
    ndim = len(expected_dims)
    if len(raw) < 4 or raw[:3] != b'\x00\x00\x08' or raw[3] != ndim:
        raise DataError('%s is not an MNIST IDX file of unsigned bytes with %d '
                        'dimensions (magic number %s); delete it and download or '
                        'place it again' % (filename, ndim, raw[:4].hex()))
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError('%s is truncated (no complete header)' % filename)
    dims = tuple(int(d) for d in np.frombuffer(raw, '>i4', ndim, 4))
    if any(want is not None and want != got for want, got in zip(expected_dims, dims)):
        raise DataError('%s has dimensions %s, expected %s' % (
            filename, dims, tuple('any' if d is None else d for d in expected_dims)))
    size = int(np.prod(dims))
    if len(raw) != header + size:
        raise DataError('%s holds %d data bytes, expected %d: the file is truncated '
                        'or damaged' % (filename, len(raw) - header, size))
    return np.frombuffer(raw, np.uint8, size, header).reshape(dims)


# -----------------------------------------------------------------------------
# Drawing batches
# -----------------------------------------------------------------------------

def random_batch(images, labels, batch_size, rng=np.random):
    """Part 1's batch: `batch_size` indices drawn uniformly, with replacement.

    Args:
      images, labels: the training set.
      batch_size: images per batch.
      rng: a numpy Generator or RandomState (np.random by default, as the article).

    Returns:
      (images_batch, labels_batch), copies of the chosen rows.
    """
    if hasattr(rng, 'integers'):
        indices = rng.integers(0, images.shape[0], batch_size)
    else:
        indices = rng.choice(images.shape[0], batch_size)
    return images[indices], labels[indices]


def epoch_indices(count, batch_size, num_iter, rng=np.random):
    """Indices of part 2's batches: shuffled epochs, consecutive batches.

    Every epoch takes a fresh permutation of range(count) and yields
    consecutive, disjoint slices of it; a remainder smaller than `batch_size`
    is dropped, so no index repeats within an epoch.

    Args:
      count: number of images in the training set.
      batch_size: indices per batch (at most `count`).
      num_iter: number of batches to yield.
      rng: a numpy Generator or RandomState.

    Yields:
      int64 arrays of `batch_size` indices.
    """
    if not 0 < batch_size <= count:
        raise ValueError('batch_size must be in 1..%d, not %d' % (count, batch_size))
    position, order = count, None
    for _ in range(num_iter):
        if position + batch_size > count:
            order, position = rng.permutation(count), 0
        yield order[position:position + batch_size]
        position += batch_size


def gen_batch(images, labels, batch_size, num_iter, rng=np.random):
    """Part 2's batch generator: the batches of `epoch_indices`, as arrays.

    (The original zipped images and labels into one numpy array of pairs,
    which numpy 2 refuses; indices do the same job.)

    Yields:
      (images_batch, labels_batch).
    """
    for indices in epoch_indices(images.shape[0], batch_size, num_iter, rng):
        yield images[indices], labels[indices]


def default_device():
    """'/gpu:0' when TensorFlow sees a GPU, else '/cpu:0'."""
    return '/gpu:0' if tf.config.list_physical_devices('GPU') else '/cpu:0'


class InGraphSampler:
    """The training set held once in device memory; batches drawn in the graph.

    The arrays enter the graph as non-trainable variables initialised from a
    placeholder (a graph constant would copy 600 MB into the GraphDef). Each
    `session.run` that needs `images` gathers the rows named by `indices`:
    by default `batch_size` indices drawn with `tf.random.uniform` (with
    replacement, as part 1 does); feed `indices` from `epoch_indices` for part
    2's shuffled epochs. Either way only indices, never images, cross from
    Python per step. Pair the outputs with `tf.placeholder_with_default` so
    the same graph can still be fed images directly.

    Call `initialize(session)` once, after the global variables initializer.
    """

    def __init__(self, images, labels, batch_size, seed=None, device=None):
        self._images, self._labels = images, labels
        with tf.device(device or default_device()), tf.name_scope('in_graph_sampler'):
            self._images_init = tf.placeholder(images.dtype, images.shape, name='images_init')
            self._labels_init = tf.placeholder(labels.dtype, labels.shape, name='labels_init')
            # collections=[]: not part of global_variables_initializer (which
            # would need the feed) nor of the checkpoints.
            images_var = tf.Variable(self._images_init, trainable=False,
                                     collections=[], name='train_images')
            labels_var = tf.Variable(self._labels_init, trainable=False,
                                     collections=[], name='train_labels')
            self._initializers = [images_var.initializer, labels_var.initializer]
            self.indices = tf.placeholder_with_default(
                tf.random.uniform([batch_size], 0, images.shape[0], dtype=tf.int64,
                                  seed=seed), shape=[None], name='indices')
            self.images = tf.gather(images_var, self.indices, name='images_batch')
            self.labels = tf.gather(labels_var, self.indices, name='labels_batch')

    def initialize(self, session):
        """Copies the training set into the graph's variables, once."""
        session.run(self._initializers, feed_dict={
            self._images_init: self._images, self._labels_init: self._labels})
