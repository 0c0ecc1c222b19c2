"""Stable Diffusion pipeline directories end to end, on tiny real components saved with save_pretrained:
SD-1.x (PNDM, epsilon), SD-2.x (DDIM, v-prediction) and SDXL (two encoders, added_cond_kwargs), a
Parquet prompt pool, CLIP score from a tiny CLIPModel and FID from a random TorchScript Inception.
The exported RUN_DIR/pipeline is loaded back with plain diffusers and sampled."""

import json

import h5py
import numpy as np
import pytest
import torch
import yaml
from sd_configs import PIXELS, build_tiny_pipeline, build_tiny_sd3_pipeline, tiny_clip_metric_model, tiny_inception

from aria_hpc.config import load_config
from aria_hpc.errors import ConfigError

pytestmark = pytest.mark.slow

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
CAPTIONS = [f"a photo of a {c} {s}" for c in COLOURS for s in SHAPES]  # 24 distinct prompts


def write_world(root, kind, *, metrics=True):
    """Pipeline, a two-file Parquet pool (with a null and an empty caption), paired images, a config."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pipe = (build_tiny_sd3_pipeline(root / kind, words=CAPTIONS) if kind == "sd3"
            else build_tiny_pipeline(root / kind, kind))
    (root / "pool").mkdir(exist_ok=True)
    half = len(CAPTIONS) // 2
    pq.write_table(pa.table({"caption": CAPTIONS[:half], "url": [f"u{i}" for i in range(half)]}),
                   root / "pool" / "part-00000.parquet")
    pq.write_table(pa.table({"caption": CAPTIONS[half:] + [None, "  "], "url": ["x"] * (half + 2)}),
                   root / "pool" / "part-00001.parquet")
    rng = np.random.default_rng(0)
    with h5py.File(root / "pairs.h5", "w") as f:
        f["images"] = rng.uniform(-1, 1, (12, 3, PIXELS, PIXELS)).astype(np.float32)
        f["prompt_ids"] = np.arange(0, 24, 2)
    cfg = {"seed": 0, "teacher": {"dir": str(pipe)},
           "pool": {"files": [str(root / "pool" / "part-*.parquet")], "column": "caption"},
           "embed": {"dir": str(root / "emb")}, "regions": {"path": str(root / "emb" / "regions.h5"), "k": 4, "niter": 5},
           "bank": {"dir": str(root / "bank"), "entries": 64, "shards": 2, "batch_size": 32, "min_per_region": 2,
                    "pairs": str(root / "pairs.h5")},
           "student": {"preset": {"sdxl": "sdxl_tiny", "sd3": "sd3_half"}.get(kind, "bk_tiny")},
           "train": {"steps": 4, "micro_batch_per_gpu": 8, "log_every": 1, "checkpoint_every": 2, "lr": 1e-3},
           "aria": {"warmup_steps": 1, "sync_every": 2},
           "eval": {"per_region": 2, "per_group": 6, "per_split_group": 8, "sample_steps": 2, "batch_size": 16, "grid": 4},
           "launch": {"folder": str(root / "submitit"), "cpus_per_task": 1}}
    if metrics:
        cfg["eval"].update(clip_dir=str(tiny_clip_metric_model(root / "clip")),
                           inception_weights=str(tiny_inception(root / "inception-2015-12-05.pt")))
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, pipe


def ok(res):
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd15")
    return (root, *write_world(root, "sd15"))


def test_a_pipeline_teacher_brings_its_encoder_vae_and_token_length(sd15):
    root, path, pipe = sd15
    cfg = load_config(path)
    assert cfg.text_encoder.dir == str(pipe) and cfg.bank.vae_dir == str(pipe / "vae")
    assert cfg.text_encoder.max_length == 40  # the tokenizer's model_max_length
    assert cfg.eval.guidance_scale == 7.5  # diffusers' default for SD pipelines
    assert load_config(path, ["eval.guidance_scale=1.0"]).eval.guidance_scale == 1.0  # explicit wins
    with pytest.raises(ConfigError, match=r"text_encoder.dir=.*contradicts the teacher pipeline's own .*sd15"):
        load_config(path, [f"text_encoder.dir={root}"])
    with pytest.raises(ConfigError, match=r"bank.vae_dir=.*contradicts"):
        load_config(path, [f"bank.vae_dir={root}"])


def test_pipeline_teacher_takes_the_schedule_and_prediction_type_of_its_scheduler(sd15, tmp_path):
    from aria_hpc.models.teacher import load_teacher

    _, _, pipe = sd15
    teacher = load_teacher(pipe)
    sched = teacher.scheduler.config
    assert (sched.beta_schedule, sched.beta_start, sched.prediction_type) == ("scaled_linear", 0.00085, "epsilon")
    assert teacher.unet.config.sample_size == PIXELS // 2
    v = build_tiny_pipeline(tmp_path / "sd21", "sd21")
    assert load_teacher(v).scheduler.config.prediction_type == "v_prediction"


def test_sd15_end_to_end_parquet_pool_to_a_loaded_student_pipeline(sd15, aria_cli):
    from conftest import cli_env

    root, path, pipe = sd15
    ok(aria_cli("embed", str(path), "--quiet"))
    with h5py.File(root / "emb" / "prompts.h5", "r") as f:  # two files, globbed in order; null and blank dropped
        assert [t.decode() for t in f["text"][:]] == CAPTIONS and f.attrs["dropped_empty"] == 2
    ok(aria_cli("regions", str(path)))
    bank = ok(aria_cli("bank", str(path), "--quiet"))
    assert "teacher forwards" in bank.stdout + bank.stderr
    with h5py.File(root / "bank" / "x0.h5", "r") as f:  # latent mode: the pipeline's VAE encoded the images
        assert f["x0"].shape == (12, 4, PIXELS // 2, PIXELS // 2)

    runs = {}
    for policy in ("rc", "aria"):
        run = root / "runs" / policy
        runs[policy] = run
        if policy == "rc":
            ok(aria_cli("train", str(path), f"train.policy={policy}", f"run.dir={run}"))
        else:  # two ranks through the deepspeed launcher
            from test_train import run_module

            ok(run_module([str(path), f"train.policy={policy}", f"run.dir={run}"], world=2))
        assert (run / "student" / "config.json").is_file()
        exported = run / "pipeline"
        assert json.loads((exported / "model_index.json").read_text()) == json.loads((pipe / "model_index.json").read_text())
        # every component but the UNet is the teacher's, hard-linked
        assert (exported / "vae" / "config.json").stat().st_ino == (pipe / "vae" / "config.json").stat().st_ino
        assert json.loads((exported / "unet" / "config.json").read_text())["mid_block_type"] is None
        assert "bk_tiny" in (exported / "README.md").read_text()

    ok(aria_cli("eval", *(str(r) for r in runs.values()), timeout=600))
    result = json.loads((runs["rc"] / "eval.json").read_text())
    assert result["eval"]["guidance_scale"] == 7.5
    for group in ("unlabelled", "all"):  # an unlabelled pool: one group, and the overall figures
        entry = result["groups"][group]
        assert 0 <= entry["student_clip_score"]["mean"] <= 100 and entry["teacher_clip_score"]["n"] > 0
        assert np.isfinite(entry["fid_student_vs_teacher"]["mean"]) and entry["fid_student_vs_teacher"]["n"] >= 2
    card = (runs["rc"] / "pipeline" / "README.md").read_text()
    assert "| unlabelled |" in card and "CLIP score" in card
    ok(aria_cli("report", *(str(r) for r in runs.values()), "--out", str(root / "report")))
    assert (root / "report" / "report.md").is_file()

    # plain diffusers, offline, in a fresh process: load the exported pipeline and sample
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom diffusers import DiffusionPipeline\n"
            "pipe = DiffusionPipeline.from_pretrained(sys.argv[1])\n"
            f"out = pipe('a photo of a red star', num_inference_steps=2, height={PIXELS}, width={PIXELS}, output_type='np')\n"
            "img = out.images[0]\nassert img.shape == (16, 16, 3) and np.isfinite(img).all(), img.shape\n"
            "print(type(pipe).__name__, pipe.unet.config.mid_block_type)\n")
    res = ok(subprocess.run([sys.executable, "-c", code, str(runs["aria"] / "pipeline")], env={**cli_env(), "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=300))
    assert res.stdout.split() == ["StableDiffusionPipeline", "None"]


@pytest.mark.parametrize("kind", ["sd21", "sdxl"])
def test_v_prediction_and_sdxl_pipelines_train_and_export(kind, tmp_path, aria_cli):
    """SD-2.x (v-prediction) and SDXL (two text encoders, text_embeds + time_ids): embed, regions,
    bank, train, eval, and the exported pipeline samples with plain diffusers."""
    path, pipe = write_world(tmp_path, kind, metrics=False)
    for command in ("embed", "regions", "bank"):
        ok(aria_cli(command, str(path), *(["--quiet"] if command != "regions" else [])))
    run = tmp_path / "run"
    ok(aria_cli("train", str(path), "train.policy=aria", f"run.dir={run}"))
    ok(aria_cli("eval", str(run)))
    result = json.loads((run / "eval.json").read_text())
    assert np.isfinite(result["groups"]["unlabelled"]["mse"]["mean"])
    from diffusers import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(run / "pipeline")
    image = loaded("a photo of a blue ring", num_inference_steps=2, height=PIXELS, width=PIXELS, output_type="np").images[0]
    assert image.shape == (PIXELS, PIXELS, 3) and np.isfinite(image).all()
    if kind == "sdxl":
        assert type(loaded).__name__ == "StableDiffusionXLPipeline"
        assert list(loaded.unet.config.transformer_layers_per_block) == [1, 1]


def test_sdxl_conditioning_matches_diffusers_encode_prompt(tmp_path):
    """The token states, pooled text_embeds and time_ids we store and feed are what diffusers'
    StableDiffusionXLPipeline builds for the same prompt (and zeros for the null text)."""
    from diffusers import StableDiffusionXLPipeline

    from aria_hpc.conditioning.encoders import open_text_encoder
    from aria_hpc.models.unet_input import sdxl_time_ids

    pipe_dir = build_tiny_pipeline(tmp_path / "sdxl", "sdxl")
    encoder = open_text_encoder(pipe_dir, None)
    ours = encoder.encode(["a photo of a green cross"])
    pipe = StableDiffusionXLPipeline.from_pretrained(pipe_dir)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a photo of a green cross",
                                                                       do_classifier_free_guidance=True)
    assert np.allclose(ours.tokens, embeds.numpy(), atol=1e-5) and np.allclose(ours.pooled, pooled.numpy(), atol=1e-5)
    null = encoder.null()
    assert not null.tokens.any() and not negative.any() and not negative_pooled.any() and not null.pooled.any()
    time_ids = pipe._get_add_time_ids((PIXELS, PIXELS), (0, 0), (PIXELS, PIXELS), dtype=torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(sdxl_time_ids(1, PIXELS), time_ids)


def test_sd15_token_states_match_diffusers_encode_prompt(sd15):
    from diffusers import StableDiffusionPipeline

    from aria_hpc.conditioning.encoders import open_text_encoder

    _, _, pipe_dir = sd15
    ours = open_text_encoder(pipe_dir, None).encode(["a photo of a blue star"])
    with torch.no_grad():
        embeds, _ = StableDiffusionPipeline.from_pretrained(pipe_dir).encode_prompt(
            "a photo of a blue star", "cpu", 1, do_classifier_free_guidance=False)
    assert np.allclose(ours.tokens, embeds.numpy(), atol=1e-5) and ours.mask.all()


def test_clip_score_is_the_models_own_image_text_similarity(tmp_path):
    """100 * max(cos, 0) against CLIPModel's own forward: logits_per_image = exp(logit_scale) * cos.
    (torchmetrics 1.9's CLIPScore cannot be the reference: it expects get_image_features to return a
    tensor, and transformers 5 returns a model output.)"""
    from transformers import CLIPModel, CLIPProcessor

    from aria_hpc.eval.sd_metrics import ClipScorer, to_uint8

    clip_dir = tiny_clip_metric_model(tmp_path / "clip")
    images = torch.rand(3, 3, PIXELS, PIXELS) * 2 - 1
    prompts = ["a red circle", "a blue star", "a green ring"]
    ours = ClipScorer(clip_dir)(images, prompts)
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    batch = processor(text=prompts, images=list(to_uint8(images).permute(0, 2, 3, 1).numpy()), return_tensors="pt",
                      padding=True)
    with torch.no_grad():
        logits = model(**batch).logits_per_image  # (images, texts)
    cos = torch.diagonal(logits).double() / model.logit_scale.detach().exp().double()
    assert np.allclose(ours, (100 * cos.clamp(min=0)).numpy(), atol=1e-3)
    assert (ours >= 0).all() and (ours <= 100).all()


def test_sd3_flow_pipeline_from_its_directory_to_an_exported_student(tmp_path, aria_cli):
    """An SD3-class pipeline (two CLIPs, T5, MMDiT, flow scheduler with shift 3, a VAE with a shift factor)
    through the commands an SD-1.5 user runs: embed, regions, pairs, bank, train (rc; aria with alpha = 0 draws
    and trains exactly as rc; aria on two ranks through the deepspeed launcher), eval, and the exported
    pipeline loaded and sampled by plain diffusers in a fresh process."""
    import subprocess
    import sys

    from conftest import cli_env
    from test_hybrid import metrics
    from test_train import run_module

    from aria_hpc.bank.reader import Bank

    path, pipe = write_world(tmp_path, "sd3", metrics=False)
    for command in ("embed", "regions", "bank"):
        ok(aria_cli(command, str(path), *(["--quiet"] if command != "regions" else [])))
    # RC's paired set generated by the SD3 pipeline itself (here the bank uses the given pairs.h5)
    generated = [f"pairs.dir={tmp_path / 'pairs'}", "pairs.count=3", "pairs.steps=2", "bank.pairs=null"]
    ok(aria_cli("pairs", str(path), *generated))
    from aria_hpc import pairs as pairs_stage

    pset = pairs_stage.PairedSet(load_config(path, generated))
    assert len(pset) == 3 and tuple(pset.shape) == (16, PIXELS // 2, PIXELS // 2)
    bank = Bank(tmp_path / "bank")
    cols = bank.columns
    assert bank.fingerprint["sampling"]["time"] == {"density": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0}
    assert json.loads(bank.fingerprint["scheduler_config"])["shift"] == 3.0
    with h5py.File(next((tmp_path / "bank").glob("shard-*.h5")), "r") as f:  # self-described: velocity outputs
        assert f["output"].attrs["prediction_type"] == "flow"
    # the banked outputs are the transformer's at timestep sigma * T, on x_t = (1 - sigma) x0 + sigma noise
    from aria_hpc.bank.noise import entry_noise
    from aria_hpc.context import load_context

    ctx = load_context(load_config(path))
    row = int(np.flatnonzero(cols["cond"] >= 0)[0])
    sigma = ctx.teacher.time.sigma(cols["t"][row:row + 1])
    x0 = torch.from_numpy(ctx.x0[cols["image"][row:row + 1]]).float()
    x_t = (1 - float(sigma[0])) * x0 + float(sigma[0]) * entry_noise(cols["seed"][row:row + 1], tuple(x0.shape[1:]))
    c = ctx.cond(cols["cond"][row:row + 1])
    with torch.no_grad():
        want = ctx.teacher.unet.transformer(hidden_states=x_t, timestep=torch.tensor(sigma * 1000, dtype=torch.float32),
                                            encoder_hidden_states=c.tokens, pooled_projections=c.pooled).sample
    got = torch.from_numpy(bank.read_outputs(np.array([row])).astype(np.float32))
    assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()

    refused = aria_cli("train", str(path), "loss.feature_kd=1.0", f"run.dir={tmp_path / 'fkd'}")
    assert refused.returncode == 2 and "a flow transformer teacher distils on its outputs only" in refused.stderr
    runs = {}
    for name, args in (("rc", ["train.policy=rc"]), ("alpha0", ["train.policy=aria", "aria.alpha=0.0"])):
        runs[name] = tmp_path / name
        ok(aria_cli("train", str(path), *args, f"run.dir={runs[name]}"))
    assert [r["loss"] for r in metrics(runs["rc"])] == [r["loss"] for r in metrics(runs["alpha0"])]
    runs["aria"] = tmp_path / "aria"
    ok(run_module([str(path), "train.policy=aria", f"run.dir={runs['aria']}"], world=2))
    exported = runs["aria"] / "pipeline"
    assert json.loads((exported / "transformer" / "config.json").read_text())["num_layers"] == 2  # sd3_half of 3
    assert (exported / "vae" / "config.json").stat().st_ino == (pipe / "vae" / "config.json").stat().st_ino
    assert "student transformer" in (exported / "README.md").read_text()

    ok(aria_cli("eval", str(runs["rc"]), str(runs["aria"]), timeout=600))
    result = json.loads((runs["aria"] / "eval.json").read_text())
    assert result["eval"]["guidance_scale"] == 7.0  # StableDiffusion3Pipeline's default
    assert np.isfinite(result["groups"]["all"]["mse"]["mean"]) and np.isfinite(result["groups"]["unlabelled"]["pixel_mse"]["mean"])
    assert "flow Euler steps" in (exported / "README.md").read_text()

    code = ("import sys, numpy as np\nfrom diffusers import DiffusionPipeline\n"
            "pipe = DiffusionPipeline.from_pretrained(sys.argv[1])\n"
            f"out = pipe('a photo of a red star', num_inference_steps=2, height={PIXELS}, width={PIXELS}, output_type='np')\n"
            "img = out.images[0]\nassert img.shape == (16, 16, 3) and np.isfinite(img).all(), img.shape\n"
            "print(type(pipe).__name__, pipe.transformer.config.num_layers)\n")
    res = ok(subprocess.run([sys.executable, "-c", code, str(exported)], env={**cli_env(), "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=300))
    assert res.stdout.split() == ["StableDiffusion3Pipeline", "2"]
