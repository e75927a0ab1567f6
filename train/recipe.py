"""The LoRA training recipe: setup, train (with evaluations), save, read top to bottom.

Everything a user can get wrong (config values, dataset files, model path,
optimizer name, resume file, prompts, objective) is checked in ``preflight``
before any model is loaded, so bad input costs no GPU time. All randomness in
the loop comes from the recipe's own generators seeded from ``train.seed``,
and evaluation uses its own, so the same config gives the same LoRA bytes with
evaluation on or off, whatever else runs in the process.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from evaluate.evaluator import Evaluator, build_training_evaluator
from evaluate.render import preserved_training_state
from evaluate.reporter import NullReporter, Reporter, RunPruned
from evaluate.validation import validation_loss
from train import data, optimizers, schedulers
from train.cache import LatentCache, TextEmbeddingCache
from train.config import RunConfig
from train.loss import per_sample_loss
from train.metadata import describe_plan, run_stats, training_metadata
from train.models.conditioning import TextConditioning, UNetConditioning, batch_time_ids, encode_captions
from train.models.loading import BaseModel, load_base_model
from train.networks import NetworkTargets
from train.preflight import CheckedRun, check_run
from train.run_log import RunLog

log = logging.getLogger(__name__)
# The frozen base runs in the mixed-precision dtype; the LoRA weights stay fp32.
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run cannot recover."""


