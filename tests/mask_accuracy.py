"""Print the masking detectors' accuracy tables: ``python tests/mask_accuracy.py [--examples N]``.

Two sets: the first (``masking_data``: PII-dense rows and clean rows the detectors were tuned on)
and the second (``masking_data_world``: eight locales, five carriers, a clean look-alike set,
written before the detectors were changed for it).  Per entity (and per locale for the second):
recall, precision and leaked characters; clean rows with any detection.  The floors are asserted
by ``tests/native/test_mask_accuracy.py`` and ``tests/native/test_mask_accuracy_world.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import masking_data as md
import masking_data_world as mw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=0, help="missed / false examples to show")
    args = ap.parse_args()
    import veilgate_native as vn

    masker = vn.Masker()
    dense, clean = md.dense_rows(10_000), md.clean_rows(10_000)
    first = md.score(
        dense,
        masker.scan_batch([r.text for r in dense]),
        clean,
        masker.scan_batch(list(clean)),
    )
    print("first set (masking_data: 10,000 dense + 10,000 clean rows)")
    print(first.table())
    rows, wclean = mw.labelled_rows(), mw.clean_rows()
    second = mw.score_world(
        rows,
        masker.scan_batch([r.text for r in rows]),
        wclean,
        masker.scan_batch([t for _, t in wclean]),
    )
    print(f"\nsecond set (masking_data_world: {len(rows)} labelled + {len(wclean)} clean rows)")
    print(second.table())
    if args.examples:
        for locale, s in second.by_locale.items():
            for name, e in s.entities.items():
                for x in (e.missed or [])[: args.examples]:
                    print(f"missed [{locale}] {name}: {x}")
                for x in (e.false or [])[: args.examples]:
                    print(f"false [{locale}] {name}: {x}")
        for x in second.clean_examples[: args.examples * 4]:
            print(f"clean row flagged: {x}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
