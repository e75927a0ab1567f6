"""``python -m sweeper promote``: ship a study's best checkpoint to the registry, and tag it in W&B.

The trial is chosen by ``sweeper.results.selection``; its best checkpoint is the file
the worker recorded, with the sha256 it recorded. A file whose hash differs
now is refused: what gets promoted is exactly what was scored.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import OmegaConf

from evaluate.secrets import scrub_secrets
from sweeper.results.locate import StudyRef
from sweeper.results.registry import Promotion, PromotionRefused, Registry, sha256_file
from sweeper.results.selection import choose_trial, trial_metrics

log = logging.getLogger(__name__)
ALIASES = ["best", "production"]


def _checked_checkpoint(trial) -> tuple[dict, Path]:
    best = trial.user_attrs.get("best")
    if not best or not best.get("checkpoint") or not best.get("sha256"):
        raise PromotionRefused(
            f"trial {trial.number} recorded no scored checkpoint with a hash; nothing to promote from it"
        )
    path = Path(best["checkpoint"])
    if not path.is_file():
        raise PromotionRefused(f"trial {trial.number}: its best checkpoint {path} is gone; nothing was promoted")
    actual = sha256_file(path)
    if actual != best["sha256"]:
        raise PromotionRefused(
            f"trial {trial.number}: {path} has changed since the trial scored it "
            f"(sha256 {actual[:12]}..., recorded {best['sha256'][:12]}...); refusing to promote it"
        )
    return best, path


def build_manifest(ref: StudyRef, trial, best: dict, reason: str) -> dict:
    study = ref.study
    multi = len(study.directions) > 1
    return {
        "study": study.study_name,
        "storage": ref.where,
        "trial": trial.number,
        "chosen_by": reason,
        "directions": [d.name.lower() for d in study.directions],
        "objectives": list(ref.cfg.objectives or []) if multi else ["objective"],
        "values": list(trial.values),
        "step": best["step"],
        "epoch": best.get("epoch"),
        "source": str(Path(best["checkpoint"]).resolve()),
        "sha256": best["sha256"],
        "size_bytes": Path(best["checkpoint"]).stat().st_size,
        "params": dict(trial.params),
        "overrides": list(trial.user_attrs.get("overrides", [])),
        "scores": trial_metrics(trial, ref.cfg.objectives if multi else None),
        "demo_weights": bool(best.get("demo_weights")),
        "base_model_hash": best.get("base_model_hash"),
        "run_dir": trial.user_attrs.get("run_dir"),
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def promote(ref: StudyRef, trial_number: int | None = None) -> Promotion:
    cfg = ref.cfg.promote
    choice = choose_trial(ref.study, cfg, ref.cfg.objectives, trial_number)
    best, path = _checked_checkpoint(choice.trial)
    registry = Registry(cfg.registry, ref.study.study_name)
    result = registry.promote(path, build_manifest(ref, choice.trial, best, choice.reason))
    if result.changed and cfg.wandb:
        info = log_wandb_artifact(ref, result)
        if info:
            result.manifest = registry.annotate(result.manifest["version"], {"wandb": info})
    return result


def _wandb_settings(ref: StudyRef) -> dict | None:
    backends = OmegaConf.to_container(ref.run_cfg.logger, resolve=True).get("backends") or {}
    return backends.get("wandb")


def log_wandb_artifact(ref: StudyRef, result: Promotion) -> dict | None:
    """Log the promoted file as a ``lora`` artifact aliased best and production; offline unless configured."""
    from evaluate.loggers_wandb import resolve_mode, start_wandb_run

    settings = _wandb_settings(ref)
    if settings is None:
        log.info("no W&B logger configured (logger=%s): no artifact logged", ref.run_cfg.logger.get("name"))
        return None
    mode = resolve_mode(settings.get("mode", "auto"))
    if mode == "disabled":
        return None
    import wandb

    manifest = result.manifest
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{manifest['study']}-lora")
    run = start_wandb_run(
        mode,
        20.0,
        project=settings.get("project", "lora-sweep"),
        entity=settings.get("entity"),
        job_type="promote",
        group=manifest["study"],
        name=f"promote-{manifest['study']}-v{manifest['version']:03d}",
        dir=str(result.path.parent.resolve()),
        config=scrub_secrets({"trial": manifest["trial"], "params": manifest["params"]}),
        reinit="finish_previous",
    )
    try:
        artifact = wandb.Artifact(name, type="lora", metadata=scrub_secrets(manifest))
        artifact.add_file(str(result.path), name=result.path.name)
        run.log_artifact(artifact, aliases=ALIASES)
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    where = f"offline: upload with `wandb sync {run_dir}`" if mode == "offline" else "online"
    log.info("W&B artifact %s:%s (%s)", name, ",".join(ALIASES), where)
    return {"artifact": name, "type": "lora", "aliases": ALIASES, "mode": mode, "run_dir": str(run_dir)}
