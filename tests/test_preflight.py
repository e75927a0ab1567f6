"""The search space is checked before any trial: every choice, both ends of every range, every branch."""

from __future__ import annotations

import pytest

from sweeper.slots.compose import ConfigSource
from sweeper.space.preflight import check_search_space, probes
from sweeper.space.search_space import parse_search_space
from train.errors import ConfigError

SPACE = parse_search_space(
    {
        "optimizer": "choice(adamw, lion)",
        "network.dim": "choice(4, 8, 16)",
        "optimizer.weight_decay": "range(0, 10, step=3)",
        "_ratio": "choice(0.5, 1.0)",
    },
    [
        {"when": {"optimizer": ["lion"]}, "params": {"optimizer.learning_rate": "tag(log, interval(1e-6, 1e-4))"}},
        {"when": {"optimizer": ["adamw"]}, "params": {"optimizer.learning_rate": "tag(log, interval(1e-5, 1e-3))"}},
        # A block enabled by a key that only an earlier block sets.
        {"when": {"optimizer": ["lion"]}, "params": {"train.kind": "choice(a, b)"}},
        {"when": {"train.kind": ["b"]}, "params": {"train.depth": "int(interval(1, 5))"}},
    ],
    {"network.alpha": "network.dim * _ratio"},
)


def _tried(space) -> set[tuple[str, object]]:
    return {(key, value) for probe in probes(space) for key, value in probe.values.items()}


def test_every_choice_both_ends_and_every_branch_are_probed():
    tried = _tried(SPACE)
    for value in ("adamw", "lion"):
        assert ("optimizer", value) in tried
    for value in (4, 8, 16):
        assert ("network.dim", value) in tried
    assert {("optimizer.weight_decay", 0), ("optimizer.weight_decay", 9)} <= tried  # the last point on the step
    for value in (1e-6, 1e-4, 1e-5, 1e-3):  # each block's own range, at both ends
        assert ("optimizer.learning_rate", value) in tried
    assert {("train.kind", "a"), ("train.kind", "b"), ("train.depth", 1), ("train.depth", 5)} <= tried
    assert ("network.alpha", 8.0) in tried and ("network.alpha", 4.0) in tried  # derived, from each probe


def test_each_probe_varies_one_key_from_the_first_values():
    found = probes(SPACE)
    assert found[0].values == {
        "optimizer": "adamw",
        "network.dim": 4,
        "optimizer.weight_decay": 0,
        "optimizer.learning_rate": 1e-5,
        "network.alpha": 2.0,
    }
    depth = next(p for p in found if p.label.startswith("hydra.sweeper.conditional[3].params.train.depth=5"))
    assert depth.values["optimizer"] == "lion" and depth.values["train.kind"] == "b"
    assert "(when optimizer=lion,train.kind=b)" in depth.label
    assert len({repr(sorted(p.values.items())) for p in found}) == len(found)  # no trial checked twice


def _rejecting(bad: str):
    checked = []

    def check(overrides: list[str]) -> None:
        checked.append(overrides)
        if bad in overrides:
            raise ConfigError(f"{bad.split('=')[0]}: impossible")

    return check, checked


@pytest.mark.parametrize(
    ("bad", "label"),
    [
        ("network.dim=16", "hydra.sweeper.params.network.dim=16: network.dim: impossible"),
        ("optimizer.learning_rate=0.0001", "hydra.sweeper.conditional[0].params.optimizer.learning_rate=0.0001"),
        ("train.depth=5", "hydra.sweeper.conditional[3].params.train.depth=5 (when train.kind=b)"),
        # Wrong at the first values of everything: the key is found by trying each alone.
        ("optimizer.weight_decay=0", "hydra.sweeper.params.optimizer.weight_decay=0: optimizer.weight_decay"),
        ("network.alpha=2.0", "hydra.sweeper.derived.network.alpha=2.0"),
    ],
)
def test_a_failing_probe_names_its_key_and_value(bad, label):
    check, _ = _rejecting(bad)
    with pytest.raises(ConfigError) as info:
        check_search_space(SPACE, check)
    assert str(info.value).startswith(label)


def test_a_passing_space_checks_each_probe_once():
    check, checked = _rejecting("never")
    assert check_search_space(SPACE, check) == len(checked) == len(probes(SPACE))


def test_the_real_check_composes_and_runs_the_trials_preflight(tmp_path, tiny_model_dir):
    """Shipped config, real composition and pre-flight: a value no trial could take is caught in a branch."""
    from sweeper.config import SweeperConfig
    from sweeper.space.trial_check import TrialCheck
    from tests.conftest import CONF_DIR

    space = parse_search_space(
        {"noise": "choice(none, offset)"},
        [{"when": {"noise": ["offset"]}, "params": {"noise.sampler.offset": "interval(0.05, 0.1)"}}],
    )
    base = [f"model.path={tiny_model_dir}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"]
    check = TrialCheck(SweeperConfig(direction="maximize"), base, tmp_path / "preflight", ConfigSource.default(CONF_DIR))
    assert check_search_space(space, check) == 3
    typo = parse_search_space(
        {"noise": "choice(none, offset)"},
        [{"when": {"noise": ["offset"]}, "params": {"noise.sampler.ofset": "interval(0.05, 0.1)"}}],
    )
    with pytest.raises(ConfigError, match=r"conditional\[0\]\.params\.noise\.sampler\.ofset=0\.05 \(when noise=offset\)"):
        check_search_space(typo, check)
