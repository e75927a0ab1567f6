"""Scoring saved files of every network family, on SD and SDXL: the config read back from a file, the loader used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

from tests.conftest import compose_score
from tests.network_helpers import family_config, perturb, text_encoder_output, tiny_targets, unet_output
from train.config import ModelConfig, NetworkConfig
from train.errors import ConfigError
from train.models.loading import load_base_model
from train.networks import NetworkTargets, build_network
from train.networks.from_file import inspect_network_file, network_config_for_file

HYPERNETWORK = {
    "_target_": "train.networks.hypernetwork.Hypernetwork",
    "layer_structure": [1, 2, 2, 1],
    "activation": "relu",
    "layer_norm": True,
    "dropout": True,
    "last_layer_dropout": True,
}
# Each family with options other than its defaults, so reading them back is tested.
CONFIGS = {
    "lora": lambda: family_config("lora", conv_dim=None, alpha=3),
    "locon": lambda: family_config("lora", conv_dim=3, conv_alpha=1.5),
    "lora_fa": lambda: family_config("lora_fa", train_text_encoder=False),
    "dora": lambda: family_config("dora"),
    "loha": lambda: family_config("loha", module={"use_tucker": True}),
    "lokr": lambda: family_config("lokr", module={"factor": 4, "decompose_both": True}),
    "hypernetwork": lambda: NetworkConfig(module=HYPERNETWORK),
}
SUFFIX = {"hypernetwork": ".pt"}


def save_trained(cfg: NetworkConfig, targets: NetworkTargets, path: Path, seed: int = 7, steps: int = 5) -> Path:
    """Apply the family, move its weights as training would, save it with kohya's step count."""
    network = build_network(cfg)
    perturb(network.apply(targets, seed=0), seed=seed)
    network.save(path, {"ss_steps": steps, "ss_epoch": 1})
    return path


def loaded(path: Path, targets: NetworkTargets):
    network = build_network(network_config_for_file(path))
    network.apply(targets, seed=1)  # another init seed: everything must come from the file
    network.load(path, key="files")
    return network


@pytest.mark.parametrize("family", list(CONFIGS))
def test_config_read_from_the_file_reproduces_the_network(family, tmp_path):
    cfg = CONFIGS[family]()
    trained = tiny_targets(text_encoder=cfg.train_text_encoder)
    path = save_trained(cfg, trained, tmp_path / f"{family}{SUFFIX.get(family, '.safetensors')}")

    found = inspect_network_file(path)
    assert found.family == family and found.config.module["_target_"] == cfg.module["_target_"]
    assert (found.config.train_text_encoder, found.config.conv_dim) == (cfg.train_text_encoder, cfg.conv_dim)
    assert found.metadata["ss_steps"] == "5"

    fresh = tiny_targets(text_encoder=cfg.train_text_encoder)
    base = unet_output(fresh.unet)
    loaded(path, fresh)
    assert not torch.allclose(unet_output(trained.unet), base)  # the stand-in training changed the output
    assert torch.equal(unet_output(fresh.unet), unet_output(trained.unet))
    if cfg.train_text_encoder:
        assert torch.equal(
            text_encoder_output(fresh.text_encoders["lora_te"]), text_encoder_output(trained.text_encoders["lora_te"])
        )


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("lora", {"dim": 4, "alpha": 3.0, "conv_dim": None}),
        ("locon", {"dim": 4, "alpha": 2.0, "conv_dim": 3, "conv_alpha": 1.5}),
        ("lokr", {"module": {"factor": 4, "decompose_both": True, "use_tucker": False}}),
        ("loha", {"module": {"use_tucker": True}}),
        ("hypernetwork", {"train_text_encoder": False, "module": {"layer_structure": [1.0, 2.0, 2.0, 1.0]}}),
    ],
)
def test_ranks_alphas_and_options_are_read_back(family, expected, tmp_path):
    cfg = CONFIGS[family]()
    path = save_trained(cfg, tiny_targets(), tmp_path / f"{family}{SUFFIX.get(family, '.safetensors')}")
    read = network_config_for_file(path)
    for key, value in expected.items():
        got = getattr(read, key)
        if isinstance(value, dict):
            got = {k: got[k] for k in value}
        assert got == value, key


