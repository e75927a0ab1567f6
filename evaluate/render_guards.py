"""The guards a render runs under: one image's U-Net rows at a time, and training's state kept.

``per_image_unet`` makes an image bit-identical at any batch size (GEMM and conv
kernels pick reduction orders by batch shape); ``preserved_training_state`` puts
RNG states, train/eval modes and devices back as training left them.
Both are used through evaluate.render.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device



@contextlib.contextmanager
def per_image_unet(unet: torch.nn.Module, images: int) -> Iterator[None]:
    """Evaluate ``unet`` one image at a time: rows i, i+images, ... (its CFG pair) together, the same shapes at any batch size."""
    forward = unet.forward  # accelerate's autocast wrapper when it set one on the instance
    own_forward = "forward" in vars(unet)

    def forward_per_image(sample, *args, return_dict=True, **kwargs):
        rows = sample.shape[0]
        if images <= 1 or rows % images:
            return forward(sample, *args, return_dict=return_dict, **kwargs)

        def image_rows(value, index):
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == rows:
                return value.index_select(0, index)  # a contiguous copy, as a batch of one would be
            if isinstance(value, dict):  # SDXL's added_cond_kwargs: pooled embeddings and size ids
                return {key: image_rows(item, index) for key, item in value.items()}
            return value

        outputs = []
        for image in range(images):
            index = torch.arange(image, rows, images, device=sample.device)
            picked_args = [image_rows(a, index) for a in args]
            picked_kwargs = {k: image_rows(v, index) for k, v in kwargs.items()}
            outputs.append(forward(image_rows(sample, index), *picked_args, return_dict=False, **picked_kwargs)[0])
        # outputs[i][j] is row i + j * images.
        merged = torch.stack(outputs, dim=1).reshape(rows, *outputs[0].shape[1:])
        return UNet2DConditionOutput(sample=merged) if return_dict else (merged,)

    unet.forward = forward_per_image
    try:
        yield
    finally:
        if own_forward:
            unet.forward = forward
        else:
            del unet.forward


@contextlib.contextmanager
def preserved_training_state(modules: dict[str, torch.nn.Module]) -> Iterator[None]:
    """Restore RNG states, every submodule's train/eval mode and each module's device on exit."""
    modes = {sub: sub.training for module in modules.values() for sub in module.modules()}
    devices = {name: _module_device(module) for name, module in modules.items()}
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        for name, module in modules.items():
            if _module_device(module) != devices[name]:
                module.to(devices[name])
        for sub, training in modes.items():
            sub.training = training
