"""Safe arithmetic for `hydra.sweeper.derived`, e.g. ``network.alpha: "network.dim * _alpha_ratio"``.

Only numbers, names of sweep keys (dotted ones too), + - * / // **, unary +/- and min/max/round/int
are allowed; the tree is walked by hand, never eval()'d, so a config cannot run code.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from train.errors import ConfigError

_MAX_EXPONENT = 1024  # keeps `10 ** 10 ** 9` from hanging the controller


def _power(base: Any, exponent: Any) -> Any:
    if abs(exponent) > _MAX_EXPONENT:
        raise ValueError(f"exponent {exponent} is too large")
    return base**exponent


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: _power,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
# name -> (function, min args, max args)
_FUNCTIONS = {"min": (min, 2, 64), "max": (max, 2, 64), "round": (round, 1, 2), "int": (int, 1, 1)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dotted(node: ast.expr) -> str | None:
    """`network.dim` parses as attribute access; read it back as one dotted key."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


@dataclass(frozen=True)
class Expression:
    key: str
    text: str
    tree: ast.expr
    names: tuple[str, ...]  # the sweep keys it reads

    def evaluate(self, values: Mapping[str, Any]) -> int | float:
        """The value for `values` (which must hold every name in `names`)."""
        for name in self.names:
            if not _is_number(values[name]):
                raise self._error(f"{name} is {values[name]!r}, not a number")
        try:
            result = _evaluate(self.tree, values)
        except (ArithmeticError, ValueError, TypeError) as e:
            raise self._error(f"failed with {self._inputs(values)}: {e}") from None
        if not _is_number(result):  # e.g. (-8) ** 0.5 is complex
            raise self._error(f"gave {result!r} with {self._inputs(values)}, not a real number")
        return result

    def _inputs(self, values: Mapping[str, Any]) -> str:
        return ", ".join(f"{n}={values[n]!r}" for n in self.names) or "no inputs"

    def _error(self, problem: str) -> ConfigError:
        return ConfigError(f"hydra.sweeper.derived.{self.key}: {self.text!r}: {problem}")


def compile_expression(key: str, text: Any, known: Collection[str]) -> Expression:
    """Parse and check `text`; a syntax error or an unknown name is a ConfigError naming the key."""
    where = f"hydra.sweeper.derived.{key}"
    if _is_number(text):
        text = repr(text)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: must be an arithmetic expression string, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ConfigError(f"{where}: {text!r} is not a valid expression ({e.msg})") from None
    names: list[str] = []
    _check(tree, where, text, names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown name {unknown[0]!r} in {text!r}; known keys: {', '.join(sorted(known))}")
    return Expression(key, text, tree, tuple(dict.fromkeys(names)))


def _check(node: ast.expr, where: str, text: str, names: list[str]) -> None:
    """Reject any node outside the allowed grammar; collect the names read."""
    dotted = _dotted(node)
    if dotted is not None:
        names.append(dotted)
    elif isinstance(node, ast.Constant) and _is_number(node.value):
        pass
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, where, text, names)
        _check(node.right, where, text, names)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _check(node.operand, where, text, names)
    elif isinstance(node, ast.Call):
        _check_call(node, where, text, names)
    else:
        raise ConfigError(
            f"{where}: {ast.unparse(node)!r} is not allowed in {text!r} (numbers, keys, + - * / // **, min max round int)"
        )


def _check_call(node: ast.Call, where: str, text: str, names: list[str]) -> None:
    func = node.func.id if isinstance(node.func, ast.Name) else None
    if func not in _FUNCTIONS or node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ConfigError(f"{where}: call {ast.unparse(node)!r} is not allowed; functions: min, max, round, int")
    _, lo, hi = _FUNCTIONS[func]
    if not lo <= len(node.args) <= hi:
        raise ConfigError(f"{where}: {func}() takes {lo} to {hi} arguments in {text!r}")
    for arg in node.args:
        _check(arg, where, text, names)


def _evaluate(node: ast.expr, values: Mapping[str, Any]) -> Any:
    dotted = _dotted(node)
    if dotted is not None:
        return values[dotted]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, values))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # _check allowed nothing else
    return _FUNCTIONS[node.func.id][0](*(_evaluate(a, values) for a in node.args))
