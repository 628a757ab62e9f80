"""What TensorFlow and LiteRT print from C++ straight to the process's stderr (file descriptor 2,
out of Python's reach), filtered: the lines nobody can act on are dropped, every other line is
passed on once the block ends.

Example::

    with filtered_stderr():
        import tensorflow       # no "oneDNN custom operations are on", no "failed call to cuInit"

With logging at INFO (``fruits -v``) nothing is filtered. Limitations: while the block runs, what
other threads write to stderr is held back until it ends (then written, unless it is noise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# Start-up notices of TensorFlow, XLA and LiteRT on a machine without a GPU.
NOISE = re.compile(
    "|".join(
        [
            r"oneDNN custom operations are on",
            r"Could not find cuda drivers",
            r"failed call to cuInit",
            r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            r"Created TensorFlow Lite XNNPACK delegate for CPU",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"TF-TRT Warning",
            r"This TensorFlow binary is optimized to use available CPU instructions",
            r"To enable the following instructions",
            r"computation placer already registered",
            r"cudart_stub\.cc",
            r"cuda_(platform|executor|dnn|fft|blas)\.cc",
        ]
    )
)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Hold file descriptor 2 for the block; then write back what it got, less ``NOISE``."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [
                line
                for line in held.read().decode(errors="replace").splitlines(keepends=True)
                if not NOISE.search(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
