"""Flow-matching teachers: flow time (aria_hpc/models/flow.py) against diffusers' own scheduler and the
formulas, the bank's RC schedule in flow time, the SD3 teacher's conditioning and denoiser against
diffusers', and depth-pruned SD3- / Flux-class students on tiny real transformers. The whole path
from an SD3 pipeline directory to an exported student is test_sd_pipelines.py's."""

import numpy as np
import pytest
import torch

from aria_hpc.errors import UserError
from aria_hpc.models.flow import FlowTime
from aria_hpc.models.students import build_student, depth_pruned


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's


def test_flow_time_is_the_schedulers_table_and_noise(scheduler):
    ft = FlowTime.from_scheduler(scheduler)
    assert ft.num_timesteps == 1000 and np.all(np.diff(ft.sigmas) > 0)
    assert np.allclose(ft.sigmas[::-1], scheduler.sigmas.double().numpy()[:1000])  # the shifted table, ascending
    scheduler.set_timesteps(28)  # a pipeline's inference steps do not change the training table
    assert np.array_equal(FlowTime.from_scheduler(scheduler).sigmas, ft.sigmas)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 16, 8, 8, generator=g), torch.randn(4, 16, 8, 8, generator=g)
    t = np.array([0, 250, 700, 999])
    s = torch.from_numpy(ft.sigma(t)).float().view(-1, 1, 1, 1)
    assert torch.allclose(ft.add_noise(x0, noise, t), (1 - s) * x0 + s * noise)
    fresh = type(scheduler).from_config(scheduler.config)  # diffusers' own forward process at the same timesteps
    theirs = torch.cat([fresh.scale_noise(x0[i:i + 1], ft.model_timestep(t[i:i + 1]), noise[i:i + 1]) for i in range(4)])
    assert torch.allclose(ft.add_noise(x0, noise, t), theirs, atol=1e-6)
    assert torch.equal(FlowTime.velocity(x0, noise), noise - x0)
    t_mid = torch.tensor([5, 250, 700, 999])  # loss.task's target recovers the velocity from x_t
    assert torch.allclose(ft.task_target(ft.add_noise(x0, noise, t_mid), x0, t_mid), noise - x0, atol=1e-3)
    assert np.array_equal(ft.bins(np.array([0, 999]), 10), [0, 9])


def test_flow_rc_schedule_matches_its_formula(scheduler):
    ft = FlowTime.from_scheduler(scheduler)
    sigma = np.linspace(0, 1, 11)
    assert np.allclose(FlowTime.replace_probability(sigma, 5.0), np.exp(-5 * (1 - sigma)))
    assert FlowTime.replace_probability(1.0, 5.0) == 1.0  # pure noise: always replaced
    w = ft.replaced_weights(5.0)
    assert np.allclose(w, ft.weights() * np.exp(-5 * (1 - ft.sigmas)) / (ft.weights() * np.exp(-5 * (1 - ft.sigmas))).sum())
    assert np.allclose(ft.replaced_weights(0.0), ft.weights())  # lam = 0: the training density itself
    rng = np.random.default_rng(0)
    t = ft.sample_replaced(rng, 200000, 5.0)
    hist = np.bincount(t // 100, minlength=10) / len(t)
    assert np.allclose(hist, w.reshape(10, 100).sum(1), atol=0.005)
    assert ft.sigma(t).mean() > ft.sigma(ft.sample(rng, 200000)).mean()  # replaced draws are noisier


def test_a_flow_teachers_bank_follows_rc_in_flow_time(scheduler):
    """The bank plan in flow time: t from the training density, a caption replaced with probability
    exp(-lam (1 - sigma(t))) (binned over sigma, against the formula), top-ups from p(t | replaced)."""
    from aria_hpc.bank.plan import RCSchedule, draw_entries, plan_bank

    ft = FlowTime.from_scheduler(scheduler)
    cond = RCSchedule(np.arange(50)[:, None], np.arange(400) % 8, 1000, 5.0, 0.0, time=ft)
    cols = draw_entries(cond, np.random.default_rng(0), 200000)
    bins = ft.bins(cols["t"], 10)
    replaced = np.array([(~cols["paired"][bins == b]).mean() for b in range(10)])
    expected = np.array([ft.replace_probability(ft.sigma(cols["t"][bins == b]), 5.0).mean() for b in range(10)])
    assert np.allclose(replaced, expected, atol=0.01) and replaced[-1] > 0.6 and replaced[0] < 0.03
    hist = np.bincount(cols["t"] // 100, minlength=10) / len(cols["t"])
    assert np.allclose(hist, ft.weights().reshape(10, 100).sum(1), atol=0.005)  # logit-normal over the table
    plan = plan_bank(cond, entries=100, min_per_region=30, seed=0)  # mostly top-ups: p(t | replaced)
    assert ft.sigma(plan["t"][~plan["paired"]]).mean() > ft.sigma(plan["t"][plan["paired"]]).mean()


def test_logit_normal_density_is_sd3s():
    ft = FlowTime(np.linspace(0.001, 1, 1000))
    u = (np.arange(1000) + 0.5) / 1000
    mean = (ft.weights() * u).sum()
    std = np.sqrt((ft.weights() * (u - mean) ** 2).sum())
    ref = torch.sigmoid(torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert mean == pytest.approx(ref.mean().item(), abs=2e-3) and std == pytest.approx(ref.std().item(), abs=2e-3)
    assert np.allclose(FlowTime(ft.sigmas, density="uniform").weights(), 1 / 1000)
    with pytest.raises(UserError, match="density"):
        FlowTime(ft.sigmas, density="cosine")


def tiny_sd3(**kw):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=5, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                 pooled_projection_dim=12, out_channels=4, pos_embed_max_size=8, **kw).eval()


def tiny_flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=3, num_single_layers=4, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=12,
                                  guidance_embeds=True, axes_dims_rope=(2, 2, 4)).eval()


def sd3_out(model, g=None):
    g = torch.Generator().manual_seed(1)
    x, ctx, pooled = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g), torch.randn(2, 12, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                     timestep=torch.tensor([300.0, 900.0])).sample


