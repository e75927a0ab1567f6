"""The sweep search space: official hydra-optuna-sweeper syntax, conditionals, derived values, enqueue checks."""

from __future__ import annotations

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Transformer
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeper.config import ConditionalSpace
from sweeper.space.search_space import check_enqueue, display_params, distribution_from_override, parse_search_space
from train.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Every form the official plugin documents, with the distribution its create_optuna_distribution_from_override gives.
OFFICIAL = [
    ("interval(0.1, 1)", FloatDistribution(0.1, 1.0)),
    ("interval(1, 10)", FloatDistribution(1.0, 10.0)),  # Hydra makes interval bounds floats
    ("int(interval(-5.0, 5.0))", IntDistribution(-5, 5)),
    ("tag(log, interval(1, 10))", FloatDistribution(1.0, 10.0, log=True)),
    ("tag(log, int(interval(1, 100)))", IntDistribution(1, 100, log=True)),
    ("int(tag(log, interval(1, 100)))", IntDistribution(1, 100, log=True)),
    ("range(1, 4)", IntDistribution(1, 4)),  # the plugin passes range's stop as Optuna's inclusive high
    ("range(0, 10, step=2)", IntDistribution(0, 10, step=2)),
    ("range(-5.0, 5.0)", FloatDistribution(-5.0, 5.0, step=1.0)),
    ("range(-5.5, 5.5, step=0.5)", FloatDistribution(-5.5, 5.5, step=0.5)),
    ("range(0, 5, step=0.5)", FloatDistribution(0.0, 5.0, step=0.5)),
    ("shuffle(range(-5, 5))", CategoricalDistribution(list(range(-5, 5)))),
    ("choice(-5.0, 0.0, 5.0)", CategoricalDistribution([-5.0, 0.0, 5.0])),
    ("choice(0, 1, 2, 3, 4, 5)", CategoricalDistribution([0, 1, 2, 3, 4, 5])),
    ("choice(adamw8bit, prodigy)", CategoricalDistribution(["adamw8bit", "prodigy"])),
    ("a,b,c", CategoricalDistribution(["a", "b", "c"])),
    ("choice(true, false)", CategoricalDistribution([True, False])),
    ("a,null,[1,2]", CategoricalDistribution(["a", "null", "[1,2]"])),  # Transformer.encode of non-primitives
]


@pytest.mark.parametrize(("text", "expected"), OFFICIAL)
def test_official_forms(text, expected):
    assert distribution_from_override("x", text) == expected
    assert parse_search_space({"x": text}).distributions == {"x": expected}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([4, 8, 16], CategoricalDistribution([4, 8, 16])),
        (["adamw8bit", "a,b", "true"], CategoricalDistribution(["adamw8bit", "a,b", "true"])),
        ([[1, 2], [3, 4]], CategoricalDistribution(["[1,2]", "[3,4]"])),
        (5, "5"),
        (0.0001, "0.0001"),
        (True, "True"),  # the plugin's get_value_element_as_str; Hydra reads it back as true
        (None, "null"),
        ("cosine", "cosine"),
        ("'a b'", "'a b'"),
    ],
)
def test_yaml_typed_values(value, expected):
    assert distribution_from_override("x", value) == expected


def test_omegaconf_params_and_fixed_pass_through():
    params = OmegaConf.create({"network.dim": [4, 8], "train.steps": 100, "name": "'a b'"})
    space = parse_search_space(params)
    assert space.distributions == {"network.dim": CategoricalDistribution([4, 8])}
    assert space.fixed == {"train.steps": "100", "name": "'a b'"}
    values = space.sample(optuna.create_study().ask())
    assert values["train.steps"] == 100 and values["name"] == "a b"
    assert {"train.steps=100", "name='a b'"} <= set(space.overrides(values))


def _optimizer_space():
    return parse_search_space(
        {
            "optimizer": "choice(adamw8bit, prodigy, lion)",
            "network.dim": "choice(4, 8, 16)",
            "_alpha_ratio": [0.5, 1.0],
        },
        [
            ConditionalSpace(when={"optimizer": ["adamw8bit"]}, params={"lr": "tag(log, interval(1e-5, 1e-3))"}),
            {"when": {"optimizer": ["lion"]}, "params": {"lr": "tag(log, interval(1e-6, 1e-4))", "beta": [0.9, 0.99]}},
            {"when": {"optimizer": "prodigy"}, "params": {"d_coef": "interval(0.5, 2.0)"}},
        ],
        {"network.alpha": "network.dim * _alpha_ratio", "half": "max(network.dim // 2, 1)"},
    )


