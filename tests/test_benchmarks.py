"""The region-table benchmark runs end to end at a tiny size and writes the JSON it documents
(a smoke test: it checks the script and its keys, never a timing)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_bench_scale_writes_its_table(tmp_path):
    """Two tiny sizes: every stage runs in its own process and reports seconds and peak RSS."""
    out = tmp_path / "scale.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--sizes", "8000", "16000",
                          "--k", "32", "--niter", "2", "--repeats", "1", "--dir", str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "exponent b" in res.stdout and "peak RSS at N=16,000" in res.stdout and f"wrote {out}" in res.stdout
    data = json.loads(out.read_text())
    assert data["sizes"] == [8000, 16000]
    for stage in ("materialise", "kmeans_train", "kmeans_assign", "index_build", "draws", "plan"):
        row = data["table"][stage]
        assert len(row["seconds"]) == 2 and all(s > 0 for s in row["seconds"]) and all(g > 0 for g in row["peak_rss_gb"])
    assert data["rows"]["16000"]["materialise"]["duplicates"] == 160  # 1% repeats, deduplicated
    assert data["encoder"]["ours_prompts_per_s_per_core"] > 0 and data["encode_vs_step"]["encode_over_step"] > 0
    model = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_model.py"), "--measured", str(out),
                            "--out", str(tmp_path / "model.md")], capture_output=True, text=True, timeout=120)
    assert model.returncode == 0, model.stderr[-2000:]
    text = (tmp_path / "model.md").read_text()
    for figure in ("teacher signatures, SD-1.5 UNet, every prompt of 2 x 10^7", "region map per node", "all-reduce per sync", "k-means sample", "assignment", "embed, CLIP",
                   "bank per million entries"):
        assert f"| {figure}" in text, figure


def test_bench_checkpoint_writes_its_table(tmp_path):
    out = tmp_path / "checkpoint.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_checkpoint.py"), "--repeats", "1",
                          "--dir", str(tmp_path / "ckpt"), "--out", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    [row] = json.loads(out.read_text())["rows"]
    assert row["state"].startswith("demo student") and row["bytes"] > 10**6 and row["parameters"] == 1_279_395
    assert all(row[k] > 0 for k in ("save_ratio", "resume_ratio", "hash_gb_per_s"))
    assert not list((tmp_path / "ckpt").iterdir())  # the saved states are removed


def test_bench_pairs_writes_its_table(tmp_path):
    out = tmp_path / "pairs.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pairs.py"), "--count", "600", "--repeats", "1",
                          "--gen-images", "1", "--dir", str(tmp_path / "p"), "--out", str(out)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["count"] == 600 and all(result[p]["peak_rss_gb"] > 0 for p in ("build", "copy", "read"))
    assert result["read"]["sequential_vs_raw"] > 0 and result["generate_tiny_cpu"]["seconds_per_image"] > 0
    assert 700 < result["sd15_h100_paper"]["unet_gflop_per_forward"] < 900  # SD-1.5's UNet: about 0.8 TFLOP
    assert not (tmp_path / "p").exists()  # the set is removed


def test_bench_flow_writes_its_table(tmp_path):
    """bench_gpu.py --flow on a machine without a GPU: the tiny SD3-class teacher and its sd3_half student."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--flow", "--repeats", "2",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "teacher forward / student step" in res.stdout
    result = json.loads((tmp_path / "bench_flow.json").read_text())
    assert result["config"] == "tiny SD3-class" and result["student_params"] < result["teacher_params"]
    assert result["teacher_forward_s"] > 0 and result["student_step_s"] > 0 and result["forward_over_step"] > 0


@pytest.mark.slow
def test_bench_train_paired_writes_its_table(tiny_world, tmp_path):
    """The paired ARIA/RC/plain-PyTorch step timing on the tiny world: every ratio and phase is measured."""
    path, _ = tiny_world
    out = tmp_path / "paired.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--paired", "--config", str(path),
                          "--segment", "2", "--repeats", "2", "--dir", str(tmp_path / "work"), "--out", str(out),
                          "aria.warmup_steps=2", "train.micro_batch_per_gpu=8"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ARIA step" in res.stdout and "plain PyTorch loop" in res.stdout and f"wrote {out}" in res.stdout
    paired = json.loads(out.read_text())["paired"]
    assert paired["aria_vs_rc"] > 0 and paired["ours_vs_plain_throughput"] > 0
    assert set(paired["table_ops_s"]) == {"8", "65536"} and all(v > 0 for v in paired["rc_step_phases_s"].values()
                                                              if v is not None)