class LoRATrainingRecipe:
    def __init__(
        self,
        cfg: RunConfig,
        output_dir: Path,
        reporter: Reporter | None = None,
        base_model: BaseModel | None = None,
        on_step: Callable[[int, LoRATrainingRecipe], None] | None = None,
        checked: CheckedRun | None = None,
    ):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.cache_dir = Path(cfg.paths.cache_dir)
        self.reporter = reporter or NullReporter()
        self.checkpoints: dict[int, Path] = {}  # step -> file, so an evaluation reuses a save at its step
        self.evaluator: Evaluator | None = None
        # A sweep worker keeps one pristine base loaded between trials; each trial trains a deep copy.
        self.base_model = base_model
        self.on_step = on_step  # called after every optimizer step (sweep progress, fault injection)
        self.checked = checked  # the entry point's pre-flight, run before this module was imported

    # ------------------------------------------------------------------ setup
    def preflight(self) -> None:
        """Check every user input without loading a model (train/preflight.py); keep what it built."""
        checked = self.checked = self.checked or check_run(self.cfg)
        self.blueprints, self.records, self.val_records = checked.blueprints, checked.records, checked.val_records
        self.use_text_cache, self.prompts = checked.use_text_cache, checked.prompts
        self.device, self.noise_sampler, self.network = checked.device, checked.noise_sampler, checked.network

    def setup(self) -> None:
        self.preflight()
        self.network.log_kohya_differences()  # once per run (a sweep's trial checks run preflight alone)
        cfg = self.cfg
        # accelerate keeps process-wide state; a worker running trial after trial must start clean.
        AcceleratorState._reset_state(reset_partial_state=True)
        self.accelerator = Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
            cpu=self.device.type == "cpu",
        )
        self.noise_generator = torch.Generator("cpu").manual_seed(cfg.train.seed)
        self.rng = random.Random(cfg.train.seed)
        self.model: BaseModel = (
            copy.deepcopy(self.base_model) if self.base_model is not None else load_base_model(cfg.model)
        )
        self.trainable = self._setup_network()
        self.run_log = RunLog.open(self.output_dir, self.checked.logger, cfg)
        self._setup_caches()
        self._setup_optimizer()
        self._setup_evaluation()

    def _setup_network(self) -> dict[str, list[torch.nn.Parameter]]:
        cfg, model = self.cfg, self.model
        self.weight_dtype = WEIGHT_DTYPES[cfg.train.mixed_precision]
        # Passing a dtype only when casting keeps diffusers from warning about fp32 modules.
        cast = {} if self.weight_dtype == torch.float32 else {"dtype": self.weight_dtype}
        encoders = [e for e in (model.text_encoder, model.text_encoder_2) if e is not None]
        for module in (model.unet, *encoders):
            module.to(self.device, **cast)
        # The network's own weights stay fp32 whatever dtype the frozen base runs in.
        trainable = self.network.apply(NetworkTargets.of(model), seed=cfg.train.seed)
        if cfg.train.network_weights:
            self.network.load(cfg.train.network_weights)
        trained_encoders = encoders if trainable["text_encoder"] else []
        if cfg.train.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
            for encoder in trained_encoders:
                encoder.gradient_checkpointing_enable()
        model.unet.train()
        for encoder in encoders:
            encoder.train(encoder in trained_encoders)
        self.trained_modules = [model.unet, *trained_encoders]
        return trainable

    def _setup_caches(self) -> None:
        cfg, model = self.cfg, self.model
        self.caption_processors = {
            r.subset: data.CaptionProcessor.from_subset(r.subset) for r in self.records + self.val_records
        }
        self.current_step = 0  # optimizer steps done: drives kohya's token warm-up
        # The VAE stays fp32 (as loaded): SD's VAE overflows in fp16.
        model.vae.to(self.device)
        self.latents = LatentCache(
            self.cache_dir / "latents", model.vae, model.vae_identity, data.load_image_tensor, self.device
        )
        if cfg.train.cache_latents:
            flips = [(r, f) for r in self.records for f in ((False, True) if r.subset.flip_aug else (False,))]
            flips += [(r, False) for r in self.val_records]
            with self.run_log.progress("caching latents", total=len(flips)) as advance:
                self.latents.prepare(flips, progress=advance)
            model.vae.to("cpu")  # not needed on the device again
        self.text_cache = None
        if self.use_text_cache and not self.trainable["text_encoder"]:
            # Embeddings depend on the encoder's weights and the dtype it runs in.
            identity = f"{model.model_hash}:{self.weight_dtype}"
            self.text_cache = TextEmbeddingCache(self.cache_dir / "text", identity, self._encode_text)
            self.text_cache.prepare(self._fixed_caption(r) for r in self.records + self.val_records)

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        groups = optimizers.param_groups_for(self.trainable["unet"], self.trainable["text_encoder"], cfg.optimizer)
        self.optimizer = optimizers.build_optimizer(cfg.optimizer, groups)
        batch_sizes = [b.batch_size for b in self.blueprints]
        batches_per_epoch = data.steps_per_epoch(self.records, batch_sizes)
        self.steps_per_epoch = math.ceil(batches_per_epoch / cfg.train.gradient_accumulation_steps)
        limits = [cfg.train.max_train_steps] if cfg.train.max_train_steps else []
        if cfg.train.max_train_epochs:
            limits.append(cfg.train.max_train_epochs * self.steps_per_epoch)
        self.total_steps = min(limits)
        self.lr_scheduler = schedulers.build_scheduler(cfg.scheduler, self.optimizer, self.total_steps)
        log.info(describe_plan(self))
        prepared = self.accelerator.prepare(*self.trained_modules, self.optimizer, self.lr_scheduler)
        self.optimizer, self.lr_scheduler = prepared[-2], prepared[-1]

    def _setup_evaluation(self) -> None:
        ev = self.cfg.evaluate
        if not ev.enabled:
            return
        self.evaluator = build_training_evaluator(
            ev,
            prompts=self.prompts,
            model=self.model,
            device=self.device,
            dtype=self.weight_dtype,
            resolution=self.blueprints[0].resolution,
            reference_images=[r.path for r in self.records if not r.subset.is_reg],
            cache_dir=self.cache_dir / "clip",
            validation=self._validation_loss if ev.validation.enabled and self.val_records else None,
            logger=self.run_log.logger,
            out_dir=self.output_dir,
            strength=self.network.strength,
        )

    def _validation_loss(self) -> float:
        records, ev = self.val_records, self.cfg.evaluate.validation
        if self.cfg.train.cache_latents:
            latents = [self.latents.get(r, False, "deterministic") for r in records]
        else:
            latents = list(self.latents.encode_uncached([(r, False) for r in records], "deterministic", None))
        scale = self.model.vae.config.scaling_factor
        # In eval mode, so dropouts are off, and on a forked RNG, so training draws the same after it.
        with preserved_training_state({str(i): m for i, m in enumerate(self.trained_modules)}):
            for module in self.trained_modules:
                module.eval()
            with torch.no_grad():
                conditions = [self._conditioning([r], [False], [None], epoch=-1, augment=False) for r in records]
            return validation_loss(
                self._predict,
                [lat * scale for lat in latents],
                conditions,
                self.model.noise_scheduler,
                ev.timesteps,
                ev.seed,
                self.model.prediction_type,
            )

    # ------------------------------------------------------------------ train
    def train(self) -> Path:
        try:
            final = self._train_loop()
        except BaseException as err:
            # A failed or pruned run still leaves its summary and closes its logger runs.
            status = "pruned" if isinstance(err, RunPruned) else "failed"
            self._finish(None, status=status, reason=f"{type(err).__name__}: {err}")
            raise
        self._finish(final, status="completed")
        return final

    def _train_loop(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        tcfg, ev = cfg.train, cfg.evaluate
        params = [p for group in self.trainable.values() for p in group]
        batch_sizes = [b.batch_size for b in self.blueprints]
        self.started_at = time.time()
        # Dropouts draw from the global RNG (checkpointing replays it): seeded after setup's own draws.
        torch.manual_seed(cfg.train.seed)
        self.final_step, self.final_epoch = 0, 0
        step, epoch = 0, 0
        with self.run_log.progress("training", total=self.total_steps) as advance:
            while step < self.total_steps:
                for batch in data.plan_epoch(self.records, batch_sizes, epoch, cfg.train.seed):
                    self.current_step = step
                    with acc.accumulate(*self.trained_modules):
                        loss = self._loss(batch, epoch)
                        if not torch.isfinite(loss):
                            raise TrainingDiverged(f"loss is {loss.item()} at step {step + 1}")
                        acc.backward(loss)
                        if acc.sync_gradients and cfg.train.max_grad_norm > 0:
                            acc.clip_grad_norm_(params, cfg.train.max_grad_norm)
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    if not acc.sync_gradients:
                        continue
                    step += 1
                    self.final_step, self.final_epoch = step, epoch + 1
                    self._log_step(step, loss.item(), advance, self._max_norm())
                    if self.on_step is not None:
                        self.on_step(step, self)
                    if step >= self.total_steps:
                        break
                    name = f"{tcfg.output_name}-step{step:06d}"
                    self._periodic(step, step, epoch + 1, name, tcfg.save_every_n_steps, ev.every_n_steps)
                epoch += 1
                if step < self.total_steps:  # the final save and evaluation cover the last epoch
                    name = f"{tcfg.output_name}-{epoch:06d}"
                    self._periodic(epoch, step, epoch, name, tcfg.save_every_n_epochs, ev.every_n_epochs)
        final = self.save(step, epoch, cfg.train.output_name)
        if self.evaluator is not None:
            self._evaluate(step, epoch, final)
        return final

    def _max_norm(self) -> dict[str, float]:
        """kohya's scale_weight_norms after each optimizer step; its statistics go to the log."""
        max_norm = self.cfg.network.scale_weight_norms
        return self.network.apply_max_norm(max_norm).scalars() if max_norm else {}

    def _periodic(self, count: int, step: int, epoch: int, name: str, save_every, eval_every) -> None:
        """Save and/or evaluate every N steps (count=step) or epochs (count=epoch); an evaluation reuses a save."""
        if save_every and count % save_every == 0:
            self.save(step, epoch, name)
        if self.evaluator is not None and eval_every and count % eval_every == 0:
            self._evaluate(step, epoch, self.checkpoints.get(step) or self.save(step, epoch, name))

    def _evaluate(self, step: int, epoch: int, checkpoint: Path) -> None:
        result = self.evaluator.evaluate(step, epoch, checkpoint)
        log.info("evaluation at step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in result.scores.items()))
        self.reporter.report(result)
        if self.reporter.should_prune():
            value = f" (value {result.value:.4g})" if result.value is not None else ""
            raise RunPruned(f"pruned at step {step}{value}")

    def _loss(self, batch: list, epoch: int = 0) -> torch.Tensor:
        model = self.model
        flips = [r.subset.flip_aug and self.rng.random() < 0.5 for r in batch]
        # random_crop / color_aug: drawn per sample after its flip (cached latents allow neither).
        augments = [None if self.cfg.train.cache_latents else data.draw_augmentation(r, self.rng) for r in batch]
        latents = self._latents(batch, flips, augments)
        conditioning = self._conditioning(batch, flips, augments, epoch)
        noise = self.noise_sampler(latents, self.noise_generator)
        num_t = model.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_t, (len(batch),), generator=self.noise_generator)
        # ip_noise_gamma: extra noise on the input only, drawn after the timesteps as kohya does.
        perturbation = self.noise_sampler.input_perturbation(latents, self.noise_generator)
        loss = per_sample_loss(
            self._predict,
            model.noise_scheduler,
            latents,
            conditioning,
            noise,
            timesteps,
            model.prediction_type,
            self.cfg.train.min_snr_gamma,
            input_perturbation=perturbation,
        )
        # kohya's prior preservation: regularization images weigh prior_loss_weight.
        weights = [self.cfg.train.prior_loss_weight if r.subset.is_reg else 1.0 for r in batch]
        return (loss * torch.tensor(weights, device=loss.device)).mean()

    def _predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        dev, dtype = self.device, self.weight_dtype
        return self.model.unet(noisy.to(dev, dtype), timesteps.to(dev), **cond.kwargs(dev, dtype)).sample

    def _latents(self, batch: list, flips: list[bool], augments: list) -> torch.Tensor:
        mode = self.cfg.train.latent_sampling
        if self.cfg.train.cache_latents:
            latents = torch.stack(
                [self.latents.get(r, f, mode, self.noise_generator) for r, f in zip(batch, flips, strict=True)]
            )
        else:
            items = list(zip(batch, flips, augments, strict=True))
            latents = self.latents.encode_uncached(items, mode, self.noise_generator)
        return latents * self.model.vae.config.scaling_factor

    def _conditioning(self, batch: list, flips: list, augments: list, epoch: int, augment=True) -> UNetConditioning:
        """Text conditioning, plus SDXL's size ids from each image's size, crop and flip (as kohya)."""
        time_ids = batch_time_ids(batch, flips, augments) if self.model.architecture == "sdxl" else None
        return UNetConditioning(self._text(batch, epoch, augment), time_ids)

    def _text(self, batch: list, epoch: int, augment: bool = True) -> TextConditioning:
        if self.text_cache is not None:
            return TextConditioning.stack([self.text_cache.get(self._fixed_caption(r)) for r in batch])
        # Captions count epochs from 1, as kohya does (caption_dropout_every_n_epochs).
        # Without augmentation (validation) the training RNG is not touched.
        if augment:
            step, total = self.current_step, self.total_steps
            captions = [
                self.caption_processors[r.subset](r.caption, self.rng, epoch=epoch + 1, step=step, max_train_steps=total)
                for r in batch
            ]
        else:
            captions = [self._fixed_caption(r) for r in batch]
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.trainable["text_encoder"])):
            return self._encode_text(captions)

    def _fixed_caption(self, record) -> str:
        """The caption without its per-step parts (prefix/suffix kept): for the text cache and validation."""
        return self.caption_processors[record.subset].fixed(record.caption)

    def _encode_text(self, captions: list[str]) -> TextConditioning:
        return encode_captions(self.model, captions, self.device)

    def _log_step(self, step: int, loss: float, advance, extra: dict[str, float]) -> None:
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        self.last_loss = loss
        advance(1, loss=loss, lr=next(iter(lrs.values())))
        if step % self.cfg.train.log_every_n_steps == 0:
            self.run_log.scalars(step, {"loss/train": loss, **{f"lr/{k}": v for k, v in lrs.items()}, **extra})

    # ------------------------------------------------------------------- save
    def save(self, step: int, epoch: int, name: str) -> Path:
        path = self.output_dir / "checkpoints" / f"{name}{self.network.file_suffix}"
        self.network.save(path, training_metadata(self, step=step, epoch=epoch, name=name))
        self.checkpoints[step] = path
        log.info("saved %s (step %d, epoch %d)", path, step, epoch)
        return path

    def _finish(self, final: Path | None, status: str, reason: str | None = None) -> None:
        self.run_log.finish(
            self.cfg,
            status=status,
            reason=reason,
            final=final,
            checkpoints=list(self.checkpoints.values()),
            best=self.evaluator.best if self.evaluator else None,
            stats=run_stats(self),
        )
