"""NoisyTune (Wu et al. 2022, arXiv 2202.12024): perturb a pretrained model once before fine-tuning.

Each pretrained tensor W becomes W + U(-λ/2, λ/2) · std(W), elementwise, with std(W) the tensor's own
standard deviation; fine-tuning then proceeds as usual. λ = 0.15 in the paper.

Which tensors: the paper says "parameter matrices"; its public code perturbs every parameter tensor,
biases and layer-norm gains included, and so does lmkit, with two exceptions that have no spread to
scale by: one-element tensors and tensors whose elements are all equal (std 0, such as a layer norm's
gain still at its init of ones). A tensor shared by two modules (a tied embedding and output
projection) is perturbed once. The fresh task head is left alone: it has nothing pretrained to shake.
"""
from __future__ import annotations

from ..errors import LmkitError


def check_noise_level(noise: float) -> None:
    """λ must lie in [0, 1): the noise is a fraction of each tensor's spread."""
    if not 0.0 <= noise < 1.0:
        raise LmkitError(f"--noisy-tune must lie in [0, 1), got {noise}; the paper's value is 0.15 (0 turns it off)")


def perturb(model, noise: float, seed: int, *, skip_prefix: str = "objectives.") -> list[str]:
    """Add U(-noise/2, noise/2) · std(W) to every perturbable parameter W of `model`, in place.

    `seed` seeds a generator of its own (the fine-tuning run's other randomness is untouched), so the
    same seed gives the same noise. Parameters whose names start with `skip_prefix` (the new task head)
    are left alone. Returns the names of the perturbed tensors, in `named_parameters` order (which
    lists a shared tensor once, under its first name).

    Raises LmkitError when `noise` is outside [0, 1).
    """
    import torch

    check_noise_level(noise)
    if noise == 0.0:
        return []
    generator = torch.Generator().manual_seed(seed)
    perturbed = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(skip_prefix) or parameter.numel() < 2:
                continue
            std = parameter.detach().float().std()
            if std == 0:
                continue
            uniform = torch.rand(parameter.shape, generator=generator, dtype=torch.float32)
            parameter.add_(((uniform - 0.5) * noise * std).to(parameter.device, parameter.dtype))
            perturbed.append(name)
    return perturbed
