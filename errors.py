"""The one error the project raises for what a user can fix, and safe writes.

* `DataError`: a data set, run folder, flag value or file that is missing,
  corrupt, unusable or cannot be fetched. Its message is one line that names
  the thing and says what to do; every script prints it without a traceback
  (`cli.exit_on_error`).
* `write_file_atomically()`, `current_umask()`: a file written through a
  temporary name, so a killed run never leaves half of one.
* `error_line()`: the one line of an error's message that says what went
  wrong, for the one-line report; `short_list()`: a long list of names in it.
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


def error_line(error):
    """The line of an error's message that says what went wrong, for a
    one-line report: for TensorFlow's graph errors the line before their
    '[[{{node ...}}]]', else the first line."""
    text = getattr(error, 'message', None) or getattr(error, 'strerror', None) or str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    ends = [i for i, line in enumerate(lines) if line.startswith('[[')]
    if ends and ends[0] > 0:
        return lines[ends[0] - 1][:160]
    return (lines[0] if lines else type(error).__name__)[:160]


def short_list(names, shown=4):
    """A list of names short enough for a one-line report.

    Args:
      names: the names, in their order.
      shown: how many to name.

    Returns:
      'a, b, c, d, ... (10 in all)', or all of them when there are no more
      than `shown`.
    """
    names = list(names)
    return ', '.join(names[:shown]) + (', ... (%d in all)' % len(names)
                                       if len(names) > shown else '')
