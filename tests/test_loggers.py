"""Loggers: TensorBoard event files read back, W&B offline runs, secret scrubbing, fan-out, conf/logger/."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from evaluate.loggers import MultiLogger, RunLogger, TensorBoardLogger, WandbLogger, build_logger
from evaluate.loggers_wandb import resolve_mode
from evaluate.secrets import flatten, scrub_argument, scrub_secrets
from tests.conftest import CONF_DIR, compose_run
from train.errors import ConfigError

LOGGER_OPTIONS = sorted(p.stem for p in (CONF_DIR / "logger").glob("*.yaml"))
SECRET = "sk-very-secret-0123456789"
CONFIG = {
    "network": {"dim": 8, "alpha": 4.0},
    "optimizer": {"learning_rate": 1e-4, "betas": [0.9, 0.99]},
    "wandb_api_key": SECRET,
    "sweep": {"storage": f"postgresql://lora:{SECRET}@db:5432/optuna"},
    "dataset": {"keep_tokens": 1, "caption_extension": ".txt"},
}


def grid(color=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (16, 8), color)


@pytest.fixture
def no_wandb_setup(monkeypatch, tmp_path):
    """No W&B configuration at all: no mode, no key, no ~/.netrc; W&B stays quiet."""
    for name in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_DISABLED",
        "NETRC",
        "WANDB_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")


# ---------------------------------------------------------------- secrets
def test_scrub_secrets_masks_keys_passwords_and_url_passwords():
    config = {
        "wandb_api_key": "abc",
        "apiKey": "abc",
        "HF_TOKEN": "hf_x",
        "db": {"password": "pw", "nested": [{"client_secret": "s"}]},
        "storage": "postgresql://user:pass@host/db",
        "cache": "redis://:hunter2@localhost:6379/0",
        "unset_token": None,
        "keep_tokens": 2,
        "caption_extension": ".caption",
        "keys": ["a", "b"],
        "lr": 1e-4,
        "url": "https://example.com:8080/path",
    }
    scrubbed = scrub_secrets(config)
    assert scrubbed["wandb_api_key"] == scrubbed["apiKey"] == scrubbed["HF_TOKEN"] == "***"
    assert scrubbed["db"]["password"] == "***" and scrubbed["db"]["nested"][0]["client_secret"] == "***"
    assert scrubbed["storage"] == "postgresql://user:***@host/db"
    assert scrubbed["cache"] == "redis://:***@localhost:6379/0"
    assert scrubbed["unset_token"] is None
    for key in ("keep_tokens", "caption_extension", "keys", "lr", "url"):
        assert scrubbed[key] == config[key]
    assert config["db"]["password"] == "pw", "the input is left untouched"


def test_command_line_arguments_lose_their_secrets():
    assert scrub_argument("hydra.sweeper.storage=postgresql://u:pw@h:5432/db") == "hydra.sweeper.storage=postgresql://u:***@h:5432/db"
    assert scrub_argument("+logger.backends.wandb.api_key=abc") == "+logger.backends.wandb.api_key=***"
    assert scrub_argument("network.dim=4") == "network.dim=4"
    assert scrub_argument("train.keep_tokens=2") == "train.keep_tokens=2"


def test_flatten_joins_nested_keys_and_keeps_lists():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    assert flatten({"a": {"b": 1}}, sep="/") == {"a/b": 1}


# ---------------------------------------------------------------- TensorBoard
def test_tensorboard_writes_scalars_image_table_and_hparams(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    logger = TensorBoardLogger()
    logger.start(tmp_path, "run", CONFIG)
    for step in (1, 2, 3):
        logger.log_scalars(step, {"loss/train": 1.0 / step})
    logger.log_image(3, "eval/grid", grid(), caption="step 3")
    logger.log_table(3, "eval/images", ["prompt", "image", "clip_t"], [["a cat", grid(), 0.25]])
    logger.log_hparams(flatten({"network": {"dim": 8}, "optimizer": {"betas": [0.9, 0.99]}}), {"best/objective": 0.5})
    logger.finish()

    acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={ea.IMAGES: 0, ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("loss/train")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert acc.Scalars("best/objective")[-1].value == pytest.approx(0.5)
    image = acc.Images("eval/grid")[0]
    assert (image.step, image.width, image.height) == (3, 16, 8)
    table = acc.Tensors("eval/images/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "a cat" in table and "image" not in table
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "keep_tokens" in config_text and SECRET not in config_text

    plugin_data = [HParamsPluginData.FromString(c) for c in acc.PluginTagToContent("hparams").values()]
    assert {d.WhichOneof("data") for d in plugin_data} == {"experiment", "session_start_info", "session_end_info"}
    [start] = [d.session_start_info for d in plugin_data if d.HasField("session_start_info")]
    params = start.hparams
    assert params["network.dim"].number_value == 8
    assert params["optimizer.betas"].string_value == "[0.9, 0.99]"
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1, "hparams go into the run's own event file"


# ---------------------------------------------------------------- W&B
def test_wandb_mode_auto_is_offline_without_setup(no_wandb_setup):
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("auto", {"WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_mode("disabled") == "disabled"
    # Online without credentials would stop at a login prompt: it goes offline instead.
    assert resolve_mode("online", {}) == "offline"
    with pytest.raises(ValueError, match="mode"):
        resolve_mode("sometimes")


def test_wandb_mode_auto_goes_online_only_when_the_user_configured_wandb(no_wandb_setup, tmp_path):
    assert resolve_mode("auto", {"WANDB_API_KEY": "x" * 40}) == "online"
    assert resolve_mode("auto", {"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}) == "offline"
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'y' * 40}\n")
    netrc.chmod(0o600)
    assert resolve_mode("auto", {"NETRC": str(netrc)}) == "online"
    assert resolve_mode("auto", {"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.mycorp.com"}) == "offline"


def test_wandb_offline_runs_one_after_another_with_secrets_scrubbed(no_wandb_setup, tmp_path, monkeypatch):
    import wandb

    seen = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.append(kw) or real_init(**kw))

    logger = WandbLogger(project="test")
    for trial in range(2):
        run_dir = tmp_path / f"trial{trial}"
        logger.start(run_dir, f"trial{trial}", CONFIG, group="study", tags=["test"])
        assert logger.run is not None and logger.run.settings.mode == "offline"
        logger.log_scalars(1, {"loss/train": 0.5})
        logger.log_image(2, "eval/grid", grid(), caption="step 2")
        logger.log_table(
            2, "eval/images", ["prompt", "image", "clip_t"], [["a cat", grid(), None], ["a dog", grid(), 0.3]]
        )
        logger.log_summary({"best/objective": 0.3, "best/checkpoint": run_dir / "x.safetensors"})
        logger.log_hparams({"network": {"dim": 8}}, {"best/objective": 0.3})
        logger.finish()
        assert logger.run is None
        [offline] = (run_dir / "wandb").glob("offline-run-*")
        assert list(offline.glob("*.wandb"))
        assert not any(SECRET.encode() in p.read_bytes() for p in run_dir.rglob("*") if p.is_file())

    assert [kw["mode"] for kw in seen] == ["offline", "offline"]
    config = seen[0]["config"]
    assert config["wandb_api_key"] == "***" and config["sweep.storage"] == "postgresql://lora:***@db:5432/optuna"
    assert config["dataset.keep_tokens"] == 1 and config["network.dim"] == 8


def test_wandb_online_failure_falls_back_to_offline_with_one_warning(monkeypatch, tmp_path, caplog):
    import evaluate.loggers_wandb as lw

    monkeypatch.setattr(lw, "resolve_mode", lambda mode: "online")
    modes = []

    def fake_init(self, mode, kwargs):
        modes.append(mode)
        if mode == "online":
            raise TimeoutError("no network")
        return object()

    monkeypatch.setattr(lw.WandbLogger, "_init", fake_init)
    logger = WandbLogger()
    with caplog.at_level(logging.WARNING):
        logger.start(tmp_path, "run", {})
    assert modes == ["online", "offline"] and logger.run is not None
    assert len([r for r in caplog.records if "offline" in r.getMessage()]) == 1


# ---------------------------------------------------------------- MultiLogger
class Recorder(RunLogger):
    def __init__(self):
        self.calls = []

    def log_scalars(self, step, values):
        self.calls.append(("log_scalars", step))

    def finish(self):
        self.calls.append(("finish",))


class Broken(Recorder):
    def log_scalars(self, step, values):
        raise OSError("disk full; see postgresql://u:hunter2@db/x")


def test_multilogger_drops_a_failing_backend_and_keeps_the_others(caplog):
    good, bad = Recorder(), Broken()
    logger = MultiLogger({"bad": bad, "good": good})
    with caplog.at_level(logging.WARNING):
        logger.log_scalars(1, {"loss": 1.0})
        logger.log_scalars(2, {"loss": 0.5})
    logger.finish()
    assert good.calls == [("log_scalars", 1), ("log_scalars", 2), ("finish",)]
    assert bad.calls == [("finish",)], "a dropped backend is closed once and called no more"
    assert list(logger.backends) == ["good"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'bad'" in warning and "log_scalars" in warning and "hunter2" not in warning


# ---------------------------------------------------------------- conf/logger
def test_logger_group_ships_the_four_options():
    assert LOGGER_OPTIONS == ["both", "none", "tensorboard", "wandb"]


@pytest.mark.parametrize("option", LOGGER_OPTIONS)
def test_build_logger_from_each_shipped_option(option, tmp_path):
    expected = {"both": {"tensorboard", "wandb"}, "none": set(), "tensorboard": {"tensorboard"}, "wandb": {"wandb"}}
    # As training sees it: composed with the schema, then a LoggerConfig.
    run_cfg = compose_run([f"logger={option}"], tmp_path / "out", tmp_path / "cache")
    assert run_cfg.logger.name == option
    logger = build_logger(run_cfg.logger)
    assert set(logger.backends) == expected[option]
    types = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}
    assert all(isinstance(b, types[name]) for name, b in logger.backends.items())
    # As a DictConfig straight from the file.
    raw = OmegaConf.load(CONF_DIR / "logger" / f"{option}.yaml")
    raw.pop("defaults")
    assert set(build_logger(raw).backends) == expected[option]


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ({"tb": {"_target_": "evaluate.loggers.NoSuchLogger"}}, r"logger\.backends\.tb\._target_: unknown target"),
        ({"tb": {"project": "x"}}, r"logger\.backends\.tb\._target_: must be set"),
        (
            {"wandb": {"_target_": "evaluate.loggers.WandbLogger", "mode": "sometimes"}},
            r"logger\.backends\.wandb: .*mode",
        ),
        ({"x": {"_target_": "pathlib.Path"}}, r"logger\.backends\.x\._target_: .* is not a RunLogger"),
    ],
)
def test_build_logger_names_the_bad_key(backends, message):
    with pytest.raises(ConfigError, match=message):
        build_logger(OmegaConf.create({"name": "custom", "backends": backends}))


def test_tensorboard_only_run_dir_layout(tmp_path):
    logger = build_logger(OmegaConf.create({"backends": {"tb": {"_target_": "evaluate.loggers.TensorBoardLogger"}}}))
    logger.start(tmp_path, "run", {"a": 1})
    logger.log_scalars(0, {"x": 1.0})
    logger.finish()
    assert list(Path(tmp_path / "tensorboard").glob("events.out.tfevents.*"))
