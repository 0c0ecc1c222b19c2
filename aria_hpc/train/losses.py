"""Distillation losses, pure: tensors in, per-sample losses out (reduction="none").

Shapes: outputs (B, C, H, W); features (B, C_f, H_f, W_f); per-sample losses (B,).
"""

from __future__ import annotations

import torch


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over all but the batch dimension of (a - b)^2: (B,)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def output_kd(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """RC / ARIA's distillation term l_i = mean((eps_student - eps_teacher)^2)."""
    return per_sample_mse(student_out, teacher_out)


def feature_kd(student_features: dict[str, torch.Tensor], teacher_features: dict[str, torch.Tensor]) -> torch.Tensor:
    """BK-SDM's feature term: the sum over blocks of the per-sample MSE of (adapted) block outputs."""
    terms = [per_sample_mse(student_features[k], teacher_features[k]) for k in teacher_features]
    return torch.stack(terms).sum(0)


def task_loss(student_out: torch.Tensor, target: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
    """The denoising loss against the true target, on paired samples only (zero elsewhere)."""
    return per_sample_mse(student_out, target) * paired.float()


def task_target(teacher, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The true denoising target of x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise under the teacher's
    diffusers scheduler: the noise (epsilon prediction) or the velocity (v-prediction); for a flow
    teacher, the flow velocity (models.flow.FlowTime.task_target)."""
    if teacher.time is not None:
        return teacher.time.task_target(x_t, x0, t)
    scheduler = teacher.scheduler
    abar = scheduler.alphas_cumprod.to(x0.device)[t].float()
    shape = (-1, *([1] * (x0.dim() - 1)))
    noise = (x_t - abar.sqrt().view(shape) * x0) / (1 - abar).sqrt().view(shape)
    return scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise


def combine(output_kd_loss: torch.Tensor, weights: dict[str, float], feature_kd_loss: torch.Tensor | None = None,
            task: torch.Tensor | None = None, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The batch objective: weighted per-sample terms, times optional importance weights, averaged."""
    total = weights["output_kd"] * output_kd_loss
    if feature_kd_loss is not None:
        total = total + weights["feature_kd"] * feature_kd_loss
    if task is not None:
        total = total + weights["task"] * task
    if sample_weights is not None:
        total = total * sample_weights
    return total.mean()
