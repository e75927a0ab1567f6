"""The world's aesthetic head: LAION's layout over the world CLIP's image embedding, clean above degraded.

LAION's head regresses human ratings from the CLIP ViT-L/14 embedding. The
world has no raters, so the head regresses what a rater of these images would
say: a clean render scores ``CLEAN_SCORE``, one spoilt by the artefacts people
see in renders (blur, noise, colour bleeding, and an over-trained LoRA's burnt
colours, colour cast, blocky or speckled texture) scores lower by its severity.
It is saved in LAION's state-dict layout and read by ``load_aesthetic_head``,
the code that reads ``sac+logos+ava1-l14-linearMSE.pth``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluate.aesthetic import AestheticHead
from evaluate.clip_scores import l2_normalize
from evaluate.world_clip import normalise
from evaluate.world_degrade import CLEAN_SCORE, degrade
from train.data import world
from train.models.fitting import Fitting, Progress


@torch.no_grad()
def _embed(clip, x: Tensor) -> Tensor:
    features = clip.get_image_features(pixel_values=normalise(x))
    return l2_normalize(getattr(features, "pooler_output", features))


def train_aesthetic(clip, *, steps: int, batch_size: int, lr: float, seed: int,
                    progress: Progress | None = None) -> AestheticHead:
    """LAION's recipe (MSE on the L2-normalised embedding) with the world's targets; the CLIP stays frozen."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    head = AestheticHead(clip.config.projection_dim)
    scenes = world.scenes(seed, shapes=world.SHAPES)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    head.train()
    fitting = Fitting("aesthetic", optimizer, schedule, steps, progress=progress)
    for step in range(steps):
        clean = torch.from_numpy(world.to_array([world.render(next(scenes)) for _ in range(batch_size // 2)]))
        spoilt, spoilt_targets = degrade(clean, g)
        x = torch.cat([clean, spoilt])
        targets = torch.cat([torch.full((len(clean),), CLEAN_SCORE), spoilt_targets])
        fitting.step(step, F.mse_loss(head(_embed(clip, x)).squeeze(-1), targets))
    return head.eval()
