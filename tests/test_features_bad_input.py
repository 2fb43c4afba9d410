"""Every validation rule, fed as a real malformed file through `mlops features`: exit code, message, no partial output."""
from pathlib import Path

import pytest

from conftest import run_mlops

HEADER = "item_id,timestamp,target,store,promo\n"


def good_rows(item="a", days=50, start_day=1):
    return "".join(f"{item},2024-01-{start_day + d:02d},{d % 7},s1,0\n" if start_day + d <= 31 else
                   f"{item},2024-02-{start_day + d - 31:02d},{d % 7},s1,0\n" for d in range(days))


CASES = {
    # name: (file content, extra options, expected exit code, expected message parts)
    "empty file": ("", [], 1, ["the file is empty"]),
    "header only": (HEADER, [], 1, ["header but no rows"]),
    "missing column": ("item_id,timestamp,store,promo\na,2024-01-01,s1,0\n", [], 1,
                       ["missing column 'target'", "Fix: rename the columns"]),
    "unparseable timestamp": (HEADER + good_rows().replace("2024-01-05", "2024-01-5x"), [], 1,
                              ["column 'timestamp', line 6, item 'a'", "cannot parse '2024-01-5x'", "ISO 8601"]),
    "non-numeric target": (HEADER + good_rows().replace("2024-01-03,2,", "2024-01-03,two,"), [], 1,
                           ["column 'target', line 4, item 'a'", "'two' is not a number"]),
    "duplicate rows": (HEADER + good_rows() + "a,2024-01-02,9,s1,0\n", [], 1,
                       ["item 'a'", "2 rows for timestamp 2024-01-02", "line 3, line 52"]),
    "gap in a daily series": (HEADER + good_rows().replace("a,2024-01-10,2,s1,0\n", ""), [], 1,
                              ["item 'a'", "a gap: after 2024-01-09 00:00:00 comes 2024-01-11", "declared frequency 'D'"]),
    "mixed frequency": (HEADER + good_rows() + "a,2024-02-19 12:00:00,1,s1,0\n", [], 1,
                        ["item 'a'", "shorter than the frequency"]),
    "infinite target": (HEADER + good_rows().replace("2024-01-04,3,", "2024-01-04,inf,"), [], 1,
                        ["column 'target', line 5, item 'a'", "infinite value"]),
    "series too short (fail)": (HEADER + good_rows() + good_rows("b", days=10), ["--short-series", "fail"], 1,
                                ["item 'b'", "fewer than 42 observed points", "short_series='drop'"]),
    "dynamic feature missing": (HEADER + good_rows().replace("2024-01-07,6,s1,0", "2024-01-07,6,s1,"), [], 1,
                                ["column 'promo', line 8, item 'a'", "missing value", "fill it"]),
    "static category varies": (HEADER + good_rows().replace("2024-01-07,6,s1,", "2024-01-07,6,s2,"), [], 1,
                               ["column 'store', item 'a'", "one value per item"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused(tmp_path: Path, name: str):
    content, options, code, parts = CASES[name]
    data = tmp_path / "bad.csv"
    data.write_text(content)
    out = tmp_path / "out"
    result = run_mlops("features", "--input", data, "--output", out, "--static-cat-columns", "store",
                       "--dynamic-real-columns", "promo", "--context-length", "28", "--prediction-length", "14", *options)
    assert result.returncode == code, result.stdout + result.stderr
    message = " ".join(result.stderr.split())  # rich may wrap lines
    for part in parts:
        assert part in message, f"{part!r} not in: {message}"
    assert str(data) in message  # the message names the file
    assert not [p for p in out.rglob("*.json*") if p.parent.name in ("train", "test", "state", "inference")]
    assert (out / "report" / "feature_engineering.ipynb").is_file()  # the executed notebook shows the failure


def test_missing_file_is_refused(tmp_path: Path):
    result = run_mlops("features", "--input", tmp_path / "nope.csv", "--output", tmp_path / "out")
    assert result.returncode == 2
    assert "input not found" in result.stderr and "nope.csv" in result.stderr
    assert not (tmp_path / "out").exists()


def test_short_series_are_dropped_with_a_warning(tmp_path: Path):
    data = tmp_path / "short.csv"
    data.write_text(HEADER + good_rows() + good_rows("b", days=10))
    result = run_mlops("features", "--input", data, "--output", tmp_path / "out", "--static-cat-columns", "store",
                       "--dynamic-real-columns", "promo")
    assert result.returncode == 0, result.stderr
    train_lines = (tmp_path / "out" / "train" / "train.json").read_text().splitlines()
    assert len(train_lines) == 1  # item b was dropped
    shown = " ".join(result.stdout.split())
    assert "dropped 1 series with fewer than 42 observed points" in shown and "test_windows): b" in shown


def test_infer_without_future_dynamic_features_is_refused(tmp_path: Path, small_demo: Path):
    train = run_mlops("features", "--input", small_demo, "--output", tmp_path / "train",
                      "--static-cat-columns", "store,category", "--dynamic-real-columns", "promo")
    assert train.returncode == 0, train.stderr
    history_only = tmp_path / "history.csv"
    lines = small_demo.read_text().splitlines(keepends=True)
    history_only.write_text("".join(l for l in lines if not l.split(",")[2] == ""))  # drop the future rows
    result = run_mlops("features", "--mode", "infer", "--input", history_only, "--output", tmp_path / "infer",
                       "--state", tmp_path / "train" / "state")
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "item 'item_001': 0 future rows (after 2022-03-31 00:00:00, the last timestamp with an observed target" in message
    assert "the forecast needs exactly prediction_length=14;" in message and "known dynamic feature values" in message
    assert not (tmp_path / "infer" / "inference").exists()


def test_unknown_step_parameter_is_an_error(tmp_path: Path):
    import subprocess, sys
    result = subprocess.run([sys.executable, "-m", "mlops.processing", "feature_engineering", "--output-notebook",
                             tmp_path / "nb.ipynb", "-p", "prediction_lenght", "7"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "does not declare parameter prediction_lenght" in result.stderr
    assert "prediction_length" in result.stderr  # the message lists what is declared
