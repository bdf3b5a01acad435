"""Build the Cython relay glue; everything else is declared in pyproject.toml.

Set VEILGATE_DEBUG=1 to compile the Cython modules with invariant checks
(the asyncpg PG_DEBUG idea) and line tracing off-by-default directives relaxed.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("VEILGATE_DEBUG") == "1"

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
