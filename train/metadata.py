"""The kohya ``ss_*`` metadata of a saved LoRA: what A1111 and ComfyUI show about it."""

from __future__ import annotations

import math
import time
from pathlib import Path

from train import data, optimizers
from train.config import RunConfig


def training_metadata(recipe, *, step: int, epoch: int, name: str) -> dict[str, object]:
    """Metadata of a checkpoint of ``recipe`` (a LoRATrainingRecipe after setup) at this step."""
    cfg: RunConfig = recipe.cfg
    model, records, first = recipe.model, recipe.records, recipe.blueprints[0]
    total_steps, steps_per_epoch = recipe.total_steps, recipe.steps_per_epoch
    # SD2.x text encoders (OpenCLIP ViT-H) are 1024 wide; SD1.x's are 768. SDXL is not "v2" to kohya.
    is_sdxl = model.architecture == "sdxl"
    is_v2 = not is_sdxl and getattr(model.text_encoder.config, "hidden_size", 768) == 1024
    version = "sdxl_base_v1-0" if is_sdxl else ("sd_v2" if is_v2 else "sd_v1")
    return {
        "ss_output_name": name,
        "ss_training_started_at": recipe.started_at,
        "ss_steps": step,
        "ss_epoch": epoch,
        "ss_max_train_steps": total_steps,
        "ss_num_epochs": math.ceil(total_steps / steps_per_epoch),
        "ss_seed": cfg.train.seed,
        "ss_learning_rate": cfg.optimizer.learning_rate,
        "ss_unet_lr": cfg.optimizer.unet_lr or cfg.optimizer.learning_rate,
        "ss_text_encoder_lr": cfg.optimizer.text_encoder_lr or cfg.optimizer.learning_rate,
        "ss_optimizer": optimizers.describe_optimizer(cfg.optimizer),
        "ss_lr_scheduler": cfg.scheduler.name,
        "ss_gradient_accumulation_steps": cfg.train.gradient_accumulation_steps,
        "ss_gradient_checkpointing": cfg.train.gradient_checkpointing,
        "ss_mixed_precision": cfg.train.mixed_precision,
        "ss_min_snr_gamma": cfg.train.min_snr_gamma,
        "ss_max_grad_norm": cfg.train.max_grad_norm,
        "ss_batch_size_per_device": first.batch_size,
        "ss_resolution": f"({first.resolution[0]}, {first.resolution[1]})",
        "ss_num_train_images": data.count_samples_with_repeats(records),
        "ss_dataset_dirs": data.dataset_dirs_metadata([r for r in records if not r.subset.is_reg]),
        "ss_reg_dataset_dirs": data.dataset_dirs_metadata([r for r in records if r.subset.is_reg]),
        "ss_num_reg_images": sum(r.subset.is_reg for r in records),
        "ss_tag_frequency": data.tag_frequency(records),
        "ss_cache_latents": cfg.train.cache_latents,
        "ss_prior_loss_weight": cfg.train.prior_loss_weight,
        "ss_flip_aug": any(r.subset.flip_aug for r in records),
        "ss_color_aug": any(r.subset.color_aug for r in records),
        "ss_random_crop": any(r.subset.random_crop for r in records),
        "ss_sd_model_name": Path(model.source).name,
        "ss_new_sd_model_hash": model.model_hash,
        "ss_v2": is_v2,
        "ss_base_model_version": version,
        "ss_prediction_type": model.prediction_type,
        "ss_network_weights": cfg.train.network_weights,
        **recipe.noise_sampler.metadata(),
    }


def run_stats(recipe) -> dict[str, object]:
    """The run summary's figures (train_summary.json): steps, speed, what was encoded or cached."""
    elapsed = time.time() - getattr(recipe, "started_at", time.time())
    steps = getattr(recipe, "final_step", 0)
    return {
        "steps": steps,
        "epochs": getattr(recipe, "final_epoch", 0),
        "last_loss": getattr(recipe, "last_loss", None),
        "num_images": len(recipe.records),
        "num_validation_images": len(recipe.val_records),
        "latent_encodes": recipe.latents.encode_count,
        "text_encodes": recipe.text_cache.encode_count if recipe.text_cache else 0,
        "text_encoder_outputs_cached": recipe.text_cache is not None,
        "train_seconds": round(elapsed, 3),
        "steps_per_second": round(steps / elapsed, 3) if elapsed > 0 else None,
    }


def describe_plan(recipe) -> str:
    """One log line on what the run will do: images, repeats, buckets, steps, trainable parameters."""
    records = recipe.records
    return (
        f"{len(records)} images, {data.count_samples_with_repeats(records)} samples per epoch with repeats, "
        f"{len({(r.dataset_index, r.bucket) for r in records})} buckets; {recipe.steps_per_epoch} optimizer "
        f"steps per epoch, {recipe.total_steps} in total; "
        f"{sum(p.numel() for group in recipe.trainable.values() for p in group)} trainable "
        f"{recipe.network.family} parameters on {recipe.device}"
    )
