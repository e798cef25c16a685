"""Preparing a model in memory: PRelu is re-expressed in elementwise operators that give the same numbers and
keep onnxruntime's blocked convolution layout, and dimensions are freed."""

import numpy as np
import onnxruntime as ort
import pytest

from workers.pipeline import protobuf_wire
from workers.pipeline.onnx_session import prepare_model

BYTES, VARINT = protobuf_wire.WIRE_BYTES, protobuf_wire.WIRE_VARINT
CHANNELS = 4
# Slopes as SFace's layers have them: all below 1 (some negative), all above 1, and both sides of 1.
SLOPES = {
    "below_one": np.array([0.25, -0.8, 0.0, 1.0], np.float32),
    "above_one": np.array([1.0, 1.12, 1.5, 3.0], np.float32),
    "both_sides": np.array([-0.5, 0.3, 1.12, 0.9], np.float32),
}


def _message(*fields) -> bytes:
    return protobuf_wire.serialise(list(fields))


def _text(number: int, text: str):
    return (number, BYTES, text.encode())


def _varint(number: int, value: int):
    return (number, VARINT, protobuf_wire.encode_varint(value))


def _float_tensor_info(name: str):
    dims = [(1, BYTES, _message(_text(2, "batch")))] + [
        (1, BYTES, _message(_varint(1, size))) for size in (CHANNELS, 3, 5)
    ]
    tensor_type = _message(_varint(1, 1), (2, BYTES, _message(*dims)))
    return _message(_text(1, name), (2, BYTES, _message((1, BYTES, tensor_type))))


def _prelu_chain_model(*extra_node_fields) -> bytes:
    """x -> PRelu(below_one) -> PRelu(above_one) -> PRelu(both_sides) -> y, slopes shaped (C, 1, 1); each
    PRelu node also gets `extra_node_fields`."""
    graph = []
    tensor = "x"
    for index, (name, slopes) in enumerate(SLOPES.items()):
        output = "y" if index == len(SLOPES) - 1 else f"h{index}"
        prelu = (_text(1, tensor), _text(1, name), _text(2, output), _text(4, "PRelu"), *extra_node_fields)
        graph.append((1, BYTES, _message(*prelu)))
        initializer = _message(
            _varint(1, CHANNELS), _varint(1, 1), _varint(1, 1), _varint(2, 1), _text(8, name),
            (9, BYTES, slopes.astype("<f4").tobytes()),
        )  # fmt: skip
        graph.append((5, BYTES, initializer))
        tensor = output
    graph += [
        _text(2, "prelu-chain"),
        (11, BYTES, _float_tensor_info("x")),
        (12, BYTES, _float_tensor_info("y")),
    ]
    opset = _message(_text(1, ""), _varint(2, 13))
    return _message(_varint(1, 8), (8, BYTES, opset), (7, BYTES, _message(*graph)))


def _graph(model: bytes) -> list[protobuf_wire.Field]:
    return protobuf_wire.parse(next(value for number, _, value in protobuf_wire.parse(model) if number == 7))


def _graph_strings(model: bytes, graph_field: int, field: int) -> list[str]:
    """The strings in `field` of each of the graph's `graph_field` entries (nodes 1, initializers 5)."""
    return [
        value.decode()
        for number, _, entry in _graph(model)
        if number == graph_field
        for inner, _, value in protobuf_wire.parse(entry)
        if inner == field
    ]


def _operators(model: bytes) -> list[str]:
    return _graph_strings(model, 1, 4)


def _reference(x: np.ndarray) -> np.ndarray:
    for slopes in SLOPES.values():
        x = np.where(x > 0, x, slopes.reshape(-1, 1, 1) * x)
    return x


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_prelu_layers_become_elementwise_operators():
    prepared = prepare_model(_prelu_chain_model())

    assert _operators(_prelu_chain_model()) == ["PRelu"] * 3
    # relu(x) + (-s) * relu(-x), whatever the slopes.
    assert _operators(prepared) == ["Relu", "Mul", "Relu", "Mul", "Add"] * 3
    # Each layer's constants -1 and -s replace its slopes, which nothing reads any more.
    assert sorted(_graph_strings(prepared, 5, 8)) == sorted(
        f"{name}/{constant}" for name in ("h0", "h1", "y") for constant in ("minus_one", "minus_slope")
    )


def test_prelu_of_another_domain_or_with_attributes_is_left_alone():
    for extra in [_text(7, "com.example"), (5, BYTES, _message(_text(1, "alpha")))]:
        assert _operators(prepare_model(_prelu_chain_model(extra))) == ["PRelu"] * 3


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e3])
def test_the_rewritten_layers_give_prelus_numbers_for_finite_inputs(scale):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, CHANNELS, 3, 5)) * scale).astype(np.float32)
    x[0, :, 0, 0] = 0.0  # equal up to the sign of zero, which nothing downstream can see

    prepared = _run(prepare_model(_prelu_chain_model()), x)

    np.testing.assert_array_equal(prepared, _reference(x))
    np.testing.assert_array_equal(prepared, _run(_prelu_chain_model(), x))


def test_freeing_all_dimensions_names_each_apart_from_the_shared_batch():
    prepared = prepare_model(_prelu_chain_model(), free_dimensions="all")

    shapes = {}
    for number, _, value_info in _graph(prepared):
        if number in (11, 12):
            fields = protobuf_wire.parse(value_info)
            name = next(value.decode() for field, _, value in fields if field == 1)
            tensor_type = protobuf_wire.parse(next(value for field, _, value in fields if field == 2))[0][2]
            shape = next(value for field, _, value in protobuf_wire.parse(tensor_type) if field == 2)
            shapes[name] = [
                protobuf_wire.parse(dim)[0][2].decode() for _, _, dim in protobuf_wire.parse(shape)
            ]

    assert shapes == {"x": ["batch", "x_1", "x_2", "x_3"], "y": ["batch", "y_1", "y_2", "y_3"]}


def test_sface_is_prepared_without_prelu_and_embeds_as_before(pipeline_config):
    model = pipeline_config.embedding.model_path.read_bytes()
    crop = np.random.default_rng(3).integers(0, 256, (2, 3, 112, 112)).astype(np.float32)

    prepared = prepare_model(model, free_dimensions="batch", extra_outputs=("conv_12_relu",))

    assert _operators(model).count("PRelu") == 27
    assert "PRelu" not in _operators(prepared)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    as_exported = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    as_prepared = ort.InferenceSession(prepared, options, providers=["CPUExecutionProvider"])
    for row in crop:
        # The exported graph keeps batch norms apart from the convolutions: float rounding differs a little.
        np.testing.assert_allclose(
            as_prepared.run(None, {"data": row[None]})[0],
            as_exported.run(None, {"data": row[None]})[0],
            atol=1e-4,
        )


def test_prepared_sface_leaves_the_blocked_convolution_layout_only_for_its_outputs(pipeline_config, tmp_path):
    model = pipeline_config.embedding.model_path.read_bytes()
    prepared = prepare_model(model, free_dimensions="batch", extra_outputs=("conv_12_relu",))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")

    ort.InferenceSession(prepared, options, providers=["CPUExecutionProvider"])

    optimized = (tmp_path / "optimized.onnx").read_bytes()
    if "com.microsoft.nchwc" not in _graph_strings(optimized, 1, 7):
        pytest.skip("onnxruntime runs no blocked layout on this CPU")
    # One conversion back per output (the embedding and the mask classifier's feature map); converting
    # around every PRelu made SFace 15-19 % slower.
    assert _operators(optimized).count("ReorderOutput") == 2
    assert _operators(optimized).count("ReorderInput") == 0
