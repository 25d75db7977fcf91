"""Keep third-party import-time chatter off stderr.

Importing transformers pulls in torchao, which logs a warning for every
optional CUDA kernel library it cannot load ("Failed to load ..._C_mxfp8...")
and registers enums with torch's pytree, which logs a deprecation warning for
each. None of it concerns this project's users, and on a CPU-only install it
makes a clean run look broken and an error's one line no longer the only line.
Those two loggers are raised to ERROR unless the user has configured them
(or asked for them: ``edgetune -v``, or ``EDGETUNE_VERBOSE=1``).
"""

from __future__ import annotations

import logging
import os

# The loggers that print on import and nothing a user can act on.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_third_party(verbose: bool | None = None) -> None:
    """Silence (or, with ``verbose``, restore) the import-time warnings of :data:`NOISY_LOGGERS`.

    Must run before torch or transformers is imported to catch the import-time lines. A logger whose level the
    user set to anything but NOTSET (quiet) or ERROR (verbose) is left alone.
    """
    if verbose is None:
        verbose = bool(os.environ.get("EDGETUNE_VERBOSE"))
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if verbose and logger.level == logging.ERROR:
            logger.setLevel(logging.NOTSET)
        elif not verbose and logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
