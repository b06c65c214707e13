"""Writes CIFAR-10 out as a folder of class folders of PNG files, lossless:

    OUT/train/<class>/<index>.png   (50,000: data_batch_1..5 in order)
    OUT/test/<class>/<index>.png    (10,000: test_batch in order)

The class folders are the official names (airplane, automobile, ...), whose
sorted order is CIFAR-10's label order, so a run on the folder and a run on
the pickles mean the same class by the same index. For the benchmarks and the
real-data tests of the folder path (`image_folders.py`).

    python benchmarks/write_cifar10_folders.py OUT [--data-dir DIR] [--per-class N]
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_helpers import load_raw, to_nhwc  # noqa: E402

NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
         'truck']


def write_split(folder, images, labels, per_class=None):
    """Writes images [N, 32, 32, 3] as folder/<class>/<index>.png; with
    per_class, only the first that many of each class."""
    written = np.zeros(len(NAMES), int)
    for index, (image, label) in enumerate(zip(images, labels)):
        if per_class is not None and written[label] >= per_class:
            continue
        target = os.path.join(folder, NAMES[label])
        os.makedirs(target, exist_ok=True)
        Image.fromarray(image).save(os.path.join(target, '%05d.png' % index))
        written[label] += 1
    return int(written.sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', help='folder to write (train/ and test/ go in it)')
    parser.add_argument('--data-dir', help='where cifar-10-batches-py is (default: as the '
                        'scripts find it)')
    parser.add_argument('--per-class', type=int, help='only the first N pictures of each '
                        'class in each split')
    args = parser.parse_args()
    train_images, train_labels, test_images, test_labels = load_raw(args.data_dir)
    count = write_split(os.path.join(args.out, 'train'), to_nhwc(train_images), train_labels,
                        args.per_class)
    count += write_split(os.path.join(args.out, 'test'), to_nhwc(test_images), test_labels,
                         args.per_class)
    print('Wrote %d PNG files into %s' % (count, args.out))


if __name__ == '__main__':
    main()
