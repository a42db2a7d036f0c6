"""The reference check: a moved, missing or extra cell fails and is printed; equal tables pass."""
import pandas as pd
import pytest

from dqss import reference
from dqss.results import CSV_COLUMNS


def _table(rows):
    base = {c: "" for c in CSV_COLUMNS}
    return pd.DataFrame([{**base, "task": "cls_ptq", "dataset": "digits", "backbone": "resnet18", "w_bits": 4,
                          "a_bits": 4, **r} for r in rows])


ROWS = [{"method": "dqss", "seed": 0, "metric": "top1", "value": 98.3136593591906},
        {"method": "dqss", "seed": 0, "metric": "kl_fp", "value": 0.0136},
        {"method": "kl", "seed": 1, "metric": "psnr", "value": 32.25}]


@pytest.fixture
def files(tmp_path):
    ref = tmp_path / "ref.csv"
    _table(ROWS).to_csv(ref, index=False)
    return tmp_path, ref


def _run(tmp_path, ref, rows, capsys):
    got = tmp_path / "metrics.csv"
    _table(rows).to_csv(got, index=False)
    code = reference.main(["check", str(got), "--reference", str(ref)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_equal_tables_pass(files, capsys):
    code, text = _run(*files, ROWS, capsys)
    assert code == 0 and "all 3 values equal" in text


def test_one_image_fails_and_names_the_cell(files, capsys):
    rows = [dict(ROWS[0], value=ROWS[0]["value"] - 100 / 593), *ROWS[1:]]
    code, text = _run(*files, rows, capsys)
    assert code == 1
    assert "cls_ptq/digits/resnet18/dqss W4A4 seed 0 top1: 98.31365936 -> 98.1450253 (diff -0.169" in text
    assert "1 of 3 values differ" in text


def test_tolerance_is_per_metric(files, capsys):
    rows = [ROWS[0], dict(ROWS[1], value=0.0136 * (1 + 5e-7)), dict(ROWS[2], value=32.25 + 5e-7)]
    assert _run(*files, rows, capsys)[0] == 0
    rows = [ROWS[0], dict(ROWS[1], value=0.0136 * (1 + 1e-5)), ROWS[2]]
    code, text = _run(*files, rows, capsys)
    assert code == 1 and "kl_fp" in text


def test_missing_and_extra_rows_fail(files, capsys):
    rows = [ROWS[0], ROWS[1], dict(ROWS[2], seed=2)]
    code, text = _run(*files, rows, capsys)
    assert code == 1
    assert "kl W4A4 seed 1 psnr: missing in run" in text and "kl W4A4 seed 2 psnr: not in reference" in text


def test_nan_equals_only_nan():
    t = reference.Tolerance(abs=1.0)
    assert t.allows(float("nan"), float("nan")) and not t.allows(float("nan"), 1.0) and not t.allows(1.0, float("nan"))


def test_update_writes_the_reference_and_lists_changes(files, capsys):
    tmp_path, ref = files
    got = tmp_path / "metrics.csv"
    _table([dict(ROWS[0], value=50.0), *ROWS[1:]]).to_csv(got, index=False)
    assert reference.main(["update", str(got), "--reference", str(ref)]) == 0
    assert "1 changed" in capsys.readouterr().out
    assert reference.main(["check", str(got), "--reference", str(ref)]) == 0
    assert list(pd.read_csv(ref).columns) == reference.ROW_KEYS + ["value"]


def test_no_reference_names_the_command(tmp_path, capsys):
    got = tmp_path / "metrics.csv"
    _table(ROWS).to_csv(got, index=False)
    assert reference.main(["check", str(got), "--reference", str(tmp_path / "none.csv")]) == 2
    assert "python -m dqss.reference update" in capsys.readouterr().err


def test_duplicated_row_is_refused_not_counted(files, capsys):
    """A cell twice in the run (or the reference) is an error naming it, not "all 4 values equal"."""
    with pytest.raises(SystemExit, match=r"2 rows share their cell .*dqss W4A4 seed 0 top1.*rule aggregate"):
        _run(*files, [*ROWS, ROWS[0]], capsys)
    tmp_path, ref = files
    _table([*ROWS, ROWS[1]]).to_csv(ref, index=False)
    with pytest.raises(SystemExit, match="ref.csv: 2 rows share their cell"):
        _run(tmp_path, ref, ROWS, capsys)


def test_non_numeric_value_is_a_clear_error(files, capsys):
    with pytest.raises(SystemExit, match=r"1 values are not numbers, e\.g\. .*kl_fp = 'high'"):
        _run(*files, [ROWS[0], dict(ROWS[1], value="high"), ROWS[2]], capsys)
    rows = [ROWS[0], dict(ROWS[1], value=float("nan")), ROWS[2]]  # an empty cell is a NaN, not an error
    assert _run(*files, rows, capsys)[0] == 1
