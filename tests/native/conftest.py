"""Fixtures for the native engine's tests.

Hypothesis profiles: the top-level ``tests/conftest.py`` registers ``ci`` (the default) and
``dev``; when this directory runs on its own, the same profiles are registered here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import settings
from hypothesis.errors import InvalidArgument

# `reference_framer` sits next to the tests (no package: pytest's default import mode).
sys.path.insert(0, str(Path(__file__).parent))

try:
    settings.get_profile("ci")
except InvalidArgument:
    settings.register_profile("ci", max_examples=50, deadline=None)
    settings.register_profile("dev", max_examples=10, deadline=None)
    settings.register_profile("slow", max_examples=1000, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
