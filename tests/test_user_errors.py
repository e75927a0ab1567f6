"""A user's mistake, as a user makes it on the command line: one ``error:`` line naming the key or path, exit 2.

No traceback, and nothing heavy done first: these errors appear before any
model is built or loaded (the cache dir holds no model afterwards).
"""

from __future__ import annotations

import pytest

from tests.network_helpers import family_config
from tests.test_cli import ROOT, run_cli
from tests.test_compare_families import base_targets, save_trained

pytestmark = pytest.mark.slow


def assert_one_message(result, message: str) -> None:
    output = result.stderr + result.stdout
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert message in errors[0], errors[0]


BAD_ARGUMENTS = {
    # Hydra's own config errors: exit 1 and several lines before.
    "unknown-key": (["network.dimm=4"], "network.dimm: not a config key (did you mean 'dim'?); valid keys: name, dim, alpha"),
    "bad-type": (["network.dim=abc"], "network.dim=abc: network.dim: Value 'abc' of type 'str' could not be converted"),
    "unknown-option": (["network=lorra"], "network=lorra: no such option in conf/network/ (did you mean 'lora'?); options: dora, hypernetwork"),
    "unparsable": (["network.dim=[1"], "network.dim=[1: cannot parse this override"),
    # A group given null or a number: Hydra raised a bare ValueError (a traceback naming neither).
    "group-null": (["noise=null"], "noise=null: a config group takes one of its options (did you mean 'none'?); options: multires, none"),
    "group-number": (["network=16"], "network=16: a config group takes one of its options; options: dora, hypernetwork"),
    # `+key=value` on a typed config was accepted and then dropped without a word.
    "added-key": (["+network.dimm=4"], "network.dimm (did you mean 'network.dim'?): not a config key"),
    "added-root-key": (["+foo=1"], "foo: not a config key"),
    # Accepted, then training diverged (TrainingDiverged escaped) or nothing trained.
    "lr-inf": (["optimizer.learning_rate=inf"], "optimizer.learning_rate: must be a finite number, got inf"),
    "lr-zero": (["optimizer.learning_rate=0"], "optimizer.learning_rate: is 0: AdamW would never change a weight"),
    "te-lr-zero": (
        ["optimizer.text_encoder_lr=0", "network.train_text_encoder=true"],
        "optimizer.text_encoder_lr: is 0 while network.train_text_encoder is true",
    ),
    "resolution": (["dataset.resolution=[500]"], "dataset.resolution: 500 is not a multiple of 8 (the VAE works in 8-pixel blocks); use 496 or 504"),
    "eval-width": (["evaluate.width=500"], "evaluate.width: 500 is not a multiple of 8"),
    # Found only when the logger started, after the model had loaded.
    "wandb-mode": (["logger=wandb", "logger.backends.wandb.mode=bogus"], "logger.backends.wandb: mode must be one of"),
}


@pytest.mark.parametrize("args,message", list(BAD_ARGUMENTS.values()), ids=list(BAD_ARGUMENTS))
def test_a_bad_argument_is_one_message_and_exit_2_before_any_model(tmp_path, args, message):
    result = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, cache=tmp_path / "cache")
    assert_one_message(result, message)
    assert not (tmp_path / "cache" / "models").exists()


def test_hydras_config_errors_in_python_m_evaluate_are_one_message_too(tmp_path):
    result = run_cli("evaluate.seedz=[1]", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, cache=tmp_path / "c", module="evaluate")
    assert_one_message(result, "evaluate.seedz: not a config key (did you mean 'seeds'?)")


def test_unwritable_run_dir_and_cache_dir_name_their_key(tmp_path):
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a folder")
    result = run_cli(f"hydra.run.dir={regular_file / 'run'}", cwd=tmp_path, cache=tmp_path / "cache")
    assert_one_message(result, f"hydra.run.dir: cannot create {regular_file / 'run'}: Not a directory")
    result = run_cli(f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, cache=regular_file / "cache")
    assert_one_message(result, f"paths.cache_dir (LORA_SWEEP_CACHE): cannot write to {regular_file / 'cache'}")
    result = run_cli("-m", "sweep=demo", f"hydra.sweep.dir={regular_file / 'sweep'}", cwd=tmp_path, cache=tmp_path / "c")
    assert_one_message(result, f"hydra.sweep.dir: cannot write to {regular_file / 'sweep'}")


def test_network_weights_that_do_not_fit_the_network_fail_before_the_model_loads(tmp_path, tiny_model_dir):
    saved = save_trained(family_config("lora", conv_dim=None, dim=4), base_targets(tiny_model_dir), tmp_path / "w.safetensors")
    run = [f"train.network_weights={saved}", f"hydra.run.dir={tmp_path / 'run'}", f"model.path={tiny_model_dir}"]
    for args, message in [
        (["network.dim=8"], "its rank is 4 but network.dim=8 (set network.dim=4)"),
        (["network=loha"], "it is a lora file but network=loha is configured (set network=lora)"),
    ]:
        result = run_cli(*args, *run, "model.build_tiny=false", cwd=tmp_path, cache=tmp_path / "cache")
        assert_one_message(result, f"train.network_weights: {saved} does not match the configured network: {message}")
        # Reported before the base model was read: its loading bar never appeared.
        assert "Loading weights" not in result.stderr


