"""ONNX files as untrusted programs: what `check_graph` refuses before onnxruntime reads a file
(each a file an attacker could craft from a real export), and what `OnnxModel` checks while it
runs one (the batch sizes it may be given, the time of a call, the answer)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from helpers import huge_product_onnx, onnx_model, onnx_probabilities, slow_onnx
from onnx import helper

from fashionlab import export
from fashionlab.errors import ModelTimeout, RunError
from fashionlab.onnxrun import OnnxModel


@pytest.fixture(scope="module")
def exported(tiny_run, synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    return export.export(tiny_run.run.path, out=out, data=synthetic), out


def exported_path(folder):
    return folder / "for-damage.onnx"


def _external(model):
    """The first weights tensor read from a file beside the model (onnxruntime: beside the working folder)."""
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="secret.bin")
    return model


def _constant_external(model):
    value = onnx.numpy_helper.from_array(np.zeros(4, np.float32), "c")
    value.ClearField("raw_data")
    value.data_location = onnx.TensorProto.EXTERNAL
    value.external_data.add(key="location", value="../secret.bin")
    model.graph.node.append(helper.make_node("Constant", [], ["c_out"], value=value))
    return model


def _foreign_operator(model):
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.graph.node.append(helper.make_node("Gelu", ["pixels"], ["gelu"], domain="com.microsoft"))
    return model


def _function(model):
    model.opset_import.append(helper.make_opsetid("custom", 1))
    model.functions.append(helper.make_function("custom", "twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], [
        "y"])], [helper.make_opsetid("", 17)]))
    model.graph.node.append(helper.make_node("twice", ["pixels"], ["doubled"], domain="custom"))
    return model


def _loop(model):
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
                             [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, [])])
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(2**62, np.int64), "forever"),
                                    onnx.numpy_helper.from_array(np.array(True), "true")])
    model.graph.node.append(helper.make_node("Loop", ["forever", "true"], [], body=body))
    return model


def _subgraph_on_an_allowed_operator(model):
    body = helper.make_graph([], "hidden", [], [])
    model.graph.node.append(helper.make_node("Identity", ["pixels"], ["same"], body=body))
    return model


def _operator(op_type, *inputs, **attributes):
    def build(model):
        model.graph.node.append(helper.make_node(op_type, list(inputs), ["out"], **attributes))
        return model
    return build


def _expand_to(dims):
    def build(model):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(dims, np.int64), "huge_shape"))
        model.graph.node.extend([helper.make_node("ReduceMean", ["pixels"], ["mean"], keepdims=0),
                                 helper.make_node("Expand", ["mean", "huge_shape"], ["huge"])])
        return model
    return build


def _batch_squared(model):
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([0], np.int64), "first"),
                                    onnx.numpy_helper.from_array(np.array([100_000], np.int64), "wide")])
    model.graph.node.extend([helper.make_node("Shape", ["pixels"], ["shape"]),
                             helper.make_node("Gather", ["shape", "first"], ["n"]),
                             helper.make_node("Mul", ["n", "n"], ["n_squared"]),
                             helper.make_node("Concat", ["n_squared", "wide"], ["square_shape"], axis=0),
                             helper.make_node("ReduceMean", ["pixels"], ["mean"], keepdims=0),
                             helper.make_node("Expand", ["mean", "square_shape"], ["square"])])
    return model


def _sized_by_the_data(declared):
    """A tensor as long as the brightest pixel times a million, declared (by its value_info) as `declared`."""
    def build(model):
        model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(0.0, np.float32), "start"),
                                        onnx.numpy_helper.from_array(np.array(1e6, np.float32), "million"),
                                        onnx.numpy_helper.from_array(np.array(1.0, np.float32), "step")])
        model.graph.node.extend([helper.make_node("ReduceMax", ["pixels"], ["brightest"], keepdims=0),
                                 helper.make_node("Mul", ["brightest", "million"], ["limit"]),
                                 helper.make_node("Range", ["start", "limit", "step"], ["counted"])])
        if declared is not None:
            model.graph.value_info.append(helper.make_tensor_value_info("counted", onnx.TensorProto.FLOAT, declared))
        return model
    return build


def _sparse(model):
    values = onnx.numpy_helper.from_array(np.ones(1, np.float32), "values")
    indices = onnx.numpy_helper.from_array(np.zeros(1, np.int64), "indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [16384, 32768]))
    return model


def _strings(model):
    model.graph.node.append(helper.make_node("Constant", [], ["text"], value=helper.make_tensor(
        "text", onnx.TensorProto.STRING, [1], [b"x" * 100])))
    return model


def _too_many_operators(model):
    model.graph.node.extend(helper.make_node("Identity", ["pixels"], [f"copy{i}"]) for i in range(20_001))
    return model


def _fixed_batch(model):
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    return model


def _other_signature(model):
    return helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "other",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 5])]),
        opset_imports=[helper.make_opsetid("", 17)])


def _wrong_class_count(model):  # declares more classes than a data set may have
    nodes, consts = onnx_probabilities()
    return onnx_model(nodes, consts, output_shape=("batch", 257))


def _one_class(model):
    nodes, consts = onnx_probabilities()
    return onnx_model(nodes, consts, output_shape=("batch", 1))


def _declared_but_not_computed(model):  # says (batch, 10), computes (batch, 12)
    nodes, consts = onnx_probabilities()
    consts[1] = onnx.numpy_helper.from_array(np.array([12], np.int64), "ten")
    return onnx_model(nodes, consts)


def _batch_then(*steps):
    """The batch size (from Shape and Gather), put through `steps` ((op, extra inputs, attributes)),
    then used as the length of a tensor."""
    def build(model):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "first"))
        nodes = [helper.make_node("Shape", ["pixels"], ["shape"]),
                 helper.make_node("Gather", ["shape", "first"], ["v0"])]
        for i, (op, extra, attributes) in enumerate(steps):
            for j, value in enumerate(extra):
                model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.int64), f"c{i}_{j}"))
            nodes.append(helper.make_node(op, [f"v{i}", *(f"c{i}_{j}" for j in range(len(extra)))], [f"v{i + 1}"],
                                          **attributes))
        nodes += [helper.make_node("ReduceMean", ["pixels"], ["mean"], keepdims=0),
                  helper.make_node("Expand", ["mean", f"v{len(steps)}"], ["sized"])]
        model.graph.node.extend(nodes)
        return model
    return build


def _doubled(times):
    """The shape (N, 28, 28) concatenated with itself `times` times: 3 * 2^times numbers."""
    def build(model):
        nodes = [helper.make_node("Shape", ["pixels"], ["s0"])]
        nodes += [helper.make_node("Concat", [f"s{i}", f"s{i}"], [f"s{i + 1}"], axis=0) for i in range(times)]
        nodes += [helper.make_node("ReduceMean", ["pixels"], ["mean"], keepdims=0),
                  helper.make_node("Expand", ["mean", f"s{times}"], ["sized"])]
        model.graph.node.extend(nodes)
        return model
    return build


HOSTILE = {  # how a crafted file is made from a real export -> what the refusal says
    "external data": (_external, "refers to tensor data in other files"),
    "external data in a constant": (_constant_external, "refers to tensor data in other files"),
    "a foreign operator": (_foreign_operator, "outside the default ONNX domain \\('com.microsoft'\\)"),
    "a local function": (_function, "holds functions"),
    "a loop": (_loop, "the operator 'Loop', which fashionlab's exports never do"),
    "an operator sized by its input": (_operator("ConstantOfShape", "pixels"), "the operator 'ConstantOfShape'"),
    "einsum": (_operator("Einsum", "pixels", "pixels", equation="abc,abc->"), "the operator 'Einsum'"),
    "a subgraph on an allowed operator": (_subgraph_on_an_allowed_operator, "holds subgraphs"),
    "a sparse initializer": (_sparse, "holds sparse tensors"),
    "a huge constant": (_expand_to([2**30]), "holds 4,29\\d,\\d{3},\\d{3} bytes of tensors and does [\\d,]+ "
                                             "multiply-adds for one image, more than the 1,073,741,824"),
    "a product of 68 billion multiply-adds": (lambda model: huge_product_onnx(), "does 68,7[\\d,]+ multiply-adds "
                                                                                 "for one image, more than"),
    "a shape known only from the data": (_sized_by_the_data(None), "does not follow from the batch size alone"),
    "a shape from the data, declared small": (_sized_by_the_data([1]), "does not follow from the batch size alone"),
    "a shape from the data, declared as the batch": (_sized_by_the_data(["batch"]),
                                                      "does not follow from the batch size alone"),
    "text tensors": (_strings, "holds tensors of text or of another kind than numbers"),
    "20,001 more operators": (_too_many_operators, "more than 20,000"),
    "a fixed batch": (_fixed_batch, "takes batches of exactly 1 images; export it with a batch size left open"),
    "another signature": (_other_signature, "takes 'x' float32 \\('n', 5\\), not one input `pixels` of float32 "
                                            "\\(N, 28, 28\\) images"),
    "257 classes": (_wrong_class_count, "not one output `probabilities` of float32 \\(N, classes\\) class "
                                       "probabilities, 2 to 256 classes"),
    "one class": (_one_class, "not one output `probabilities` of float32 \\(N, classes\\)"),
    "a declared shape it does not compute": (_declared_but_not_computed, "is not a valid ONNX graph"),
    # shape arithmetic onnxruntime computes otherwise than ONNX's data propagation, or that blows up
    "a narrowing cast that wraps": (_batch_then(("Add", [[65535]], {}), ("Cast", [], {"to": onnx.TensorProto.INT16}),
                                                ("Cast", [], {"to": onnx.TensorProto.INT64})),
                                    "computes an integer that overflows before it reads the pixels"),
    "an overflowing sum": (_batch_then(("Add", [[2**63 - 1]], {})), "computes an integer that overflows"),
    "an integer divided by zero": (_batch_then(("Div", [[0]], {})), "computes an integer divided by zero"),
    "an index out of range": (_batch_then(("Gather", [[7]], {})), "computes an index out of range"),
    "a shape doubled 40 times": (_doubled(40), "computes a concatenation too large"),
    "a slice by 2^62 steps": (_batch_then(("Slice", [[0], [2**62], [0], [2**62]], {})),
                              "does not follow from the batch size alone"),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_crafted_onnx_file_is_refused_before_onnxruntime_reads_it(kind, exported, tmp_path, monkeypatch):
    build, message = HOSTILE[kind]
    (tmp_path / "secret.bin").write_bytes(b"secret" * 1000)  # what external data would point onnxruntime at
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "crafted.onnx"
    path.write_bytes(build(onnx.load(exported[1])).SerializeToString())
    with pytest.raises(RunError, match=message) as refused:
        OnnxModel(path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


def test_a_model_that_grows_faster_than_its_batch_is_given_only_the_batches_that_fit(exported, tmp_path):
    path = tmp_path / "squared.onnx"
    path.write_bytes(_batch_squared(onnx.load(exported[1])).SerializeToString())  # a tensor of 10^5 x batch^2
    model = OnnxModel(path)
    assert model.batch_limit == 32 and model.costs[64].bytes > 2**30 >= model.costs[32].bytes
    assert all(model.costs[size].bytes >= 4 * 10**5 * size * size for size in model.costs)
    fine = OnnxModel(exported[1])
    assert fine.batch_limit == 1024 and fine.costs[1024].fits()
    x = np.zeros((70, 28, 28), np.float32)
    np.testing.assert_allclose(model.predict(x), fine.predict(x), atol=1e-6)  # in calls of 32, 32 and 8 (padded)



def _batch_hump(model):
    """A tensor of 2048 (n - 1)(1024 - n) values for a batch of n: nothing for 1 and 1024 images,
    gigabytes in between."""
    consts = {"first": [0], "one": [1], "top": [1024], "wide": [2048]}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
    model.graph.node.extend([helper.make_node("Shape", ["pixels"], ["shape"]),
                             helper.make_node("Gather", ["shape", "first"], ["n"]),
                             helper.make_node("Sub", ["n", "one"], ["above"]),
                             helper.make_node("Sub", ["top", "n"], ["below"]),
                             helper.make_node("Mul", ["above", "below"], ["hump"]),
                             helper.make_node("Mul", ["hump", "wide"], ["length"]),
                             helper.make_node("ReduceMean", ["pixels"], ["mean"], keepdims=0),
                             helper.make_node("Expand", ["mean", "length"], ["humped"])])
    return model


def test_a_batch_size_past_one_that_does_not_fit_is_never_used_even_if_a_larger_one_fits(exported, tmp_path):
    path = tmp_path / "hump.onnx"
    path.write_bytes(_batch_hump(onnx.load(exported[1])).SerializeToString())
    model = OnnxModel(path)
    assert not model.costs[256].fits() and model.batch_limit == 128  # 1024 would fit, but 256 and 512 do not


def test_every_call_is_given_a_batch_size_that_was_checked(exported):
    model = OnnxModel(exported[1])
    sizes, run = [], model.session.run

    def recorded(names, feeds, options):
        sizes.append(len(feeds["pixels"]))
        return run(names, feeds, options)

    model.session.run = recorded
    x = np.random.default_rng(0).integers(0, 255, (1500, 28, 28)).astype(np.float32)
    out = model.predict(x)
    assert out.shape == (1500, 10) and sizes == [1024, 512]  # 1024, then 476 images padded to 512
    assert all(size in model.costs and model.costs[size].fits() for size in sizes)
    model.predict(x[:3], batch_size=64)
    assert sizes[-1] == 4


def test_only_the_metadata_fields_export_writes_are_kept_each_of_its_kind(exported, tmp_path):
    graph = onnx.load(exported[1])
    nested: dict = {}
    for _ in range(300):
        nested = {"deeper": nested}
    said = {"name": "tiny", "run": ["not", "text"], "test_accuracy": "high", "class_names": ["a", 2],
            "config": {"width": 16, "dropout": 0.1, "nested": nested, "long": "x" * 5000, "fine": None},
            "extra": "dropped"}
    del graph.metadata_props[:]
    graph.metadata_props.add(key="fashionlab", value=json.dumps(said))
    onnx.save(graph, tmp_path / "meta.onnx")
    assert OnnxModel(tmp_path / "meta.onnx").metadata == {"name": "tiny",
                                                           "config": {"width": 16, "dropout": 0.1, "fine": None}}
    for members, kept in (([{"seed": 1, "nested": nested}, {"seed": 2}], [{"seed": 1}, {"seed": 2}]),  # an ensemble
                          ([{"seed": 1}] * 33, None), ([{"seed": 1}, "text"], None)):  # too many; not tables
        del graph.metadata_props[:]
        graph.metadata_props.add(key="fashionlab", value=json.dumps({"config": {"ensemble": members, "width": 3}}))
        onnx.save(graph, tmp_path / "meta.onnx")
        config = OnnxModel(tmp_path / "meta.onnx").metadata["config"]
        assert config == ({"width": 3} if kept is None else {"width": 3, "ensemble": kept})


def test_the_classes_of_a_file_come_from_its_metadata_when_it_names_them_one_each(exported, tmp_path):
    from fashionlab.datasets import FASHION_MNIST, MNIST

    def saying(said, name="said.onnx", classes=None):
        graph = onnx.load(exported[1]) if classes is None else onnx_model(*onnx_probabilities(classes=classes),
                                                                           output_shape=("batch", classes))
        del graph.metadata_props[:]
        graph.metadata_props.add(key="fashionlab", value=json.dumps(said))
        onnx.save(graph, tmp_path / name)
        return OnnxModel(tmp_path / name).dataset()

    assert saying({"dataset": "fashion-mnist", "class_names": list(FASHION_MNIST.class_names)}) is FASHION_MNIST
    assert saying({"dataset": "mnist", "class_names": list(MNIST.class_names)}) is MNIST  # with its photo rules
    own = saying({"dataset": "mnist", "class_names": [f"kind {i}" for i in range(10)]})  # not MNIST's names
    assert own.class_names[3] == "kind 3" and not own.mirror_turned and own.name not in ("mnist", "fashion-mnist")
    assert saying({}) is FASHION_MNIST  # exports made before data sets were recorded
    for said in ({"class_names": ["a"] * 10}, {"class_names": ["a", "b"]}, {"class_names": ["x\ny"] * 5 + ["z"] * 5}):
        assert saying(said) is FASHION_MNIST  # names that cannot be the classes: as good as none
    seven = saying({"class_names": [f"c{i}" for i in range(7)]}, "seven.onnx", classes=7)
    assert seven.class_names == tuple(f"c{i}" for i in range(7))
    assert saying({}, "bare.onnx", classes=7).class_names == tuple(f"class {i}" for i in range(7))


def test_shape_arithmetic_is_worked_out_as_onnxruntime_does_it(exported, tmp_path):
    """A length computed from the batch size is the length the check sees at every batch size:
    integer division truncates towards zero, as in onnxruntime (numpy's // would floor)."""
    path = tmp_path / "arithmetic.onnx"
    path.write_bytes(_batch_then(("Sub", [[-5]], {}), ("Neg", [], {}), ("Div", [[4]], {}), ("Neg", [], {}),
                                 ("Mul", [[1000]], {}))(onnx.load(exported[1])).SerializeToString())
    model, plain = OnnxModel(path), OnnxModel(exported[1])
    for size, thousands in ((1, 1), (64, 17)):  # -(1 + 5) / 4 = -1.5 -> -1; -(64 + 5) / 4 = -17.25 -> -17
        extra = model.costs[size].bytes - plain.costs[size].bytes
        assert thousands * 4000 <= extra < thousands * 4000 + 500  # float32, and a few small integers


def test_a_convolution_is_charged_for_the_patches_it_unrolls(exported, tmp_path):
    graph = onnx.load(exported[1])
    graph.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([-1, 1, 28, 28], np.int64), "image"),
                                    onnx.numpy_helper.from_array(np.ones((1, 1, 27, 27), np.float32), "kernel")])
    graph.graph.node.extend([helper.make_node("Reshape", ["pixels", "image"], ["images"]),
                             helper.make_node("Conv", ["images", "kernel"], ["blurred"], pads=[13, 13, 13, 13])])
    onnx.save(graph, tmp_path / "conv.onnx")
    model, plain = OnnxModel(tmp_path / "conv.onnx"), OnnxModel(exported[1])
    patches = 27 * 27 * 28 * 28 * 4  # each output position unrolls its 27 x 27 window: 2.3 MB
    assert model.costs[1].bytes - plain.costs[1].bytes >= patches


