"""Build the Cython relay glue; everything else is declared in pyproject.toml.

Set VEILGATE_DEBUG=1 to compile the Cython modules with invariant checks
(the asyncpg PG_DEBUG idea) and line tracing off-by-default directives relaxed.
"""

import os
import subprocess

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("VEILGATE_DEBUG") == "1"


def _write_commit() -> None:
    """veilgate/_commit.txt: the source commit (veilgate.buildinfo), when built from git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return  # an sdist: keep the file it carries
    with open(os.path.join(here, "python", "veilgate", "_commit.txt"), "w") as f:
        f.write(commit + "\n")


_write_commit()

extensions = [
    Extension(
        "veilgate.gateway._relay",
        ["python/veilgate/gateway/_relay.pyx"],
        # release builds carry no debug info or symbol table (wheels are stripped)
        extra_compile_args=["-O2"] if DEBUG else ["-O2", "-g0"],
        extra_link_args=[] if DEBUG else ["-Wl,-s"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        compile_time_env={"VEILGATE_DEBUG": DEBUG},
    ),
)
