"""What was built: version, source commit, native engine version (``veilgate_build_info``,
``GET /v1/admin/config``, ``veilgate version``).

The commit is written into ``veilgate/_commit.txt`` by ``setup.py`` when the package is built
from a git checkout (wheels, editable installs); ``unknown`` otherwise.
"""

from __future__ import annotations

import functools
import platform
from importlib import resources

from veilgate import __version__

__all__ = ["build_info"]


@functools.cache
def build_info() -> dict[str, str]:
    try:
        commit = (resources.files("veilgate") / "_commit.txt").read_text().strip() or "unknown"
    except (OSError, ValueError):
        commit = "unknown"
    try:
        import veilgate_native

        native = str(getattr(veilgate_native, "__version__", "unknown"))
    except ImportError:
        native = "missing"
    return {
        "version": __version__,
        "commit": commit,
        "native_version": native,
        "python": platform.python_version(),
    }