def test_a_graph_that_fails_as_it_runs_is_one_line_about_the_file(exported, tmp_path):
    graph = onnx.load(exported[1])
    graph.graph.initializer.append(onnx.numpy_helper.from_array(np.array([40], np.int64), "past_the_end"))
    graph.graph.node.append(helper.make_node("Gather", ["pixels", "past_the_end"], ["row"], axis=1))
    onnx.save(graph, tmp_path / "fails.onnx")
    with pytest.raises(RunError, match=r"the ONNX model fails.onnx failed on 3 images \(.*\); it is damaged") as failed:
        OnnxModel(tmp_path / "fails.onnx").predict(np.zeros((3, 28, 28), np.float32))
    assert "\n" not in str(failed.value) and "onnxruntime_src" not in str(failed.value)


def test_the_time_limit_is_for_all_of_a_predicts_calls_together(tmp_path):
    onnx.save(slow_onnx(), tmp_path / "slow.onnx")
    model = OnnxModel(tmp_path / "slow.onnx", timeout=300)
    x = np.zeros((1, 28, 28), np.float32)
    model.predict(x)  # warm
    started = time.monotonic()
    model.predict(x)
    one = time.monotonic() - started
    model.calls.seconds = 3 * one
    started = time.monotonic()
    with pytest.raises(ModelTimeout, match=r"took over [\d.]+ s on 12 images \(stopped\)"):
        model.predict(np.zeros((12, 28, 28), np.float32), batch_size=1)  # 12 calls, each within the limit
    assert time.monotonic() - started < 3 * one + 1.5