def test_sd3_depth_pruning_keeps_teacher_blocks():
    teacher = tiny_sd3(dual_attention_layers=(0, 2))
    assert torch.equal(sd3_out(depth_pruned(teacher, family="sd3", joint=lambda n: list(range(n)))), sd3_out(teacher))
    student = build_student("sd3_half", teacher)  # blocks 0, 2, 4 of 5
    assert student.config.num_layers == 3 and tuple(student.config.dual_attention_layers) == (0, 1)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for j, i in enumerate((0, 2, 4)):
        block = {k.split(".", 2)[2]: v for k, v in s_state.items() if k.startswith(f"transformer_blocks.{j}.")}
        assert block and all(torch.equal(v, t_state[f"transformer_blocks.{i}.{k}"]) for k, v in block.items())
    assert all(torch.equal(v, t_state[k]) for k, v in s_state.items() if not k.startswith("transformer_blocks."))
    assert sd3_out(student).shape == (2, 4, 8, 8) and not torch.allclose(sd3_out(student), sd3_out(teacher))
    with pytest.raises(UserError, match="last joint block"):
        depth_pruned(teacher, family="sd3", joint=lambda n: [0, 1])
    with pytest.raises(UserError, match="FLUX-class"):
        build_student("flux_half", teacher)


def test_flux_depth_pruning_keeps_teacher_blocks():
    teacher = tiny_flux()
    student = build_student("flux_half", teacher)  # double 0, 2 of 3; single 0, 2 of 4
    assert (student.config.num_layers, student.config.num_single_layers) == (2, 2)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert torch.equal(s_state["single_transformer_blocks.1.proj_out.weight"], t_state["single_transformer_blocks.2.proj_out.weight"])
    assert torch.equal(s_state["transformer_blocks.1.ff.net.2.weight"], t_state["transformer_blocks.2.ff.net.2.weight"])
    assert build_student("flux_half_single", teacher).config.num_layers == 3
    g = torch.Generator().manual_seed(0)
    img_ids, txt_ids = torch.zeros(16, 3), torch.zeros(5, 3)
    with torch.no_grad():
        out = student(hidden_states=torch.randn(1, 16, 8, generator=g), encoder_hidden_states=torch.randn(1, 5, 16, generator=g),
                      pooled_projections=torch.randn(1, 12, generator=g), timestep=torch.tensor([0.5]),
                      img_ids=img_ids, txt_ids=txt_ids, guidance=torch.tensor([3.5])).sample
    assert out.shape == (1, 16, 8) and torch.isfinite(out).all()
    with pytest.raises(UserError, match="SD3-class"):
        build_student("sd3_half", teacher)


