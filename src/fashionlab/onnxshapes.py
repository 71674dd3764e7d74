"""What an ONNX graph computes before it reads a pixel (the shapes it reshapes and expands to, the
constants it folds), worked out here with numpy rather than taken from ONNX's data propagation:
that propagation follows values where onnxruntime does not (a narrowing Cast, an overflow) and can
itself run out of memory on a few hundred bytes.

    values = Folding(opset).run(nodes, values, shapes)   # {tensor name: small numpy array}

Only the operators below are worked out, only on small values (SMALL_VALUES at most, in and out,
sized before anything is computed), and only where onnxruntime computes the same: a cast that
changes a value, an integer that overflows, a division by zero or an index out of range is refused
(`Unfoldable`), never wrapped. A tensor not worked out here has no known value: a shape that
depends on one cannot be known, and the graph is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

SMALL_VALUES = 4096  # a tensor larger than this is weights, not a shape or an index


class Unfoldable(Exception):
    """A value the graph computes that onnxruntime would not compute as numpy does."""


def _attribute(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _axes(node, given: list[np.ndarray], opset: int) -> list[int] | None:
    """Unsqueeze's and Squeeze's axes: an input from opset 13, an attribute before."""
    if opset >= 13:
        return [int(a) for a in given[1].ravel()] if len(given) > 1 else None
    axes = _attribute(node, "axes")
    return list(axes) if axes is not None else None


def _exact(values: np.ndarray, kind: np.dtype) -> np.ndarray:
    """Python integers (exact) back to `kind`, refused if any does not fit."""
    info = np.iinfo(kind)
    if any(not info.min <= int(v) <= info.max for v in values.ravel()):
        raise Unfoldable("an integer that overflows")
    return values.astype(kind)


def _arithmetic(op: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def compute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.dtype != b.dtype:
            raise Unfoldable("operands of different kinds")
        if a.dtype.kind == "f":
            with np.errstate(all="ignore"):
                return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b)
        x, y = np.broadcast_arrays(a.astype(object), b.astype(object))
        if op == "Div":
            if any(v == 0 for v in y.ravel()):
                raise Unfoldable("an integer divided by zero")
            exact = np.frompyfunc(lambda p, q: abs(p) // abs(q) * (1 if (p < 0) == (q < 0) else -1), 2, 1)(x, y)
        else:
            exact = {"Add": x + y, "Sub": x - y, "Mul": x * y}[op]
        return _exact(np.asarray(exact), a.dtype)

    return compute


def _cast(x: np.ndarray, to: int) -> np.ndarray:
    from onnx import helper

    kind = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if kind.kind in "iu" and x.dtype.kind in "fiub":
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise Unfoldable("a cast of a number that is not finite to an integer")
        return _exact(np.trunc(x).astype(object) if x.dtype.kind == "f" else x.astype(object), kind)
    if kind.kind in "fb" and x.dtype.kind in "fiub":
        return x.astype(kind)
    raise Unfoldable(f"a cast to {kind}")


def _reshape(x: np.ndarray, shape: np.ndarray, allowzero: int) -> np.ndarray:
    target = [int(d) for d in shape.ravel()]
    if not allowzero:
        target = [x.shape[i] if d == 0 and i < x.ndim else d for i, d in enumerate(target)]
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise Unfoldable("a reshape to an impossible shape")
    if -1 in target:
        rest = math.prod(d for d in target if d != -1)
        if rest == 0 or x.size % rest:
            raise Unfoldable("a reshape to an impossible shape")
        target[target.index(-1)] = x.size // rest
    if math.prod(target) != x.size:
        raise Unfoldable("a reshape to a shape of another size")
    return x.reshape(target)


def _gather(x: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    if not -x.ndim <= axis < x.ndim or indices.dtype.kind not in "iu":
        raise Unfoldable("a gather along no axis, or by indices that are not integers")
    length = x.shape[axis]
    if indices.size * (x.size // length if length else 0) > SMALL_VALUES:
        raise Unfoldable("a value too large to work out")
    if ((indices < -length) | (indices >= length)).any():
        raise Unfoldable("an index out of range")
    return np.take(x, np.where(indices < 0, indices + length, indices), axis=axis)


def _range(start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    if any(v.ndim or v.dtype != start.dtype for v in (start, limit, delta)) or delta == 0:
        raise Unfoldable("a range that is not three numbers of one kind, or of step 0")
    count = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    if count > SMALL_VALUES:
        raise Unfoldable("a range too long")
    return (start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)


def _broadcast(*shapes: Iterable[int]) -> tuple[int, ...]:
    try:
        shape = np.broadcast_shapes(*[tuple(s) for s in shapes])
    except ValueError:
        raise Unfoldable("shapes that do not broadcast") from None
    if math.prod(shape) > SMALL_VALUES:
        raise Unfoldable("a value too large to work out")
    return shape


def _expand(x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    target = [int(d) for d in shape.ravel()]
    if any(d < 0 for d in target):
        raise Unfoldable("an expansion to a negative size")
    return np.broadcast_to(x, _broadcast(x.shape, target)).copy()


class Folding:
    """The node kinds worked out here, at one opset version (see the module's doc)."""

    def __init__(self, opset: int):
        self.opset = opset

    def run(self, nodes, values: dict[str, np.ndarray], shapes: Mapping[str, list[int]]) -> set[int]:
        """Work out every node of `nodes` whose inputs are known (a Shape: its input's shape) and
        whose output is small; adds their outputs to `values`. Returns the positions of the nodes
        worked out. Raises Unfoldable where a value onnxruntime computes cannot be matched."""
        done: set[int] = set()
        for position, node in enumerate(nodes):
            if node.op_type == "Shape":
                if node.input[0] not in shapes:
                    continue
                dims = np.array(shapes[node.input[0]], np.int64)
                given = [dims[_attribute(node, "start", 0):_attribute(node, "end", len(dims))]]
            elif node.op_type in self.OPERATORS and all(i in values for i in node.input if i):
                given = [values[i] for i in node.input if i]
                if any(v.size > SMALL_VALUES for v in given):
                    continue
            else:
                continue
            out = given[0] if node.op_type == "Shape" else self.OPERATORS[node.op_type](self, node, given)
            if out.size <= SMALL_VALUES:
                values[node.output[0]] = np.asarray(out)
                done.add(position)
        return done

    def _concat(self, node, given):
        if sum(v.size for v in given) > SMALL_VALUES or len({v.ndim for v in given}) != 1:
            raise Unfoldable("a concatenation too large, or of values of different ranks")
        try:
            return np.concatenate(given, axis=_attribute(node, "axis"))
        except (ValueError, TypeError):  # numpy's AxisError is a ValueError
            raise Unfoldable("a concatenation of values that do not fit together") from None

    def _unsqueeze(self, node, given):
        axes = _axes(node, given, self.opset) or []
        rank = given[0].ndim + len(axes)
        if not axes or any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
            raise Unfoldable("an unsqueeze along impossible axes")
        return np.expand_dims(given[0], tuple(sorted(a % rank for a in axes)))

    def _squeeze(self, node, given):
        x, axes = given[0], _axes(node, given, self.opset)
        axes = [i for i, d in enumerate(x.shape) if d == 1] if axes is None else axes
        if any(not -x.ndim <= a < x.ndim or x.shape[a] != 1 for a in axes):
            raise Unfoldable("a squeeze along an axis that is not 1 long")
        return np.squeeze(x, tuple(a % x.ndim for a in axes))

    def _elementwise(self, node, given):
        _broadcast(*(v.shape for v in given))
        return _arithmetic(node.op_type)(*given)

    def _transpose(self, node, given):
        perm = _attribute(node, "perm")
        if perm is not None and sorted(perm) != list(range(given[0].ndim)):
            raise Unfoldable("a transpose by an impossible permutation")
        return np.transpose(given[0], perm)

    def _unary(self, node, given):
        x = given[0]
        if node.op_type == "Sqrt" and x.dtype.kind != "f":
            raise Unfoldable("a square root of integers")
        if node.op_type == "Neg" and x.dtype.kind in "iu":
            return _exact(-x.astype(object), x.dtype)
        with np.errstate(all="ignore"):
            return {"Identity": lambda v: v, "Neg": np.negative, "Sqrt": np.sqrt}[node.op_type](x)

    def _constant(self, node, given):
        from onnx import numpy_helper

        for name, kind in (("value", None), ("value_int", np.int64), ("value_ints", np.int64),
                           ("value_float", np.float32), ("value_floats", np.float32)):
            value = _attribute(node, name)
            if value is not None:
                return numpy_helper.to_array(value) if kind is None else np.array(value, kind)
        raise Unfoldable("a constant of another kind than numbers")

    OPERATORS: dict[str, Callable[[Folding, Any, list[np.ndarray]], np.ndarray]] = {
        "Constant": _constant,
        "Identity": _unary, "Neg": _unary, "Sqrt": _unary,
        "Add": _elementwise, "Sub": _elementwise, "Mul": _elementwise, "Div": _elementwise,
        "Cast": lambda self, node, given: _cast(given[0], _attribute(node, "to")),
        "Concat": _concat,
        "Expand": lambda self, node, given: _expand(*given),
        "Gather": lambda self, node, given: _gather(*given, _attribute(node, "axis", 0)),
        "Range": lambda self, node, given: _range(*given),
        "Reshape": lambda self, node, given: _reshape(given[0], given[1], _attribute(node, "allowzero", 0)),
        "Squeeze": _squeeze,
        "Transpose": _transpose,
        "Unsqueeze": _unsqueeze,
    }
