"""downloads.py: progress, md5, mirrors, safe extraction, atomic writes."""

import hashlib
import io
import os
import tarfile
import time

import pytest

import downloads
import errors
from conftest import IMAGES_PER_BATCH
from data_helpers import load_data
from errors import DataError

TRAIN = 5 * IMAGES_PER_BATCH


def test_download_extracts_and_loads(served_cifar10, tmp_path, capsys):
    url, md5 = served_cifar10
    folder = str(tmp_path / 'cache')
    result = downloads.download_and_extract(url, md5, folder, 'cifar-10-batches-py')
    assert result == os.path.join(folder, 'cifar-10-batches-py')
    assert sorted(os.listdir(folder)) == ['cifar-10-batches-py']   # no leftovers
    assert load_data(result)['images_train'].shape == (TRAIN, 3072)
    assert '100%' in capsys.readouterr().err                       # progress shown


def test_md5_mismatch_is_an_error_and_leaves_nothing(served_cifar10, tmp_path):
    url, _ = served_cifar10
    folder = tmp_path / 'cache'
    with pytest.raises(DataError, match='md5 .* expected 0{32}: the file is damaged'):
        downloads.download_and_extract(url, '0' * 32, str(folder), 'cifar-10-batches-py')
    assert list(folder.iterdir()) == []


def test_unreachable_server_is_one_clear_error(tmp_path, unused_url):
    folder = tmp_path / 'cache'
    with pytest.raises(DataError) as error:
        downloads.download_and_extract(unused_url, '0' * 32, str(folder),
                                       'cifar-10-batches-py', by_hand='place it by hand')
    message = str(error.value)
    assert message.startswith('cannot download ' + unused_url) and '\n' not in message
    assert message.endswith('; place it by hand')
    assert list(folder.iterdir()) == []


def test_mirrors_are_tried_in_order_and_present_files_kept(http_server, tmp_path,
                                                           unused_url):
    root, base_url = http_server
    (root / 'a.bin').write_bytes(b'first file')
    (root / 'b.bin').write_bytes(b'second file')
    md5s = {name: hashlib.md5((root / name).read_bytes()).hexdigest()
            for name in ('a.bin', 'b.bin')}
    folder = tmp_path / 'files'
    folder.mkdir()
    (folder / 'b.bin').write_bytes(b'already here')      # not fetched again
    downloads.download_from_mirrors([unused_url + '/', base_url + '/'], md5s, str(folder),
                                    'by hand')
    assert (folder / 'a.bin').read_bytes() == b'first file'
    assert (folder / 'b.bin').read_bytes() == b'already here'
    with pytest.raises(DataError, match=r'c\.bin.*; by hand$'):
        downloads.download_from_mirrors([base_url + '/'], {'c.bin': '0' * 32},
                                        str(folder), 'by hand')
    assert sorted(os.listdir(folder)) == ['a.bin', 'b.bin']


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    tmp_path = tmp_path / 'out'
    tmp_path.mkdir()
    path = tmp_path / 'result.json'
    errors.write_file_atomically(str(path), b'first')
    errors.write_file_atomically(str(path), b'second')
    assert path.read_bytes() == b'second'
    assert os.listdir(tmp_path) == ['result.json']
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask       # not mkstemp's 0600
    with pytest.raises(IsADirectoryError):                     # a failed write ...
        errors.write_file_atomically(str(tmp_path), b'x')
    assert os.listdir(tmp_path) == ['result.json']              # ... leaves nothing


def _tar_with(path, member, link=None):
    with tarfile.open(path, 'w:gz') as tar:
        info = tarfile.TarInfo(member)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = 5
            tar.addfile(info, io.BytesIO(b'hello'))
    return path


@pytest.mark.parametrize('member, link', [
    ('../escaped.txt', None),
    ('cifar-10-batches-py/../../escaped.txt', None),
    ('/tmp/absolute.txt', None),
    ('cifar-10-batches-py/link', '../../outside'),
])
def test_unsafe_tar_members_are_refused(tmp_path, member, link):
    archive = _tar_with(str(tmp_path / 'evil.tar.gz'), member, link)
    target = tmp_path / 'target'
    with pytest.raises(DataError, match='refusing to extract'):
        downloads.safe_extract(archive, str(target))
    assert not (tmp_path / 'escaped.txt').exists()
    assert not target.exists() or list(target.iterdir()) == []


def test_corrupt_archive_is_one_clear_error(tmp_path):
    archive = tmp_path / 'broken.tar.gz'
    archive.write_bytes(b'\x1f\x8b not really gzip')
    with pytest.raises(DataError, match='broken.tar.gz is not a readable tar'):
        downloads.safe_extract(str(archive), str(tmp_path / 'target'))


def test_what_a_killed_download_left_is_cleaned_up(served_cifar10, tmp_path):
    url, md5 = served_cifar10
    folder = tmp_path / 'cache'
    folder.mkdir()
    stale_part = folder / '.cifar-10-python.tar.gz.abc123.part'
    stale_part.write_bytes(b'\0' * 1000)
    stale_work = folder / '.download-xyz'
    (stale_work / 'unpacked').mkdir(parents=True)
    (stale_work / 'cifar-10-python.tar.gz').write_bytes(b'\0' * 1000)
    live_part = folder / '.other.tar.gz.def456.part'       # another download, still going
    live_part.write_bytes(b'\0')
    old = time.time() - downloads.STALE_SECONDS - 60
    for path in (stale_part, stale_work, stale_work / 'unpacked',
                 stale_work / 'cifar-10-python.tar.gz'):
        os.utime(path, (old, old))
    downloads.download_and_extract(url, md5, str(folder), 'cifar-10-batches-py')
    downloads.download_file(url, md5, str(folder / 'cifar-10-python.tar.gz'))
    assert sorted(os.listdir(folder)) == sorted(
        ['cifar-10-batches-py', 'cifar-10-python.tar.gz', live_part.name])
