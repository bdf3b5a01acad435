"""Which statement texts read differently with standard_conforming_strings on and off."""

from __future__ import annotations

import pytest

from veilgate.gateway.masking import scs_dependent


@pytest.mark.parametrize(
    ("text", "dependent"),
    [
        ("select 1", False),
        ("select 'plain', 'it''s'", False),
        ("select E'a\\nb', $$c\\d$$, \"e\\f\"", False),  # escape strings, dollar quotes, idents
        ("select 1 -- a \\ comment", False),
        ("select 'a\\b'", True),
        ("select N'a\\b'", True),
        ("select 'a\\'', ssn from t --', 1", True),
        ("select 'é\\'", True),  # offsets are characters, not bytes
        ("select 'unterminated \\", True),  # cannot be read: counts as dependent
    ],
)
def test_scs_dependent(text: str, dependent: bool) -> None:
    assert scs_dependent(text) is dependent
