"""Accuracy of the native detectors on seeded labelled data (``tests/masking_data.py``).

``Masker.scan_batch`` runs over 10,000 PII-dense rows (about 5 labelled values each) and 10,000
clean rows (realistic look-alikes, no PII).  Per entity: recall (a labelled value counts as found
when detections of the same entity cover all its letters and digits), precision (detections that
overlap a labelled value of their entity) and leaked characters (letters and digits of labelled
values that no detection covers, i.e. what masking would leave visible).

The table is printed (``pytest -s``), attached to each test as the ``mask_accuracy`` property
(``--junitxml``) and written to ``.pytest_cache/d/mask_accuracy/report.txt``.

Floors (never lowered to make a run pass; a miss here is a detector bug to fix): recall >= 0.98
for every entity, PHONE included; at most 0.1% of clean rows with any detection.  The second set,
eight locales in realistic carriers, is ``test_mask_accuracy_world.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import veilgate_native as vn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: masking_data
import masking_data as md

N_ROWS = 10_000
RECALL_FLOORS = {
    "CREDIT_CARD": 0.98,
    "US_SSN": 0.98,
    "EMAIL": 0.98,
    "IBAN": 0.98,
    "IP_ADDRESS": 0.98,
    "PHONE": 0.98,
}
CLEAN_FP_RATE_MAX = 0.001


@pytest.fixture(scope="module")
def dense() -> tuple[md.LabelledRow, ...]:
    return md.dense_rows(N_ROWS)


@pytest.fixture(scope="module")
def clean() -> tuple[str, ...]:
    return md.clean_rows(N_ROWS)


@pytest.fixture(scope="module")
def masker() -> vn.Masker:
    return vn.Masker()  # every built-in entity, default operator


@pytest.fixture(scope="module")
def score(
    request: pytest.FixtureRequest,
    masker: vn.Masker,
    dense: tuple[md.LabelledRow, ...],
    clean: tuple[str, ...],
) -> md.Score:
    dense_found = masker.scan_batch([r.text for r in dense])
    clean_found = masker.scan_batch(list(clean))
    result = md.score(dense, dense_found, clean, clean_found)
    report = f"native detector accuracy ({N_ROWS} dense + {N_ROWS} clean rows)\n{result.table()}"
    print(f"\n{report}")
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        out = cache.mkdir("mask_accuracy") / "report.txt"
        out.write_text(report + "\n\n" + _examples(result) + "\n")
    return result


def _examples(result: md.Score) -> str:
    lines = []
    for name, e in sorted(result.entities.items()):
        lines += [f"missed {name}: {x}" for x in e.missed or ()]
        lines += [f"false {name}: {x}" for x in e.false or ()]
    lines += [f"clean row flagged: {x}" for x in result.clean_examples]
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _attach(request: pytest.FixtureRequest, record_property: Callable[[str, object], None]) -> None:
    # Attach the table to every test of this module that computed it.
    if "score" in request.fixturenames:
        result: md.Score = request.getfixturevalue("score")
        record_property("mask_accuracy", result.table())


# --- the data itself ---------------------------------------------------------------------------


def test_labelled_values_are_valid_by_construction(dense: tuple[md.LabelledRow, ...]) -> None:
    """A miss must be the detector's: every labelled card passes Luhn, every IBAN mod-97, every
    span is where the row says, and each row holds about five values in about 200 bytes."""
    for row in dense:
        assert 4 <= len(row.spans) <= 6, row
        for span in row.spans:
            value = row.value(span)
            assert value == value.strip() and value, (span, row.text)
            if span.entity == "CREDIT_CARD":
                digits = value.replace(" ", "").replace("-", "")
                assert 13 <= len(digits) <= 19 and md.luhn_ok(digits), value
            elif span.entity == "IBAN":
                assert md.iban_ok(value), value
            elif span.entity == "US_SSN":
                assert value[:3] not in ("000", "666") and value[0] != "9", value
    mean_bytes = sum(len(r.text.encode()) for r in dense) / len(dense)
    assert 180 <= mean_bytes <= 260
    entities = {s.entity for r in dense for s in r.spans}
    assert entities == set(md.ALL_ENTITIES)


def test_data_is_deterministic() -> None:
    a = md.dense_rows(50, seed=7)
    md.dense_rows.cache_clear()
    md.clean_rows.cache_clear()
    assert md.dense_rows(50, seed=7) == a
    assert md.clean_rows(50, seed=7) == md.clean_rows(50, seed=7)
    assert md.dense_rows(50, seed=8) != a


# --- the detectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("entity", sorted(RECALL_FLOORS))
def test_recall_floor(score: md.Score, entity: str) -> None:
    e = score.entities[entity]
    assert e.labelled > 1000
    missed = "\n  ".join(e.missed or ())
    assert e.recall >= RECALL_FLOORS[entity], (
        f"{entity} recall {e.recall:.4f} < {RECALL_FLOORS[entity]} "
        f"({e.labelled - e.found} of {e.labelled} missed), e.g.:\n  {missed}"
    )


def test_clean_rows_false_positive_rate(score: md.Score) -> None:
    examples = "\n  ".join(score.clean_examples)
    assert score.clean_fp_rate <= CLEAN_FP_RATE_MAX, (
        f"{score.clean_rows_flagged} of {score.clean_rows} clean rows flagged "
        f"({score.clean_fp_rate:.3%} > {CLEAN_FP_RATE_MAX:.1%}), e.g.:\n  {examples}"
    )


def test_masking_hides_what_scanning_finds(
    score: md.Score, masker: vn.Masker, dense: tuple[md.LabelledRow, ...]
) -> None:
    """``mask_batch`` applies what ``scan_batch`` reports: a labelled value whose letters and
    digits are all covered by detections never survives verbatim in the masked row, and the
    values that do survive are no more than the scan's leaks predict."""
    rows = dense[:2000]
    masked = masker.mask_batch([r.text for r in rows])
    found = masker.scan_batch([r.text for r in rows])
    survived_covered = []
    survived = 0
    for row, out, dets in zip(rows, masked, found, strict=True):
        assert out is not None  # the default operator replaces spans; it never nulls a row
        for span in row.spans:
            value = row.value(span)
            covered = all(
                any(s <= i < t for s, t, _ in dets)
                for i in range(span.start, span.end)
                if row.text[i].isalnum()
            )
            if value in out:
                survived += 1
                if covered:
                    survived_covered.append((value, out))
    assert not survived_covered[:5]
    leaked_values = sum(
        1
        for row, dets in zip(rows, found, strict=True)
        for span in row.spans
        if any(
            row.text[i].isalnum() and not any(s <= i < t for s, t, _ in dets)
            for i in range(span.start, span.end)
        )
    )
    assert survived <= leaked_values


def test_scan_batch_agrees_with_scan(masker: vn.Masker, dense: tuple[md.LabelledRow, ...]) -> None:
    rows = [r.text for r in dense[:200]]
    assert masker.scan_batch(rows) == [masker.scan(t) for t in rows]
    assert masker.mask_batch(rows) == [masker.mask(t) for t in rows]


def test_clean_rows_are_left_alone(masker: vn.Masker, clean: tuple[str, ...]) -> None:
    """Rows without findings come back unchanged."""
    found = masker.scan_batch(list(clean[:2000]))
    masked = masker.mask_batch(list(clean[:2000]))
    for text, dets, out in zip(clean[:2000], found, masked, strict=True):
        if not dets:
            assert out == text
