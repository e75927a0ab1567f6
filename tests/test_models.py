"""Base-model layer: tiny model build, folder and single-file loading, errors, hashes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tests.ldm_export import export_ldm_safetensors, pipeline_to_ldm_state_dict  # noqa: E402
from train.config import ModelConfig  # noqa: E402
from train.errors import ModelLoadError, UserError  # noqa: E402
from train.models import hashing  # noqa: E402
from train.models.checks import ensure_model_available  # noqa: E402
from train.models.loading import load_base_model  # noqa: E402
from train.models.tiny import build_tiny_sd15, build_tiny_sd15_vpred, make_tiny_pipeline  # noqa: E402

TOLERANCE = 1e-5
CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"


class RunsCodeWhenUnpickled:
    """Unpickling this creates ``marker``: proof that a refused file was never executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir) -> Path:
    return tiny_model_dir  # built once per session by conftest.py


@pytest.fixture(scope="module")
def folder_model(tiny_dir):
    return load_base_model(ModelConfig(path=str(tiny_dir)))


@pytest.fixture(scope="module")
def ldm_state(tiny_dir):
    return pipeline_to_ldm_state_dict(make_tiny_pipeline(seed=0))


def _outputs(model) -> dict[str, torch.Tensor]:
    """U-Net, VAE (encode + decode) and text-encoder outputs on fixed inputs."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    ids = model.tokenizer("a photo of the cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model.text_encoder(ids)[0]
        return {
            "text_encoder": hidden,
            "unet": model.unet(latents, 500, hidden).sample,
            "vae_encode": model.vae.encode(image).latent_dist.mean,
            "vae_decode": model.vae.decode(latents).sample,
        }


def _assert_same_outputs(a, b) -> None:
    out_a, out_b = _outputs(a), _outputs(b)
    for name in out_a:
        diff = (out_a[name] - out_b[name]).abs().max().item()
        assert diff < TOLERANCE, f"{name} differs by {diff}"


def test_build_is_deterministic_and_idempotent(tmp_path, tiny_dir):
    other = build_tiny_sd15(tmp_path / "again")
    files = sorted(p.relative_to(tiny_dir) for p in tiny_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert any(f.suffix == ".safetensors" for f in files)
    for rel in files:
        assert (tiny_dir / rel).read_bytes() == (other / rel).read_bytes(), rel
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    build_tiny_sd15(other, seed=1)  # a valid model is already there: nothing is rewritten
    assert weights.stat().st_mtime_ns == stamp
    reseeded = build_tiny_sd15(tmp_path / "seed1", seed=1)
    assert (reseeded / "unet/diffusion_pytorch_model.safetensors").read_bytes() != weights.read_bytes()


def test_folder_load_matches_in_memory_pipeline(folder_model, tiny_dir):
    _assert_same_outputs(folder_model, make_tiny_pipeline(seed=0))
    assert folder_model.source == str(tiny_dir.resolve())
    assert folder_model.prediction_type == "epsilon"
    config = folder_model.noise_scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert config.num_train_timesteps == 1000 and config.prediction_type == "epsilon"
    for module in (folder_model.unet, folder_model.vae, folder_model.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert _outputs(folder_model)["vae_encode"].shape == (1, 4, 8, 8)  # downsamples by 8, like SD


def test_ldm_export_uses_original_key_names(ldm_state):
    assert all(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."))
        for k in ldm_state
    )
    for key in (
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",  # attention of the first level
        "model.diffusion_model.input_blocks.2.0.op.weight",  # downsample
        "model.diffusion_model.output_blocks.1.1.conv.weight",  # upsample after a plain up block
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
    ):
        assert key in ldm_state, key
    assert ldm_state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv in LDM


def test_single_safetensors_matches_folder(tmp_path, tiny_dir, folder_model):
    file = export_ldm_safetensors(make_tiny_pipeline(seed=0), tmp_path / "tiny.safetensors")
    single = load_base_model(ModelConfig(path=str(file), config_dir=str(tiny_dir)))
    _assert_same_outputs(single, folder_model)
    assert single.vae_identity == folder_model.vae_identity  # same VAE weights share cached latents
    assert single.model_hash == hashlib.sha256(file.read_bytes()).hexdigest()


def test_ckpt_loads_with_weights_only(tmp_path, tiny_dir, folder_model, ldm_state):
    file = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": ldm_state, "global_step": 7}, file)
    _assert_same_outputs(load_base_model(ModelConfig(path=str(file), config_dir=str(tiny_dir))), folder_model)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_ckpt_with_code_is_refused_not_run(tmp_path, tiny_dir, ldm_state, zip_format):
    marker = tmp_path / "was_executed"
    file = tmp_path / "evil.ckpt"
    payload = {"state_dict": ldm_state, "callback": RunsCodeWhenUnpickled(marker)}
    torch.save(payload, file, _use_new_zipfile_serialization=zip_format)
    cfg = ModelConfig(path=str(file), config_dir=str(tiny_dir))
    with pytest.raises(ModelLoadError, match="allow_unsafe_pickle") as err:
        load_base_model(cfg)
    assert str(file) in str(err.value)
    assert not marker.exists()


def test_ckpt_with_python_objects_loads_after_opt_in(tmp_path, tiny_dir, ldm_state):
    file = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": ldm_state, "hyper_parameters": argparse.Namespace(lr=1e-4)}, file)
    with pytest.raises(ModelLoadError, match="allow_unsafe_pickle"):
        ensure_model_available(ModelConfig(path=str(file), config_dir=str(tiny_dir)))
    model = load_base_model(ModelConfig(path=str(file), config_dir=str(tiny_dir), allow_unsafe_pickle=True))
    assert model.prediction_type == "epsilon"


def _garbage(tmp: Path, name: str) -> str:
    (tmp / name).write_bytes(os.urandom(4096))
    return str(tmp / name)


def _exported(tmp: Path) -> str:
    return str(export_ldm_safetensors(make_tiny_pipeline(), tmp / "m.safetensors"))


def _damaged_copy(tmp: Path, tiny: Path, damage) -> str:
    folder = tmp / "damaged"
    shutil.copytree(tiny, folder)
    damage(folder)
    return str(folder)


def _not_a_model(tmp: Path) -> str:
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(tmp / "lora.safetensors"))
    return str(tmp / "lora.safetensors")


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
# case -> (ModelConfig kwargs built from (tmp_path, tiny_dir), texts the message must contain)
ERROR_CASES = {
    "missing": (lambda t, d: {"path": str(t / "nowhere")}, ["model.path", "does not exist"]),
    "no_index": (
        lambda t, d: {"path": _damaged_copy(t, d, lambda f: (f / "model_index.json").unlink())},
        ["model.path", "model_index.json"],
    ),
    "no_unet_weights": (
        lambda t, d: {"path": _damaged_copy(t, d, lambda f: (f / UNET_WEIGHTS).unlink())},
        ["model.path", "no weights"],
    ),
    "truncated_unet_weights": (
        lambda t, d: {"path": _damaged_copy(t, d, lambda f: _truncate(f / UNET_WEIGHTS))},
        ["model.path", "unet"],
    ),
    "no_config_dir": (lambda t, d: {"path": _exported(t)}, ["model.config_dir", "required"]),
    "missing_config_dir": (
        lambda t, d: {"path": _exported(t), "config_dir": str(t / "nope")},
        ["model.config_dir", "does not exist"],
    ),
    "garbage_safetensors": (
        lambda t, d: {"path": _garbage(t, "junk.safetensors"), "config_dir": str(d)},
        ["model.path", "junk.safetensors", "not a readable safetensors"],
    ),
    "garbage_ckpt": (
        lambda t, d: {"path": _garbage(t, "junk.ckpt"), "config_dir": str(d)},
        ["model.path", "junk.ckpt", "not a readable"],
    ),
    "unknown_suffix": (
        lambda t, d: {"path": _garbage(t, "model.onnx"), "config_dir": str(d)},
        ["model.path", "unknown format"],
    ),
    "not_a_model": (lambda t, d: {"path": _not_a_model(t), "config_dir": str(d)}, ["model.path", "unet"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_errors_are_one_model_load_error(tmp_path, tiny_dir, case):
    make_kwargs, expected = ERROR_CASES[case]
    with pytest.raises(ModelLoadError) as err:
        load_base_model(ModelConfig(**make_kwargs(tmp_path, tiny_dir)))
    assert isinstance(err.value, UserError)
    for text in expected:
        assert text in str(err.value), str(err.value)


def test_unset_path_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="model.path: not set"):
        ensure_model_available(ModelConfig(path="???"))


def test_ensure_model_available_builds_tiny_only_when_asked(tmp_path):
    target = tmp_path / "cache" / "models" / "tiny-sd15"
    with pytest.raises(ModelLoadError, match="does not exist"):
        ensure_model_available(ModelConfig(path=str(target)))
    ensure_model_available(ModelConfig(path=str(target), build_tiny=True))
    assert (target / "model_index.json").is_file()
    (target / "model_index.json").unlink()  # a broken folder is reported, never overwritten
    with pytest.raises(ModelLoadError, match="model_index.json"):
        ensure_model_available(ModelConfig(path=str(target), build_tiny=True))
    with pytest.raises(ModelLoadError, match="not a valid model"):
        build_tiny_sd15(target)


def test_v_prediction_from_override_and_from_scheduler(tmp_path, tiny_dir):
    overridden = load_base_model(ModelConfig(path=str(tiny_dir), prediction_type="v_prediction"))
    vpred = load_base_model(ModelConfig(path=str(build_tiny_sd15_vpred(tmp_path / "tiny-v"))))
    for model in (overridden, vpred):
        assert model.prediction_type == "v_prediction"
        assert model.noise_scheduler.config.prediction_type == "v_prediction"


def test_model_hash_is_stable_and_cached(tmp_path, tiny_dir, folder_model):
    assert load_base_model(ModelConfig(path=str(tiny_dir))).model_hash == folder_model.model_hash
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    assert load_base_model(ModelConfig(path=str(copy))).model_hash == folder_model.model_hash
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    real = hashlib.sha256(weights.read_bytes()).hexdigest()
    sidecar = hashing.sidecar_path(weights)
    assert json.loads(sidecar.read_text())["sha256"] == real
    # A planted digest is returned as is: proof the file was not read again.
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "sha256": "f" * 64}))
    hashing._MEMO.clear()
    assert hashing.file_sha256(weights) == "f" * 64
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert hashing.file_sha256(weights) == real  # a changed mtime makes the sidecar stale


@pytest.mark.parametrize("name", ["tiny", "sd15", "sd15_single_file", "sd2_v"])
def test_model_presets_fit_the_schema(name):
    preset = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    assert list(preset.pop("defaults")) == ["model_schema", "_self_"]
    if name != "tiny":
        assert OmegaConf.is_missing(preset, "path")  # the user must give model.path
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), preset)
    assert merged.name == name
    if name == "sd2_v":
        assert merged.prediction_type == "v_prediction"
