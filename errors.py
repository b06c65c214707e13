"""The one error the project raises for what a user can fix, and safe writes.

* `DataError`: a data set, run folder, flag value or file that is missing,
  corrupt, unusable or cannot be fetched. Its message is one line that names
  the thing and says what to do; every script prints it without a traceback
  (`cli.exit_on_error`).
* `write_file_atomically()`, `current_umask()`: a file written through a
  temporary name, so a killed run never leaves half of one.
"""

import os
import tempfile


class DataError(Exception):
    """A data set, run folder or file that is missing, corrupt or cannot be fetched.

    Its message is one line that names the file or URL and says what to do;
    the scripts print it without a traceback.
    """


def current_umask():
    """The process's umask (reading it means setting it, then putting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_file_atomically(path, data):
    """Writes bytes to `path` through a temporary name, so no half file remains."""
    folder = os.path.dirname(path) or '.'
    fd, temporary = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.chmod(temporary, 0o666 & ~current_umask())    # mkstemp's 0600 is for secrets
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
