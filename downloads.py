"""Fetching data sets safely: the cache folder, downloads, extraction.

* `cache_dir()`: where downloads go ($XDG_CACHE_HOME or ~/.cache).
* `download_file()`: one URL to one file, with progress and an md5 check.
* `download_from_mirrors()`: several files, each from the first mirror that has it.
* `safe_extract()`, `download_and_extract()`: a tar archive unpacked so that
  no member lands outside the target folder.

Every write goes through a temporary name that is renamed only when complete,
so an interrupted run never leaves a half-written file behind; what a killed
download leaves under its temporary name is removed by the next one.
"""

import glob
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

from errors import DataError


def cache_dir():
    """The per-user folder where downloads go: $XDG_CACHE_HOME or ~/.cache."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
        os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'tf-image-recognition')


# -----------------------------------------------------------------------------
# Downloads
# -----------------------------------------------------------------------------

def _progress(name, done, total):
    if total:
        text = '\rDownloading %s: %3d%% (%.1f of %.1f MB)' % (
            name, 100 * done // total, done / 1e6, total / 1e6)
    else:
        text = '\rDownloading %s: %.1f MB' % (name, done / 1e6)
    sys.stderr.write(text)
    sys.stderr.flush()


STALE_SECONDS = 3600   # a download writes every MiB it gets; untouched an hour, it was killed


def remove_stale(folder, pattern):
    """Deletes what killed downloads left in `folder`: entries matching the glob
    `pattern` in which nothing has been written for STALE_SECONDS."""
    for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
        try:
            times = [os.path.getmtime(path)] + [
                os.path.getmtime(os.path.join(root, name))
                for root, _, names in os.walk(path) for name in names]
            if time.time() - max(times) > STALE_SECONDS:
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
        except OSError:      # removed meanwhile by its own process
            pass


def download_file(url, md5, path, timeout=30):
    """Downloads `url` to `path`, showing progress, and checks its md5.

    The bytes go to a temporary file beside `path` that is renamed only once
    the md5 matches; on any failure it is removed.

    Raises:
      DataError: the server cannot be reached or the md5 does not match.
    """
    folder = os.path.dirname(path) or '.'
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    remove_stale(folder, '.' + name + '.*.part')
    fd, partial = tempfile.mkstemp(prefix='.' + name + '.', suffix='.part', dir=folder)
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, 'wb') as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get('Content-Length') or 0)
                    done = 0
                    while True:
                        chunk = response.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        _progress(name, done, total)
                sys.stderr.write('\n')
            except (urllib.error.URLError, http.client.HTTPException, OSError,
                    ValueError) as e:
                reason = getattr(e, 'reason', None) or e
                raise DataError('cannot download %s (%s)' % (url, reason)) from None
        if digest.hexdigest() != md5:
            raise DataError('%s downloaded with md5 %s, expected %s: the file is '
                            'damaged or not the official one'
                            % (url, digest.hexdigest(), md5))
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def download_from_mirrors(mirrors, files, folder, by_hand):
    """Downloads each file not yet in `folder` from the first mirror that serves it.

    Args:
      mirrors: base URLs ending in '/', tried in order.
      files: {file name: md5}.
      folder: where the files go.
      by_hand: what the user can do instead, appended to the error.

    Raises:
      DataError: some file could be fetched from no mirror.
    """
    for name, md5 in files.items():
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            continue
        errors = []
        for mirror in mirrors:
            try:
                download_file(mirror + name, md5, path)
                break
            except DataError as e:
                errors.append(str(e))
        else:
            raise DataError('%s; %s' % ('; '.join(errors), by_hand))
    return folder


# -----------------------------------------------------------------------------
# Extraction
# -----------------------------------------------------------------------------

def safe_extract(archive, target):
    """Extracts a tar archive into `target`, refusing members that would land
    outside it (absolute paths, `..`, links pointing out, devices).

    Raises:
      DataError: the archive is unreadable or holds an unsafe member.
    """
    root = os.path.realpath(target)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                dest = os.path.realpath(os.path.join(root, member.name))
                unsafe = os.path.commonpath([root, dest]) != root
                if member.islnk() or member.issym():
                    link = os.path.realpath(os.path.join(
                        root if member.islnk() else os.path.dirname(dest),
                        member.linkname))
                    unsafe = unsafe or os.path.commonpath([root, link]) != root
                if unsafe or member.isdev():
                    raise DataError('%s: refusing to extract member %r, which '
                                    'would land outside %s'
                                    % (archive, member.name, target))
            if hasattr(tarfile, 'data_filter'):   # Python >= 3.11.4
                tar.extractall(target, members=members, filter='data')
            else:
                tar.extractall(target, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError('%s is not a readable tar archive (%s); delete it and '
                        'download again' % (archive, e)) from None


def download_and_extract(url, md5, folder, member, by_hand=''):
    """Downloads and extracts an archive so that `folder/member` appears whole.

    Args:
      url, md5: the archive and its checksum.
      folder: where `member` should appear.
      member: the folder inside the archive that is kept.
      by_hand: what the user can do instead, appended to any error.

    Returns:
      The path `folder/member`.
    """
    os.makedirs(folder, exist_ok=True)
    remove_stale(folder, '.download-*')
    work = tempfile.mkdtemp(prefix='.download-', dir=folder)
    try:
        archive = download_file(url, md5, os.path.join(work, os.path.basename(url)))
        unpacked = os.path.join(work, 'unpacked')
        safe_extract(archive, unpacked)
        if not os.path.isdir(os.path.join(unpacked, member)):
            raise DataError('%s holds no %s/ folder' % (url, member))
        final = os.path.join(folder, member)
        os.replace(os.path.join(unpacked, member), final)
        return final
    except DataError as e:
        if not by_hand:
            raise
        raise DataError('%s; %s' % (e, by_hand)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
