"""onnxshapes.Folding: values a graph computes before it reads a pixel, worked out as onnxruntime
computes them, on small values only; what onnxruntime would compute otherwise is refused."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from fashionlab.onnxshapes import SMALL_VALUES, Folding, Unfoldable


def fold(*nodes, values=None, shapes=None):
    values = dict(values or {})
    done = Folding(17).run(list(nodes), values, shapes or {})
    return values, done


def test_a_shape_becomes_a_value_and_arithmetic_on_it_is_followed():
    values, done = fold(helper.make_node("Shape", ["pixels"], ["s"]),
                        helper.make_node("Gather", ["s", "zero"], ["batch"], axis=0),
                        helper.make_node("Mul", ["batch", "ten"], ["tens"]),
                        values={"zero": np.array(0, np.int64), "ten": np.array(10, np.int64)},
                        shapes={"pixels": [64, 28, 28]})
    assert values["s"].tolist() == [64, 28, 28] and int(values["tens"]) == 640 and done == {0, 1, 2}


@pytest.mark.parametrize("p, q, quotient", [(-7, 2, -3), (7, -2, -3), (-7, -2, 3), (7, 2, 3), (-1, 4, 0)])
def test_integer_division_truncates_towards_zero_as_onnxruntime_does(p, q, quotient):
    values, _ = fold(helper.make_node("Div", ["p", "q"], ["r"]),
                     values={"p": np.array([p], np.int64), "q": np.array([q], np.int64)})
    assert values["r"].tolist() == [quotient] and values["r"].dtype == np.int64


def test_an_integer_divided_by_zero_or_overflowing_is_refused():
    with pytest.raises(Unfoldable, match="divided by zero"):
        fold(helper.make_node("Div", ["p", "q"], ["r"]), values={"p": np.array([1]), "q": np.array([0])})
    with pytest.raises(Unfoldable, match="overflows"):
        fold(helper.make_node("Mul", ["p", "p"], ["r"]), values={"p": np.array([2**40], np.int64)})


@pytest.mark.parametrize("value, to", [(300, TensorProto.UINT8), (2**40, TensorProto.INT32), (-1, TensorProto.UINT16)])
def test_a_cast_that_would_change_a_value_is_refused_never_wrapped(value, to):
    with pytest.raises(Unfoldable, match="overflows"):
        fold(helper.make_node("Cast", ["x"], ["y"], to=to), values={"x": np.array([value], np.int64)})


def test_a_cast_that_keeps_each_value_is_worked_out_and_floats_are_truncated():
    values, _ = fold(helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32),
                     values={"x": np.array([2.9, -2.9, 7.0], np.float32)})
    assert values["y"].tolist() == [2, -2, 7] and values["y"].dtype == np.int32


def test_a_concatenation_larger_than_the_small_values_is_refused_before_it_is_made():
    half = np.zeros(SMALL_VALUES // 2 + 1, np.int64)
    with pytest.raises(Unfoldable, match="too large"):
        fold(helper.make_node("Concat", ["a", "a"], ["b"], axis=0), values={"a": half})
    values, _ = fold(helper.make_node("Concat", ["a", "a"], ["b"], axis=0), values={"a": half[:10]})
    assert values["b"].size == 20


def test_large_tensors_are_weights_and_left_alone():
    values, done = fold(helper.make_node("Neg", ["w"], ["v"]), values={"w": np.zeros(SMALL_VALUES + 1, np.float32)})
    assert "v" not in values and done == set()
