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


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny randomly initialised BERT with MiniLM's tokenizer, saved like a real model directory."""
    from aria_hpc.testing import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny CLIPTextModel with a byte-level BPE vocabulary (no merges), saved with save_pretrained."""
    import json

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = tmp_path_factory.mktemp("tiny_clip")
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to 256 + n.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] +
                                             ["<|startoftext|>", "<|endoftext|>"])}
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt")).save_pretrained(out)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
    CLIPTextModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, tiny_bert_dir):
    """The shapes world embedded with the tiny BERT, split into 8 regions, and a tiny pixel teacher
    trained on nothing (random weights are a valid frozen teacher for caching tests).
    Returns (config path, directory)."""
    from aria_hpc.testing import build_tiny_world

    root = tmp_path_factory.mktemp("tiny_world")
    return build_tiny_world(root, tiny_bert_dir), root


@pytest.fixture(scope="session")
def tiny_bank(tiny_world, tmp_path_factory):
    """One bank of the tiny world for every test that only reads it (1 shard, mid_block features):
    built once per session. A test that changes a bank copies it first."""
    from aria_hpc.build import build_bank
    from aria_hpc.config import load_config

    path, _ = tiny_world
    bank_dir = tmp_path_factory.mktemp("tiny_bank") / "bank"
    build_bank(load_config(path, [f"bank.dir={bank_dir}", "bank.shards=1", "bank.features=[mid_block]"]),
               log=lambda _m: None)
    return bank_dir
