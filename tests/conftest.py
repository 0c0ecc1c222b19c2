import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def aria_cli():
    """Run `python -m aria_hpc.cli ARGS` in a subprocess; returns CompletedProcess."""
    import subprocess

    def run(*args: str, cwd: Path | None = None, timeout: float = 300):
        return subprocess.run([sys.executable, "-m", "aria_hpc.cli", *args], cwd=cwd or ROOT,
                              env=cli_env(), capture_output=True, text=True, timeout=timeout)

    return run


def pytest_addoption(parser):
    parser.addoption("--tsan-n", default=None,
                     help="samples per thread in the concurrency test (smaller under ThreadSanitizer)")
