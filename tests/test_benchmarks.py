"""The region-table benchmark runs end to end at a tiny size and writes the JSON it documents
(a smoke test: it checks the script and its keys, never a timing)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_region_table_writes_its_table(tmp_path):
    out = tmp_path / "region_table.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_region_table.py"), "--n", "20000",
                          "--repeats", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "target record_1t_vs_bincount" in res.stdout and f"wrote {out}" in res.stdout
    data = json.loads(out.read_text())
    assert [row["K"] for row in data["rows"]] == [16, 256, 65536]
    assert set(data["met"]) == set(data["targets"])
    for row in data["rows"]:
        for key in ("record_1t_vs_bincount", "record_2t_vs_1t", "read_2t_vs_1t", "record_1t_fresh_vs_bincount",
                    "sample_vs_choice", "sample_vs_choice_interleaved"):
            assert row[key] > 0, key
