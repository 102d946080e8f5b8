"""Logging for rule scripts: to the rule's log file and to stderr, with failures written to both."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


@contextlib.contextmanager
def script_logging(log_path: str | Path):
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handlers = [logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
    try:
        yield logging.getLogger("llmbench")
    except BaseException as e:
        logging.getLogger("llmbench").error("%s: %s", type(e).__name__, e)
        raise
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