@pytest.mark.parametrize("t5", [True, False], ids=["clip+t5", "clip-only"])
def test_sd3_pipeline_conditioning_is_diffusers_encode_prompt(tmp_path, t5):
    from diffusers import StableDiffusion3Pipeline
    from sd_configs import build_tiny_sd3_pipeline

    from aria_hpc.conditioning.encoders import open_text_encoder
    from aria_hpc.models.pipeline import read_layout

    path = build_tiny_sd3_pipeline(tmp_path / "sd3", t5=t5)
    layout = read_layout(path)
    assert layout.family == "sd3" and len(layout.text_encoders) == (3 if t5 else 2)
    prompts = ["a photo of a red circle", "blue square", ""]
    ours = open_text_encoder(path, None).encode(prompts)
    pipe = StableDiffusion3Pipeline.from_pretrained(path, **({} if t5 else {"text_encoder_3": None, "tokenizer_3": None}))
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
    assert ours.tokens.shape == tuple(embeds.shape) and ours.pooled.shape == tuple(pooled.shape)
    assert np.allclose(ours.tokens, embeds.numpy(), atol=1e-6) and np.allclose(ours.pooled, pooled.numpy(), atol=1e-6)
    assert ours.mask.all() and not np.allclose(ours.tokens[0], ours.tokens[1])
    from aria_hpc.models.teacher import load_teacher

    teacher = load_teacher(path, {"density": "uniform"})  # the denoiser: the transformer at sigma(t) * T
    assert teacher.component == "transformer" and teacher.time.density == "uniform"
    assert teacher.time.sigmas[-1] == 1.0 and teacher.scheduler.config.shift == 3.0
    x, t = torch.randn(2, 16, 8, 8), np.array([10, 900])
    tokens, pooled = torch.from_numpy(ours.tokens[:2]), torch.from_numpy(ours.pooled[:2])
    with torch.no_grad():
        got = teacher.unet(x, torch.from_numpy(t), tokens, added_cond_kwargs={"text_embeds": pooled}).sample
        want = pipe.transformer(hidden_states=x, timestep=torch.from_numpy(teacher.time.sigma(t) * 1000).float(),
                                encoder_hidden_states=tokens, pooled_projections=pooled).sample
    assert torch.allclose(got, want, atol=1e-6)
    if t5:  # embed and regions run on it through the CLI, and store exactly that conditioning
        import h5py
        import yaml

        from aria_hpc.cli import main

        (tmp_path / "caps.txt").write_text("\n".join(prompts[:2] + ["a photo of a blue circle", "red square"]) + "\n")
        config = tmp_path / "sd3.yaml"
        config.write_text(yaml.safe_dump({"teacher": {"dir": str(path)}, "pool": {"files": [str(tmp_path / "caps.txt")]},
                                          "embed": {"dir": str(tmp_path / "emb")},
                                          "regions": {"path": str(tmp_path / "emb" / "regions.h5"), "k": 2, "niter": 3}}))
        assert main(["embed", str(config), "--quiet"]) == 0 and main(["regions", str(config)]) == 0
        with h5py.File(tmp_path / "emb" / "shard-00000-of-00001.h5", "r") as f:
            assert np.allclose(f["tokens"][:2], embeds[:2].numpy(), atol=1e-3)  # stored as float16


def test_flow_sampler_is_the_sd3_pipelines_own(tmp_path):
    from diffusers import StableDiffusion3Pipeline
    from sd_configs import build_tiny_sd3_pipeline

    from aria_hpc.conditioning.encoders import open_text_encoder
    from aria_hpc.models.flow import flow_sample

    path = build_tiny_sd3_pipeline(tmp_path / "sd3")
    pipe = StableDiffusion3Pipeline.from_pretrained(path)
    encoder = open_text_encoder(path, None)
    prompts = ["a photo of a red circle", "blue square"]
    text, null = encoder.encode(prompts), encoder.encode([""])
    size = pipe.transformer.config.sample_size
    latents = torch.randn(2, 16, size, size, generator=torch.Generator().manual_seed(0))
    for guidance in (1.0, 7.0):
        theirs = pipe(prompts, negative_prompt="", num_inference_steps=4, guidance_scale=guidance, latents=latents,
                      output_type="latent").images
        ours = flow_sample(pipe.transformer, pipe.scheduler, torch.from_numpy(text.tokens), torch.from_numpy(text.pooled),
                           latents, steps=4, guidance=guidance, null_tokens=torch.from_numpy(null.tokens),
                           null_pooled=torch.from_numpy(null.pooled))
        assert torch.allclose(ours, theirs, atol=1e-5), (guidance, (ours - theirs).abs().max())
    assert not torch.allclose(ours, latents)


def test_a_flux_pipeline_directory_is_refused_in_one_line(tmp_path):
    """Flux-class pipelines wait (README section 8): reading one names the reason, not a traceback."""
    import json

    from aria_hpc.models.pipeline import read_layout

    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"]}))
    with pytest.raises(UserError, match="FluxPipeline: flow-matching teachers are SD3-class .* Flux-class ones wait"):
        read_layout(tmp_path)