# --------------------------------------------------------------------------- scoring
def spy_loader(monkeypatch, pipeline_class) -> list[str]:
    """Record the file names diffusers' load_lora_weights is called with."""
    calls: list[str] = []
    original = pipeline_class.load_lora_weights

    def spy(self, *args, **kwargs):
        calls.append(kwargs["weight_name"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "load_lora_weights", spy)
    return calls


def score(model_dir: Path, files: list[Path], out: Path):
    from evaluate.compare import FileComparison

    score_cfg = compose_score(
        [f"model.path={model_dir}", f"files=[{','.join(map(str, files))}]", "evaluate.num_inference_steps=2"]
        + ["evaluate.seeds=[0]"],
        out,
        out.parent / "cache",
    )
    return FileComparison(score_cfg, out).run()


def base_targets(model_dir: Path) -> NetworkTargets:
    return NetworkTargets.of(load_base_model(ModelConfig(path=str(model_dir))))


def test_a_folder_of_four_families_is_scored_each_through_its_loader(tiny_model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "files"
    folder.mkdir()
    files = {
        "1-lora.safetensors": family_config("lora", conv_dim=None),
        "2-dora.safetensors": family_config("dora"),
        "3-loha.safetensors": family_config("loha"),
        "4-hyper.pt": NetworkConfig(module=HYPERNETWORK),
    }
    for seed, (name, cfg) in enumerate(files.items()):
        save_trained(cfg, base_targets(tiny_model_dir), folder / name, seed=seed, steps=seed + 1)
    calls = spy_loader(monkeypatch, StableDiffusionPipeline)

    results = score(tiny_model_dir, [folder], tmp_path / "score")

    assert [r.path.name for r in results] == list(files)
    assert [r.step for r in results] == ["1", "2", "3", "4"]  # the .pt's step from its A1111 header
    assert calls == ["1-lora.safetensors"]  # only the plain LoRA goes through diffusers' loader
    clip = [r.scores["clip_t"] for r in results]
    assert len(set(clip)) == 4, clip  # each file renders its own images
    # Scored alone, the last file scores the same: no earlier file's network stayed in the model.
    alone = score(tiny_model_dir, [folder / "4-hyper.pt"], tmp_path / "alone")
    assert alone[0].scores == results[-1].scores
    assert {p.name for p in (tmp_path / "score").iterdir()} >= {"comparison_grid.png", "scores.csv", "scores.json"}


def test_an_sdxl_lora_is_read_and_scored_through_the_sdxl_pipeline(tiny_sdxl_dir, tmp_path, monkeypatch):
    cfg = family_config("lora", conv_dim=None)
    trained = save_trained(cfg, base_targets(tiny_sdxl_dir), tmp_path / "trained.safetensors")
    untrained = tmp_path / "untrained.safetensors"
    network = build_network(cfg)
    network.apply(base_targets(tiny_sdxl_dir), seed=0)
    network.save(untrained, {})

    found = inspect_network_file(trained)
    assert found.sgm_names and found.text_encoders == ("lora_te1", "lora_te2")
    assert found.family == "lora" and found.config.train_text_encoder and found.config.train_unet
    loaded(trained, base_targets(tiny_sdxl_dir))  # our own network loads the SGM names back
    calls = spy_loader(monkeypatch, StableDiffusionXLPipeline)

    results = score(tiny_sdxl_dir, [trained, untrained], tmp_path / "score")

    assert calls == ["trained.safetensors", "untrained.safetensors"]
    assert results[0].scores != results[1].scores  # the trained LoRA changed the SDXL renders


# ------------------------------------------------------------------------ bad files
def bad_files(folder: Path) -> list[Path]:
    folder.mkdir()
    garbage = folder / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    not_hypernetwork = folder / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, not_hypernetwork)
    unknown = folder / "checkpoint.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(unknown))
    return [garbage, not_hypernetwork, unknown]


def test_bad_files_are_one_config_error_naming_files(tmp_path, tiny_model_dir):
    from evaluate.compare import FileComparison

    files = bad_files(tmp_path / "bad")
    for path, problem in zip(files, ["not a readable", "no width keys", "keys no network family writes"], strict=True):
        with pytest.raises(ConfigError, match=rf"^files: {re.escape(str(path))}: .*{problem}"):
            network_config_for_file(path)
    score_cfg = compose_score(
        [f"model.path={tiny_model_dir}", f"files=[{tmp_path / 'bad'}]"], tmp_path / "s", tmp_path / "c"
    )
    with pytest.raises(ConfigError) as error:
        FileComparison(score_cfg, tmp_path / "s").preflight()
    message = str(error.value)
    assert message.startswith("files: ") and all(str(path) in message for path in files)


def test_a_file_made_for_another_base_model_names_the_modules_the_model_lacks(tiny_model_dir, tiny_sdxl_dir, tmp_path):
    """An SDXL LoRA scored on an SD 1.x base: one ConfigError naming the file and its missing modules.

    diffusers' loader would skip what it cannot place (peft's NoMatchingPeftModuleError when nothing fits),
    and the base model's own images would be scored as the file's.
    """
    sdxl_lora = save_trained(family_config("lora", conv_dim=None), base_targets(tiny_sdxl_dir), tmp_path / "xl.safetensors")
    with pytest.raises(ConfigError) as error:
        score(tiny_model_dir, [sdxl_lora], tmp_path / "score")
    message = str(error.value)
    assert message.startswith(f"files: {sdxl_lora}: ") and "are not in the base model" in message
    assert "lora_unet_input_blocks_" in message or "lora_te1_" in message or "lora_te2_" in message