def test_a_diverging_run_ends_with_a_message_and_its_summary(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "optimizer.learning_rate=1e30", "train.max_train_steps=4", "evaluate=none", "logger=none",
        f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=tmp_path / "cache",
    )
    assert_one_message(result, "training diverged: loss is nan at step")
    assert "optimizer.learning_rate=1e+30 is likely too high for AdamW" in result.stderr
    assert '"status": "failed"' in (run_dir / "train_summary.json").read_text()


def test_report_out_unwritable_is_one_message(tmp_path, capsys):
    import optuna

    from sweeper.__main__ import main
    from tests.test_promote import MULTI, add_trial

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="m", storage=url, directions=["maximize", "maximize"])
    add_trial(study, tmp_path, [0.30, 5.0], {"clip_t": 0.30, "aesthetic": 5.0})
    regular_file = tmp_path / "a-file"
    regular_file.write_text("")
    overrides = [f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=m", "logger=none", *MULTI]
    assert main(["report", *overrides, "--out", str(regular_file / "report.html")]) == 2
    err = capsys.readouterr().err
    assert f"error: --out: cannot write to {regular_file}" in err and "Traceback" not in err
    assert main(["report", *overrides, "--out", str(tmp_path)]) == 2
    assert f"error: --out: {tmp_path} is a directory" in capsys.readouterr().err
    assert main(["report", *overrides, "--out", str(tmp_path / "new" / "report.html")]) == 0
    assert (tmp_path / "new" / "report.html").is_file()


LIGHT_PATH = """
import sys
from pathlib import Path
from tests.conftest import compose_run
from train.errors import UserError
from train.preflight import check_run
try:
    check_run(compose_run(sys.argv[1:], Path("out").absolute(), Path("cache").absolute()))
except UserError as err:
    print("error:", err)
heavy = sorted(m for m in ("diffusers", "transformers", "accelerate", "peft", "torch") if m in sys.modules)
print("imported:", ",".join(heavy) or "none")
"""


@pytest.mark.parametrize(
    "args,message,imported",
    [
        (["network.dim=0"], "network.dim: must be >= 1", "none"),
        (["dataset=folder", "dataset.train_data_dir={empty}"], "has problems", "none"),
        (["scheduler=piecewise", "scheduler.factory.schedule=nonsense"], "scheduler.factory.schedule", "torch"),
        # The last check: every network family was built and checked by then, without peft.
        (["model.build_tiny=false", "model.path={empty}/no-model"], "model.path", "torch"),
        (["network=loha", "model.build_tiny=false", "model.path={empty}/no-model"], "model.path", "torch"),
    ],
    ids=["config", "dataset", "schedule", "model-path-after-lora", "model-path-after-loha"],
)
def test_errors_are_found_before_the_model_libraries_are_imported(tmp_path, args, message, imported):
    import subprocess
    import sys

    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(empty=empty) for a in args]
    env = {"LORA_SWEEP_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", LIGHT_PATH, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert message in result.stdout, result.stdout
    assert f"imported: {imported}" in result.stdout  # torch only for a check that builds a torch object


SWEEP_TRIAL_CHECK = """
import sys
from pathlib import Path
from sweeper.config import SweeperConfig
from sweeper.slots.compose import ConfigSource
from sweeper.space.trial_check import TrialCheck
from train.errors import UserError
check = TrialCheck(SweeperConfig(), sys.argv[2:], Path("preflight").absolute(), ConfigSource.default())
try:
    check([sys.argv[1]])
    print("passed")
except UserError as err:
    print("error:", err)
print("diffusers imported:", "diffusers" in sys.modules)
"""


@pytest.mark.parametrize(("value", "outcome"), [("network.dim=4", "passed"), ("network.dim=0", "network.dim: must be >= 1")])
def test_a_sweeps_trial_check_loads_no_model_library(tiny_model_dir, tmp_path, value, outcome):
    """The controller checks trial configs before a worker starts, without diffusers (the workers load it).

    Building the network to check it imports peft, as ``python -m train``'s own pre-flight does."""
    import subprocess
    import sys

    env = {"LORA_SWEEP_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    args = [value, "sweep=demo", f"model.path={tiny_model_dir}", "logger=none"]
    result = subprocess.run(
        [sys.executable, "-c", SWEEP_TRIAL_CHECK, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert outcome in result.stdout and "diffusers imported: False" in result.stdout, result.stdout