def test_conditionals_derived_and_virtual_keys():
    space = _optimizer_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = space.sample(trial)
        optimizer = values["optimizer"]
        seen.add(optimizer)
        assert ("lr" in values) == (optimizer in ("adamw8bit", "lion"))
        assert ("beta" in values) == (optimizer == "lion") and ("d_coef" in values) == (optimizer == "prodigy")
        if optimizer == "adamw8bit":
            assert 1e-5 <= values["lr"] <= 1e-3 and "lr|optimizer=adamw8bit" in trial.params
        if optimizer == "lion":
            assert 1e-6 <= values["lr"] <= 1e-4 and "lr|optimizer=lion" in trial.params
        assert "beta" not in trial.params or optimizer == "lion"  # a key in one block keeps its plain name
        assert values["network.alpha"] == values["network.dim"] * trial.params["_alpha_ratio"]
        assert values["half"] == max(values["network.dim"] // 2, 1)
        assert not any(key.startswith("_") for key in values)
        assert not any(o.startswith("_") for o in space.overrides(values))
        assert space.values_from_params(trial.params) == values
        study.tell(trial, 0.0)
    assert seen == {"adamw8bit", "prodigy", "lion"}


def _reparse(override: str):
    parsed = OverridesParser.create().parse_overrides([override])[0]
    assert not parsed.is_sweep_override()
    return parsed.get_key_element(), parsed.value()


def test_overrides_reparse_to_the_same_values():
    space = parse_search_space(
        {
            "s": ["a,b", "x y", "true", "1", " pad", 'it\'s "q"', None, [1, 2], 2.5, False],
            "t": "a,'b c',null,[1,2]",  # the plugin encodes these as override text
            "f": "interval(0, 1)",
            "optimizer": "prodigy",
            "path": "${oc.env:HOME}",
        }
    )
    assert space.distributions["t"] == CategoricalDistribution(["a", "'b c'", "null", "[1,2]"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(40):
        values = space.sample(study.ask())
        for override in space.overrides(values):
            key, parsed = _reparse(override)
            if key == "t":  # means what the plugin's own `t=<choice>` override meant
                assert parsed == _reparse(f"t={values['t']}")[1]
            else:  # exact type and value; null and lists are encoded as the plugin encodes them
                encoded = Transformer.encode(parsed)
                assert encoded == values[key] and type(encoded) is type(values[key])
    assert ("path", "${oc.env:HOME}") in [_reparse(o) for o in space.overrides(values)]  # fixed: the plugin's text
    assert "optimizer=prodigy" in space.overrides(values)
    assert space.overrides({"f": 0.1 + 0.2}) == ["f=0.30000000000000004"]


def test_enqueued_config_is_sampled_back():
    space = _optimizer_space()
    entry = {"optimizer": "lion", "lr": 5e-5, "beta": 0.99, "network.dim": 8, "_alpha_ratio": 0.5}
    check_enqueue(space, [entry])
    study = optuna.create_study()
    params = space.enqueue_params(entry)
    assert params["lr|optimizer=lion"] == 5e-5
    study.enqueue_trial(params)
    values = space.sample(study.ask())
    assert values["lr"] == 5e-5 and values["beta"] == 0.99 and values["network.alpha"] == 4.0


BAD_PARAMS = [
    ("interval(1, 2", "cannot parse"),
    ("interval(2, 1)", "empty"),
    ("interval(1, 1)", "empty"),
    ("interval(0, inf)", "finite"),
    ("tag(log, interval(0, 1))", "low bound > 0"),
    ("choice()", "empty choice"),
    ([], "empty list"),
    ("range(5, 1)", "no values"),
    ("range(0, 10, step=-1)", "step must be > 0"),
    ("tag(foo, interval(0, 1))", "unsupported tag foo"),
    ("tag(log, choice(1, 4))", "unsupported tag log"),
    ("glob(*)", "glob"),
    ("interval(1, 2),interval(3, 4)", "cannot contain another sweep"),
]


def test_forms_the_official_plugin_accepts(caplog):
    # range(1,1) is one value; `log` on a range is dropped, as the plugin drops it, but said.
    space = parse_search_space({"a": "range(1,1)", "b": "tag(log, range(1, 4))", "c": "range(0.5, 0.5, step=0.5)"})
    assert space.distributions["a"] == IntDistribution(1, 1)
    assert space.distributions["b"] == IntDistribution(1, 4)
    assert space.distributions["c"] == FloatDistribution(0.5, 0.5, step=0.5)
    assert "hydra.sweeper.params.b: `log` is ignored on range()" in caplog.text
    assert parse_search_space(None).distributions == {}  # params: null


@pytest.mark.parametrize(("value", "problem"), BAD_PARAMS)
def test_malformed_params(value, problem):
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.params\.lr: ") as error:
        parse_search_space({"lr": value})
    assert problem in str(error.value)


@pytest.mark.parametrize(
    ("conditional", "where"),
    [
        ([{"when": {"nope": ["a"]}, "params": {"y": [1]}}], r"conditional\[0\]\.when\.nope: .*not set"),
        ([{"when": {"x": ["c"]}, "params": {"y": [1]}}], r"conditional\[0\]\.when\.x: 'c' is not one of"),
        ([{"when": {"x": ["a"]}, "params": {"x": "b"}}], r"conditional\[0\]\.params\.x: .*already in"),
        ([{"when": {"x": ["a"]}, "params": {"y": "interval(2, 1)"}}], r"conditional\[0\]\.params\.y: .*empty"),
        ([{"when": {"x": ["a"]}}], r"conditional\[0\]\.params: "),
        ([{"when": {}, "params": {"y": [1]}}], r"conditional\[0\]\.when: "),
        ([{"when": {"x": ["a"]}, "params": {"y": [1]}, "if": 1}], r"conditional\[0\]: unknown key 'if'"),
        ([{"when": {"x": "a"}, "params": {"y": [1]}}, {"when": {"x": "a"}, "params": {"y": [2]}}], r"conditional\[1\]"),
        ("oops", r"hydra\.sweeper\.conditional: "),
    ],
)
def test_malformed_conditional(conditional, where):
    with pytest.raises(ConfigError, match=where):
        parse_search_space({"x": "a,b"}, conditional)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("network.dim *", "not a valid expression"),
        ("network.dims * 2", "unknown name 'network.dims'"),
        ("__import__('os').system('true')", "not allowed"),
        ("network.dim.real", "unknown name"),
        ("'a' * 3", "not allowed"),
        ("network.dim if 1 else 2", "not allowed"),
        ("min(network.dim)", "takes 2"),
        ("opt * 2", "can be 'a', not a number"),
        ("x", "also a sweep param"),
    ],
)
def test_malformed_derived(expression, problem):
    params = {"network.dim": [4, 8], "opt": ["a", "b"], "x": [1]}
    key = "x" if expression == "x" else "network.alpha"
    with pytest.raises(ConfigError, match=rf"hydra\.sweeper\.derived\.{key}: ") as error:
        parse_search_space(params, derived={key: expression})
    assert problem in str(error.value)


def test_derived_runtime_error_names_the_key():
    space = parse_search_space({"a": [0]}, derived={"b": "1 / a"})
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.derived\.b: .*a=0"):
        space.sample(optuna.create_study().ask())


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"nope": 1}, r"\[0\]\.nope: nope is not in the search space"),
        ({"network.dim": 5}, r"\[0\]\.network\.dim: 5 is not one of the choices"),
        ({"optimizer": "lion", "lr": 1.0}, r"\[0\]\.lr: 1\.0 is outside"),
        ({"lr": 1e-5}, r"\[0\]\.lr: lr is only searched when optimizer=adamw8bit or optimizer=lion"),
        ({"steps": 3}, r"\[0\]\.steps: 3 is not on the grid"),
        ({"steps": 2.5}, r"\[0\]\.steps: 2\.5 is not an integer"),
        ({"network.alpha": 4}, r"\[0\]\.network\.alpha: network\.alpha is derived"),
        ({"seed": 2}, r"\[0\]\.seed: seed is fixed to 1"),
        ("lion", r"\[0\]: must be a mapping"),
    ],
)
def test_check_enqueue_errors(entry, problem):
    space = parse_search_space(
        {"network.dim": "choice(4, 8, 16)", "optimizer": "choice(adamw8bit, prodigy, lion)", "_alpha_ratio": [0.5, 1.0]}
        | {"steps": "range(0, 10, step=2)", "seed": 1},
        [{"when": {"optimizer": [name]}, "params": {"lr": "interval(1e-6, 1e-3)"}} for name in ("adamw8bit", "lion")],
        {"network.alpha": "network.dim * _alpha_ratio"},
    )
    check_enqueue(space, [{"optimizer": "lion", "lr": 1e-4, "steps": 4, "seed": 1}])
    with pytest.raises(ConfigError, match=rf"hydra\.sweeper\.enqueue{problem}"):
        check_enqueue(space, [entry])


def test_params_read_by_config_key_for_people():
    space = parse_search_space(
        {"network": "choice(lora,loha)"},
        [
            {"when": {"network": ["lora"]}, "params": {"network.dim": "choice(4,8)"}},
            {"when": {"network": ["loha"]}, "params": {"network.dim": "choice(8,16)"}},
        ],
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    values = space.sample(trial)
    assert any("|" in name for name in trial.params)  # one Optuna name per block...
    assert display_params(trial.params) == values  # ...shown as the config key it sets