def test_files_that_are_not_onnx_models_are_refused_in_one_line(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk" * 100)
    with pytest.raises(RunError, match="is not an ONNX model \\(its bytes do not parse as one\\)"):
        OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(RunError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx")


def test_a_model_that_gives_something_else_than_probabilities_is_refused_at_its_first_answer(tmp_path):
    nodes, consts = onnx_probabilities()
    raw = onnx_model(nodes[:-1] + [helper.make_node("Identity", ["logits"], ["probabilities"])], consts)
    negative = onnx_model(nodes[:-1] + [helper.make_node("Softmax", ["logits"], ["p"]),
                                        helper.make_node("Neg", ["p"], ["probabilities"])], consts)
    fine = onnx_model(nodes, consts)
    x = np.full((3, 28, 28), 200, np.float32)
    for model in (raw, negative):
        onnx.save(model, tmp_path / "wrong.onnx")
        with pytest.raises(RunError, match="gives values that are not probabilities"):
            OnnxModel(tmp_path / "wrong.onnx").predict(x)
    onnx.save(fine, tmp_path / "fine.onnx")
    np.testing.assert_allclose(OnnxModel(tmp_path / "fine.onnx").predict(x).sum(axis=1), 1.0, atol=1e-6)


def test_a_slow_model_is_stopped_after_its_time_limit_and_can_be_asked_again(tmp_path):
    onnx.save(slow_onnx(), tmp_path / "slow.onnx")
    model = OnnxModel(tmp_path / "slow.onnx", timeout=0.05)
    x = np.zeros((16, 28, 28), np.float32)
    started = time.monotonic()
    for _ in range(2):  # stopped between two operators: free for the next call at once
        with pytest.raises(ModelTimeout, match="took over 0.05 s on 16 images \\(stopped\\)"):
            model.predict(x)
        assert model.calls.stuck_for() is None
    assert time.monotonic() - started < 2.5
    model.calls.seconds = 300
    np.testing.assert_allclose(model.predict(x).sum(axis=1), 1.0, atol=1e-6)  # it does answer, given the time


def test_predict_with_a_slow_onnx_file_ends_with_one_line_and_onnxruntime_says_nothing(tmp_path, synthetic):
    onnx.save(slow_onnx(), tmp_path / "slow.onnx")
    done = subprocess.run([sys.executable, "-m", "fashionlab", "predict", "--onnx", str(tmp_path / "slow.onnx"),
                           "--index", *map(str, range(16)), "--model-timeout", "0.05", "--data-dir",
                           str(synthetic.data_dir), "--no-verify"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("fashionlab: error: the ONNX model slow.onnx "
                                                                     "took over 0.05 s on 16 images (stopped)")
