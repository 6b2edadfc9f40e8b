"""reports: evaluation reports round-trip through strict JSON, and a bad report is refused in one line naming the file
and the field, before ``evaluate`` writes anything (the report's use in the real CLI: ``--table-reports``)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from SurgicalDepthTrainingLib.reports import markdown_table, read_report, write_report


def _report(**changes) -> dict:
    report = {"dataset": "c3vd", "split": None, "model": Path("/m/best.safetensors"), "n_images": np.int64(2),
              "depth_range": np.array([1.5, 90.25], np.float32), "metrics": {"abs_rel": np.float32(0.125),
                                                                           "a1": 0.875, "rmse_log": math.nan},
              "per_image": [{"name": "a", "abs_rel": np.float64(0.1), "ok": np.bool_(True), "scale": math.inf}]}
    report.update(changes)
    return report


def test_write_then_read_round_trips_as_strict_json(tmp_path):
    """Audit of the round trip: numpy scalars/arrays, paths and bools become JSON values; NaN and ±inf become null
    (strict JSON: no ``NaN`` token another reader would refuse); the file reads back as exactly those values."""
    path = write_report(_report(), tmp_path / "r.json")
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text and text.endswith("}\n")
    assert read_report(path) == {
        "dataset": "c3vd", "split": None, "model": "/m/best.safetensors", "n_images": 2,
        "depth_range": [1.5, 90.25], "metrics": {"abs_rel": 0.125, "a1": 0.875, "rmse_log": None},
        "per_image": [{"name": "a", "abs_rel": 0.1, "ok": True, "scale": None}]}
    table = markdown_table({"tiny": [read_report(path)]})
    assert table.splitlines()[2:] == ["| tiny | AbsRel ↓ | 0.125 |", "| tiny | δ1 ↑ | 0.875 |"]


def test_a_report_that_cannot_be_written_leaves_the_old_file(tmp_path):
    """Audit: a value JSON cannot hold fails before the atomic write, so an earlier report stays as it was."""
    path = write_report(_report(), tmp_path / "r.json")
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_report(_report(notes={1, 2}), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00 not text", "not a JSON report"),
    (b"{not json", "not a JSON report"),
    (b"[1, 2]", "no 'metrics' object"),
    (b'{"dataset": "c3vd", "metrics": 5}', "no 'metrics' object"),
    (b'{"dataset": "c3vd", "metrics": {"abs_rel": "0.1", "a1": 0.9}}', "metric 'abs_rel' is '0.1'"),
    (b'{"dataset": "c3vd", "metrics": {"abs_rel": 0.1, "a1": true}}', "metric 'a1' is True"),
    (b'{"metrics": {"abs_rel": 0.1, "a1": 0.9}}', "field 'dataset' is None"),
    (b'{"dataset": "c3vd", "split": 3, "metrics": {"abs_rel": 0.1}}', "field 'split' is 3"),
], ids=["not_utf8", "not_json", "list", "metrics_number", "metric_string", "metric_bool", "no_dataset", "split_number"])
def test_bad_report_is_one_value_error_naming_the_file_and_field(tmp_path, content, message):
    """Catches reports that read_report accepted and markdown_table then crashed on (an AttributeError on a
    non-object ``metrics``, a KeyError on a missing ``dataset``, "Unknown format code 'f'" on a string metric), and
    a file that is not UTF-8 failing with a codec message that named no file."""
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_report(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and len(text.splitlines()) == 1


def test_missing_report_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_report(tmp_path / "nope.json")


def test_cli_bad_table_report_fails_before_the_evaluation_writes_anything(tmp_path):
    """The real ``evaluate`` CLI with a broken ``--table-reports`` file. Catches: the new report written and then
    a traceback (exit 1) while building the table, so the run left half its outputs (report without table)."""
    cli = [sys.executable, "-m", "SurgicalDepthLib.cli"]
    done = subprocess.run([*cli, "synth", "--frames", "2", "--size", "64x80", "--output", str(tmp_path / "data"),
                           "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "earlier.json"
    bad.write_text(json.dumps({"metrics": {"abs_rel": 0.1, "a1": 0.9}}))  # no "dataset"
    out, table = tmp_path / "report.json", tmp_path / "table.md"
    done = subprocess.run([*cli, "evaluate", "--dataset", "synthetic", "--root", str(tmp_path / "data"), "--model",
                           "random:surgical-depth-tiny", "--input-size", "56", "--device", "cpu", "--output", str(out),
                           "--table", str(table), "--table-reports", str(bad), "--progress", "none"],
                          capture_output=True, text=True, timeout=300)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "earlier.json" in err and "dataset" in err, err
    assert not out.exists() and not table.exists()
