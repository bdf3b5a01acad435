"""bench/mask_bench.py: the Python ``re`` baseline is a fair masker (it finds what the labelled
data holds and rejects look-alikes), the throughput and summary helpers, the masking smoke check's
judgement, and the bench policy (loads, lints clean, allows the workload, masks the right
columns; its masking-off twin differs only in the masking section)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mb() -> ModuleType:
    for p in (BENCH, TESTS):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    import mask_bench

    return mask_bench


# --- the Python re baseline --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("card 4111 1111 1111 1111, thanks", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("mc 2221000000000009.", "CREDIT_CARD", "2221000000000009"),
        ("amex 3782-822463-10005 on file", "CREDIT_CARD", "3782-822463-10005"),
        ("ssn 123-45-6789;", "US_SSN", "123-45-6789"),
        ("reply to <ada.l+x@mail.example.co.uk>", "EMAIL", "ada.l+x@mail.example.co.uk"),
        ("IBAN DE89 3704 0044 0532 0130 00 SSN", "IBAN", "DE89 3704 0044 0532 0130 00"),
        ("refund GB82WEST12345698765432.", "IBAN", "GB82WEST12345698765432"),
        ("from 192.168.10.254. Then", "IP_ADDRESS", "192.168.10.254"),
        ("src=[2001:db8:85a3::8a2e:370:7334]", "IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"),
        ("call (415) 555-0132 now", "PHONE", "(415) 555-0132"),
        ("tel. +1 415 555 0132", "PHONE", "+1 415 555 0132"),
        ("mobile +4915112345678", "PHONE", "+4915112345678"),
        ("aws_access_key_id=AKIAIOSFODNN7EXAMPLE", "SECRET", "AKIAIOSFODNN7EXAMPLE"),
    ],
)
def test_python_baseline_finds(mb: ModuleType, text: str, entity: str, value: str) -> None:
    m = mb.PyReMasker()
    start = text.index(value)
    assert m.scan(text) == [(start, start + len(value), entity)]
    assert m.mask(text) == text.replace(value, f"<{entity}>")


@pytest.mark.parametrize(
    "text",
    [
        "ref 4111 1111 1111 1112 (Luhn fails)",
        "epoch 1764409082123 ms",  # Luhn may pass, issuer 17 does not exist
        "ssn 666-45-6789 and 123-00-6789",
        "IBAN DE89 3704 0044 0532 0130 01",  # bad check digits
        "PN 152.531.8509",  # NANP area codes never start with 1
        "at 09:38:02 on device 60:7a:cc:6e:30:d7",
        "build 124.0.6891.140, id 56526947-7826-4945-88e6-f93cf9c90341",
        "sku 3124-555-0199, zip 94103-1234, $1,299.99",
    ],
)
def test_python_baseline_rejects(mb: ModuleType, text: str) -> None:
    m = mb.PyReMasker()
    assert m.scan(text) == []
    assert m.mask(text) == text


def test_python_baseline_is_a_fair_competitor(mb: ModuleType) -> None:
    """The baseline must really mask the dense set (a baseline that misses values would look
    faster than it is) and leave the clean set alone."""
    import masking_data as md

    dense, clean = md.dense_rows(1000), md.clean_rows(1000)
    m = mb.PyReMasker()
    s = md.score(dense, [m.scan(r.text) for r in dense], clean, [m.scan(t) for t in clean])
    for name in md.DETECTED_ENTITIES:
        assert s.entities[name].recall >= 0.98, (name, s.table())
    assert s.clean_fp_rate <= 0.002, s.table()
    assert mb.values_leaked(dense, m.mask_batch([r.text for r in dense])) <= 10


def test_card_issuer_ranges(mb: ModuleType) -> None:
    assert mb.card_issuer_ok("2720" + "0" * 12)
    assert not mb.card_issuer_ok("2721" + "0" * 12)
    assert mb.card_issuer_ok("34" + "0" * 13)
    assert not mb.card_issuer_ok("34" + "0" * 14)  # Amex is 15 digits
    assert mb.card_issuer_ok("4" + "0" * 12) and not mb.card_issuer_ok("4" + "0" * 13)
    assert not mb.card_issuer_ok("17" + "0" * 11)


# --- measurement helpers -----------------------------------------------------------------------


def test_throughput_uses_the_median_pass(mb: ModuleType) -> None:
    mb_s, rows_s = mb.throughput(2_000_000, 10_000, [1.0, 4.0, 2.0])
    assert (mb_s, rows_s) == (1.0, 5_000.0)
    with pytest.raises(mb.BenchError):
        mb.throughput(1, 1, [0.0])


def test_interleaved_passes_take_turns(mb: ModuleType) -> None:
    calls: list[str] = []

    def engine(name: str) -> object:
        return lambda texts: calls.append(f"{name}:{len(texts)}")

    times = mb.interleaved_passes({"a": (engine("a"), ["x"] * 2, 3), "b": (engine("b"), ["y"], 1)})
    assert [len(times["a"]), len(times["b"])] == [3, 1]
    assert all(t >= 0 for t in times["a"] + times["b"])
    # one warm-up each, then a, b, a, a
    assert calls == ["a:2", "b:1", "a:2", "b:1", "a:2", "a:2"]


def test_utf8_bytes_counts_bytes_not_characters(mb: ModuleType) -> None:
    assert mb.utf8_bytes(["ab", "é"]) == 4


def test_values_leaked(mb: ModuleType) -> None:
    import masking_data as md

    row = md.LabelledRow(
        "a 123-45-6789 b x@y.io", (md.Span(2, 13, "US_SSN"), md.Span(16, 22, "EMAIL"))
    )
    assert mb.values_leaked([row], ["a <US_SSN> b x@y.io"]) == 1
    assert mb.values_leaked([row], [None]) == 0  # None: the value was nulled
    assert mb.values_leaked([row], ["a <US_SSN> b <EMAIL>"]) == 0


def test_engine_table_shows_speedups(mb: ModuleType) -> None:
    rows = [
        mb.EngineRow("engine-dense", "native", 100.0, 5e5, 10, 2000, 3, 0),
        mb.EngineRow("engine-dense", "python-re", 2.5, 1e4, 10, 2000, 3, 0),
        mb.EngineRow("engine-dense", "presidio", 0.02, 100, 10, 2000, 3, 4),
    ]
    table = mb.engine_table(rows)
    assert "40x" in table and "5,000x" in table
    assert rows[0].as_json() == {
        "workload": "engine-dense",
        "target": "native",
        "mb_s": 100.0,
        "rows_s": 500000.0,
        "rows": 10,
        "bytes": 2000,
        "runs": 3,
        "values_leaked": 0,
    }


def test_mask_table_ratio_and_bar(mb: ModuleType) -> None:
    s = mb.harness.Sample
    samples = [
        s("large-c1", "veilgate", 1, 90.0, 10.0, 20.0, 900.0),
        s("large-c1", "veilgate-nomask", 1, 100.0, 9.0, 18.0, 600.0),
        s("large-c8", "veilgate", 1, 70.0, 10.0, 20.0, 900.0),
        s("large-c8", "veilgate-nomask", 1, 100.0, 9.0, 18.0, 600.0),
    ]
    table = mb.mask_table(samples, mb.DEFAULT_TARGETS)
    assert re.search(r"on/off\s+tps 0\.900", table) and "tps 0.700" in table
    assert "(+300.0 µs/txn)" in table
    assert table.splitlines()[-1].endswith("worst TPS ratio 0.700; bar >= 0.80x -> BELOW")
    good = [x for x in samples if x.workload == "large-c1"]
    assert mb.mask_table(good, mb.DEFAULT_TARGETS).endswith("-> meets")
    cols = [s("large-c1", "veilgate-columns", 1, 95.0, 9.5, 19.0, 700.0)]
    table = mb.mask_table(samples + cols, mb.MASK_TARGETS)
    assert re.search(r"columns/off\s+tps 0\.950", table)
    assert "veilgate-columns / veilgate-nomask: worst TPS ratio 0.950" in table


def test_parse_masked_metrics(mb: ModuleType) -> None:
    text = (
        "# HELP veilgate_masked_values_total Result values masked in flight\n"
        "# TYPE veilgate_masked_values_total counter\n"
        'veilgate_masked_values_total{entity="COLUMN"} 3000.0\n'
        'veilgate_masked_values_total{entity="EMAIL"} 250\n'
        'veilgate_policy_decisions_total{action="allow"} 7\n'
    )
    assert mb.parse_masked_metrics(text) == {"COLUMN": 3000.0, "EMAIL": 250.0}
    assert mb.parse_masked_metrics("") == {}


# --- the masking smoke check -------------------------------------------------------------------

RAW = [
    ["1", "5555555555554444", "grace.thompson1@example.com", "DE01000000002654435761", "x"],
    [
        "4",
        "4111111111111111",
        "e@example.com",
        "DE04000000010617743044",
        "ask ada@mail.example.org",
    ],
]


def test_masking_problems_masking_on(mb: ModuleType) -> None:
    good = [
        ["1", "************4444", "3f9a0c", "<IBAN>", "x"],
        ["4", "************1111", "77aa01", "<IBAN>", "ask <EMAIL>"],
    ]
    assert mb.masking_problems(RAW, good, "on") == []
    assert mb.masking_problems(RAW, RAW, "on") == [
        "card_number is not partially masked (keep_last 4)",
        "email is not masked",
        "iban is not masked",
        "the e-mail address in notes was not found by content scanning",
    ]
    assert mb.masking_problems(RAW, good[:1], "on")  # a row missing


def test_masking_problems_columns_only(mb: ModuleType) -> None:
    cols = [
        ["1", "************4444", "3f9a0c", "<IBAN>", "x"],
        ["4", "************1111", "77aa01", "<IBAN>", RAW[1][4]],
    ]
    assert mb.masking_problems(RAW, cols, "columns") == []
    scanned = [cols[0], [*cols[1][:4], "ask <EMAIL>"]]
    assert mb.masking_problems(RAW, scanned, "columns") == [
        "notes changed although content scanning is off"
    ]
    assert mb.masking_problems(RAW, cols, "on") == [
        "the e-mail address in notes was not found by content scanning"
    ]


def test_masking_problems_masking_off(mb: ModuleType) -> None:
    assert mb.masking_problems(RAW, RAW, "off") == []
    changed = [RAW[0], [*RAW[1][:4], "ask <EMAIL>"]]
    assert mb.masking_problems(RAW, changed, "off") == [
        "values differ from PostgreSQL's with masking off"
    ]


def test_problems_never_quote_values(mb: ModuleType) -> None:
    text = " ".join(mb.masking_problems(RAW, RAW, "on"))
    assert "5555" not in text and "grace" not in text and "DE01" not in text


# --- the bench policy --------------------------------------------------------------------------


def test_mask_policy_lints_clean_and_allows_the_workload(mb: ModuleType) -> None:
    from veilgate.policy.cli import lint_main

    out = io.StringIO()
    assert lint_main([str(mb.MASK_POLICY), "--strict"], out=out) == 0, out.getvalue()
    mb.check_policy_loads()  # raises if the large workload's SELECT is not allowed


def test_mask_policy_masks_the_workload_columns(mb: ModuleType) -> None:
    from veilgate.policy.loader import load_policy

    masking = load_policy(mb.MASK_POLICY).masking
    assert masking is not None and masking.uses_hash
    assert masking.hash_key_env == mb.MASK_KEY_ENV
    tier = masking.for_tier("readonly")
    assert tier is not None

    def rule(col: str) -> str:
        r = tier.column_rule("public", "bench_customers", col)
        assert r is not None, col
        return "scan" if r.op is None else r.op.kind

    assert rule("card_number") == "partial"
    assert rule("email") == "hash"
    assert rule("iban") == "replace"
    assert rule("id") == "keep"
    assert {rule(c) for c in ("notes", "full_name", "phone")} == {"scan"}
    assert tier.name_rule("user_password") is not None


def test_policy_variants_differ_only_in_masking(mb: ModuleType, tmp_path: Path) -> None:
    from veilgate.policy.loader import load_policy

    assert mb.policy_variant(mb.MASK_POLICY, tmp_path / "x.yaml", "on") == mb.MASK_POLICY
    on = load_policy(mb.MASK_POLICY)
    off = load_policy(mb.policy_variant(mb.MASK_POLICY, tmp_path / "off.yaml", "off"))
    cols = load_policy(mb.policy_variant(mb.MASK_POLICY, tmp_path / "cols.yaml", "columns"))
    assert off.masking is None
    for other in (off, cols):
        assert [t.name for t in other.tiers] == [t.name for t in on.tiers]
        assert [r.id for r in other.tiers[0].rules] == [r.id for r in on.tiers[0].rules]
    assert on.masking is not None and cols.masking is not None
    assert not cols.masking.scan_unknown
    assert [r.pattern for r in cols.masking.columns] == [
        r.pattern for r in on.masking.columns if r.op is not None
    ]
    with pytest.raises(mb.BenchError):
        mb.policy_variant(mb.MASK_POLICY, tmp_path / "y.yaml", "half")


def test_mask_subcommand_is_registered(mb: ModuleType) -> None:
    import run

    with pytest.raises(SystemExit) as exc:
        run.main(["mask", "--help"])
    assert exc.value.code == 0
    assert mb.parse_mask_targets("veilgate-nomask,veilgate") == ["veilgate-nomask", "veilgate"]
    with pytest.raises(mb.BenchError):
        mb.parse_mask_targets("direct")
    with pytest.raises(mb.BenchError):
        mb.parse_engine_targets("native,spacy")


# --- the CPU / instruction measure (mask --part cpu) -------------------------------------------


def test_cpu_table_gives_extra_instructions_per_row(mb: ModuleType) -> None:
    import mask_cpu

    rows = [
        mask_cpu.CpuRow("veilgate-nomask", 60, 300.0, 2_300_000.0),
        mask_cpu.CpuRow("veilgate", 60, 1400.0, 18_100_000.0),
        mask_cpu.CpuRow("veilgate-columns", 60, 900.0, None),
    ]
    table = mask_cpu.cpu_table(rows, "veilgate-nomask")
    lines = table.splitlines()
    assert re.search(r"veilgate\s+60\s+1400\.0\s+18,100,000\s+18,100\s+15,800$", lines[3])
    assert re.search(r"veilgate-nomask .* 2,300\s+0$", lines[2])
    assert lines[4].split()[3:] == ["-", "-"]  # no count: no ratio either
    assert rows[1].as_json()["instructions_per_txn"] == 18_100_000


def test_perf_stat_output_is_read(mb: ModuleType, tmp_path: Path) -> None:
    import mask_cpu

    out = tmp_path / "stat.txt"
    out.write_text("# started on Mon\n\n123456789,,instructions:u,1000,100.00,,\n")
    assert mask_cpu.read_instructions(out) == 123456789.0
    out.write_text("<not supported>,,instructions,0,100.00,,\n")
    assert mask_cpu.read_instructions(out) is None
    assert mask_cpu.read_instructions(tmp_path / "missing") is None
