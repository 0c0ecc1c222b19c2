"""The UNet configs Stable Diffusion ships (diffusers format), as published in each model's
unet/config.json, and tiny versions of whole pipelines for end-to-end tests."""

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}


# --- tiny real pipelines -------------------------------------------------------------------------

# SD-1.5's scheduler_config.json (PNDM) and SD-2.1's (DDIM, v-prediction), SDXL-base-1.0's (Euler).
SD15_SCHEDULER = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
                  "steps_offset": 1, "trained_betas": None, "clip_sample": False}
SD21_SCHEDULER = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                  "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
SDXL_SCHEDULER = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                  "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                  "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}

PIXELS = 16  # images 16x16, latents 8x8 (a two-stage VAE halves once)


def clip_vocab(out):
    """A CLIP byte-level BPE vocabulary with no merges (each character a token), written to out."""
    import json

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def tiny_tokenizer(tmp, pad_token=None):
    from transformers import CLIPTokenizer

    vocab = clip_vocab(tmp)
    kwargs = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=40, **kwargs), vocab


def tiny_text_config(vocab, width=32, projection=None):
    from transformers import CLIPTextConfig

    extra = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=40, bos_token_id=vocab["<|startoftext|>"],
                          eos_token_id=vocab["<|endoftext|>"], **extra)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=PIXELS, scaling_factor=0.18215)


def build_tiny_pipeline(out, kind: str):
    """Save a tiny real pipeline of `kind` (sd15, sd21 or sdxl) with save_pretrained; returns its path."""
    import torch
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer, vocab = tiny_tokenizer(out.parent / f"{out.name}-vocab")
    vae = tiny_vae()
    latent = PIXELS // 2
    if kind == "sdxl":
        tokenizer_2, _ = tiny_tokenizer(out.parent / f"{out.name}-vocab2", pad_token="!")
        unet = UNet2DConditionModel(**dict(
            SDXL_UNET, block_out_channels=[32, 64], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[2, 4], norm_num_groups=8,
            transformer_layers_per_block=[1, 2], cross_attention_dim=64, addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8, sample_size=latent, layers_per_block=1))
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=CLIPTextModel(tiny_text_config(vocab)), tokenizer=tokenizer,
            text_encoder_2=CLIPTextModelWithProjection(tiny_text_config(vocab, projection=32)), tokenizer_2=tokenizer_2,
            unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER))
    else:
        unet = UNet2DConditionModel(**dict(
            SD15_UNET, block_out_channels=[32, 64, 64],
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], norm_num_groups=8,
            attention_head_dim=4 if kind == "sd15" else [2, 4, 4], cross_attention_dim=32, sample_size=latent,
            layers_per_block=2, use_linear_projection=kind == "sd21"))
        # from_config, as diffusers loads them: the shipped files carry keys a class does not take
        scheduler = (PNDMScheduler if kind == "sd15" else DDIMScheduler).from_config(
            SD15_SCHEDULER if kind == "sd15" else SD21_SCHEDULER)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(tiny_text_config(vocab)), tokenizer=tokenizer,
                                       unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


def tiny_t5_tokenizer(words):
    """A T5TokenizerFast over a tiny Unigram vocabulary (the tokenizers library; T5's pad / eos / unk ids
    0 / 1 / 2 and its Metaspace pre-tokenizer), appending </s> as T5's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = sorted({w for text in words for w in text.split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in pieces] + [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def build_tiny_sd3_pipeline(out, *, t5: bool = True, words=("a", "photo", "of", "red", "blue", "circle", "square")):
    """Save a tiny real StableDiffusion3Pipeline (two CLIPs with projections, an optional T5, an MMDiT
    transformer, a 16-channel VAE with a shift factor, SD3's flow scheduler) with save_pretrained."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer, vocab = tiny_tokenizer(out.parent / f"{out.name}-vocab")
    tokenizer_2, _ = tiny_tokenizer(out.parent / f"{out.name}-vocab2", pad_token="!")
    t5_tokenizer = tiny_t5_tokenizer(words)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                        latent_channels=16, norm_num_groups=8, sample_size=PIXELS, scaling_factor=1.5305,
                        shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    transformer = SD3Transformer2DModel(sample_size=PIXELS // 2, patch_size=2, in_channels=16, num_layers=3,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=48,
                                        caption_projection_dim=16, pooled_projection_dim=32, out_channels=16,
                                        pos_embed_max_size=8)
    t5_model = T5EncoderModel(T5Config(vocab_size=t5_tokenizer.vocab_size, d_model=48, d_kv=8, d_ff=64, num_layers=1,
                                       num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                       eos_token_id=1, decoder_start_token_id=0)) if t5 else None
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=CLIPTextModelWithProjection(tiny_text_config(vocab, projection=16)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(tiny_text_config(vocab, width=24, projection=16)),
        tokenizer_2=tokenizer_2, text_encoder_3=t5_model, tokenizer_3=t5_tokenizer if t5 else None)
    pipe.save_pretrained(out)
    return out


def tiny_clip_metric_model(out):
    """A tiny transformers CLIPModel with its processor (image processor + tokenizer), saved."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    tokenizer, vocab = tiny_tokenizer(out.parent / f"{out.name}-vocab")
    torch.manual_seed(1)
    config = CLIPConfig(text_config=tiny_text_config(vocab).to_dict(), projection_dim=16,
                        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, image_size=32, patch_size=8).to_dict())
    CLIPModel(config).save_pretrained(out)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(out)
    return out


def tiny_inception(path):
    """A random network with the TorchScript Inception's call convention (uint8 NCHW images of any
    size -> features with return_features=True), saved as TorchScript like inception-2015-12-05.pt."""
    import torch
    from torch import nn

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, stride=2)

        def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            x = nn.functional.interpolate(img.float() / 255.0, size=(32, 32), mode="bilinear", align_corners=False)
            return self.conv(x).relu().mean(dim=(2, 3))

    torch.manual_seed(2)
    torch.jit.script(Features()).save(str(path))
    return path
