"""The CUDA accumulation path: compiled by CI with nvcc; exercised where a GPU exists."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from aria_hpc.regions import RegionTable
from aria_hpc.regions.table import DeviceRegionStats, cuda_compiled

needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_compiled()),
                               reason="needs a CUDA device and aria_hpc._C built with CUDA")


@pytest.mark.skipif(os.environ.get("ARIA_EXPECT_CUDA") != "1", reason="set ARIA_EXPECT_CUDA=1 where the build must have CUDA")
def test_build_compiled_the_cuda_kernel():
    assert cuda_compiled()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cuda_on_without_a_toolchain_fails_clearly(tmp_path):
    import pybind11

    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CUDA_PATH", "CUDA_HOME")}
    env["PATH"] = "/usr/bin:/bin"  # no nvcc
    res = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DARIA_CUDA=ON",
                          f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "ARIA_CUDA=ON but CMake found no CUDA toolchain" in " ".join((res.stdout + res.stderr).split())


def _reference(ids, values, k):
    return np.stack([np.bincount(ids, values, minlength=k), np.bincount(ids, values**2, minlength=k),
                     np.bincount(ids, minlength=k).astype(np.float64)])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("k", [1, 16, 256, 2048, 2049, 65536])
@pytest.mark.parametrize("n", [0, 1, 255, 65536, 1_000_003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_float64_reference(k, n, dtype):
    rng = np.random.default_rng(k * 7 + n)
    ids = rng.integers(0, k, n)
    values = rng.gamma(2.0, 1.0, n).astype(np.float32 if dtype == torch.float32 else np.float64)
    stats = DeviceRegionStats(k, "cuda")
    poison = 123.5
    stats.block.fill_(poison)  # the kernel accumulates: whatever is there stays added
    guard = torch.full((64,), float("nan"), dtype=torch.float64, device="cuda")
    stats.record(torch.from_numpy(ids).cuda(), torch.from_numpy(values).cuda())
    got = stats.block.cpu().numpy() - poison
    np.testing.assert_allclose(got, _reference(ids, values.astype(np.float64), k), rtol=1e-9, atol=1e-6)
    assert torch.isnan(guard).all()
    assert stats.error.item() == 0


@pytest.mark.gpu
@needs_gpu
def test_bad_samples_set_the_error_flag_and_are_skipped():
    stats = DeviceRegionStats(8, "cuda")
    ids = torch.tensor([0, 9, 3, -1, 3], device="cuda")
    values = torch.tensor([1.0, 5.0, float("nan"), 2.0, 4.0], device="cuda")
    stats.record(ids, values)
    np.testing.assert_array_equal(stats.block[2].cpu().numpy(), [1, 0, 0, 1, 0, 0, 0, 0])
    table = RegionTable(8)
    with pytest.raises(ValueError, match="outside"):
        stats.flush_into(table)
    assert not table.accumulators.any()  # nothing half-added


@pytest.mark.gpu
@needs_gpu
def test_flush_into_host_table_matches_cpu_record():
    rng = np.random.default_rng(0)
    ids, values = rng.integers(0, 300, 10_000), rng.random(10_000)
    stats, device_table, host_table = DeviceRegionStats(300, "cuda"), RegionTable(300), RegionTable(300)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # recorded on the current (side) stream, asynchronously
        stats.record(torch.from_numpy(ids).cuda(), torch.from_numpy(values).cuda())
    side.synchronize()
    stats.flush_into(device_table)
    host_table.record(ids, values)
    np.testing.assert_allclose(device_table.accumulators, host_table.accumulators, rtol=1e-12)
    assert not stats.block.any()
