"""Self-describing HDF5: what every file aria_hpc writes holds, readable with `h5dump -H` alone.

Each file carries `aria_hpc_file` (its kind) and `description`; each dataset a `description`, and
`units` where a number has them. The text lives here, once, next to nothing else; the writers call
`describe(f, kind)` before the file is closed. Attributes on datasets are not part of any digest.
"""

from __future__ import annotations

import json

SPLIT_CODES = "split codes: 0 = seen (has paired images), 1 = under-represented, 2 = unseen (held out: no paired " \
              "image), -1 = unlabelled (a user's prompt file)"

FILES = {
    "prompts": (
        "The prompt pool: one row per distinct non-empty prompt, in the order first read. Row i is prompt "
        "index i everywhere else (embeddings rows, regions/region, bank cond).",
        {"text": ("the prompt, UTF-8", None),
         "split": (f"evaluation group of the prompt; {SPLIT_CODES}", None),
         "combination": ("id of the world's attribute combination the prompt describes (-1 when unlabelled)", None)}),
    "embeddings": (
        "Text-encoder embeddings of rows [start, stop) of the prompt pool (attrs start, stop), for ARIA's "
        "regions and the student's conditioning.",
        {"pooled": ("mean-pooled, L2-normalised sentence embedding of each prompt (row r = prompt start + r)",
                    "unitless, float16"),
         "tokens": ("per-token hidden states of the text encoder, padded to max_length", "unitless, float16"),
         "mask": ("attention mask of tokens: true for a real token, false for padding", None)}),
    "regions": (
        "ARIA's regions: k-means over the pooled prompt embeddings, or over teacher signatures when attr features "
        "is teacher (attrs k, niter, seed, spherical, objective).",
        {"centroids": ("region centres in embedding space, one row per region", "unitless"),
         "region": ("region of each prompt of the pool (row i = prompt index i)", None),
         "sizes": ("number of prompts in each region", "prompts"),
         "representatives": ("prompt indices nearest each centroid and inside its region (-1 = none)", None)}),
    "signatures": (
        "Teacher signatures of rows [start, stop) of the prompt pool (attrs start, stop): the teacher's clean-image "
        "estimates on fixed probe inputs (attr probe: timesteps as fractions of T, noises per timestep, projection "
        "dim and seed), concatenated and randomly projected (aria_hpc.build.signatures). Features of "
        "regions.features=teacher.",
        {"signature": ("random projection of the teacher's x0 estimates on the probes (row r = prompt start + r)",
                       "unitless, float16")}),
    "paired set": (
        "Rows [start, stop) of a pipeline teacher's paired set (aria_hpc.pairs): latents the teacher generated for "
        "pool prompts (attr settings: source, steps, guidance_scale, seed, dtype), or images encoded by its VAE, "
        "with the pool prompt each was made from.",
        {"latents": ("the pipeline's latent of each row (the space its UNet or transformer denoises; VAE shift "
                     "and scaling factors applied)",
                     "latent units, pairs.dtype"),
         "prompt_ids": ("the prompt each row was made from (its caption)", "row of prompts.h5")}),
    "x0": (
        "The paired set's clean inputs x0 (attr space: pixel, or latent when VAE-encoded) and their captions. "
        "Bank column `image` indexes the rows of `x0`.",
        {"x0": ("clean image (or VAE latent) of each paired image, channels first", "pixel values in [-1, 1], "
                "or scaled VAE latents"),
         "captions": ("prompt indices of each paired image's captions (row i of x0 is described by the prompts "
                      "captions[i, :])", None)}),
    "bank_shard": (
        "One shard of the teacher-output bank: one row per tuple (image, cond, t, seed) and the teacher's "
        "output on it. x_t is not stored: it is regenerated exactly as "
        "x_t = scheduler.add_noise(x0[image], randn(shape of x0, torch generator seeded with `seed`), t) "
        "(aria_hpc.bank.noise.noised_inputs; for a flow-matching teacher, x_t = (1 - sigma(t)) x0 + sigma(t) noise "
        "with sigma its scheduler's ascending training table, aria_hpc.models.flow.FlowTime). Attr digest: "
        "sha256 over the columns and outputs "
        "(aria_hpc.bank.integrity.shard_digest); fingerprint: the teacher, scheduler, encoder, pool and "
        "image set the rows belong to.",
        {"entry": ("global id of the tuple (unique across the bank's shards)", None),
         "image": ("row of x0.h5's x0 the tuple noises", None),
         "cond": ("prompt index the teacher was conditioned on; -1 = the null (empty) text, i.e. unconditional",
                  None),
         "region": ("ARIA region of cond (-1 when cond is -1)", None),
         "t": ("diffusion timestep of x_t (a flow-matching teacher: the index of its noise level sigma in the "
               "scheduler's training table, ascending)", "scheduler timesteps, 0 .. num_train_timesteps - 1"),
         "seed": ("seed of the noise of x_t (see the file's description for how x_t is regenerated)", None),
         "paired": ("true when cond is the image's own caption (paired), false for random conditioning", None),
         "output": ("teacher prediction on (x_t, t, cond); its meaning is the attr prediction_type", "float16"),
         "features": ("group: teacher activations of the named blocks on the same inputs, for feature KD",
                      "float16")}),
}


def describe(f, kind: str, **attrs) -> None:
    """Write the kind's description into an open, writable h5py File (and any extra file attrs)."""
    text, datasets = FILES[kind]
    f.attrs["aria_hpc_file"] = kind
    f.attrs["description"] = text
    for key, value in attrs.items():
        f.attrs[key] = value
    for name, (what, units) in datasets.items():
        if name not in f:
            continue
        # a group (bank features) describes itself and each of its datasets
        members = [f[name]] + ([f[name][k] for k in f[name]] if hasattr(f[name], "keys") else [])
        for obj in members:
            obj.attrs["description"] = what if obj is members[0] else f"{what}: block {obj.name.split('/')[-1]}"
            if units:
                obj.attrs["units"] = units


def prediction_type(fingerprint: dict) -> str:
    """The teacher scheduler's prediction type (epsilon, v_prediction, sample; flow = the velocity
    noise - x0 of a flow-matching teacher) from a bank fingerprint."""
    try:
        config = json.loads(fingerprint.get("scheduler_config", "{}"))
        if config.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
            return "flow"
        return str(config.get("prediction_type", "unknown"))
    except (TypeError, ValueError):
        return "unknown"
