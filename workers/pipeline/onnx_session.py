"""One onnxruntime session per model file, thread setting and process.

Models exported from older frameworks (SFace comes from MXNet) list every weight as an overridable graph
input and pin the batch dimension to 1; YuNet pins its input to 640x640 although its graph takes any size
(OpenCV's FaceDetectorYN.setInputSize relies on it). The first stops onnxruntime from folding batch norms
into the convolutions, the second forbids batched inference, the third makes a 640x480 photo pay for a
640x640 input. All are fixed here, in memory, by rewriting the few protobuf fields involved: the `onnx`
package is not a dependency and the weights are left untouched. The same rewrite can expose intermediate
tensors as extra outputs (the mask classifier reads one of the embedding network's feature maps from the run
that computes the embedding), and re-expresses PRelu, whose onnxruntime kernel is slow, in elementwise
operators that compute the same numbers (`_prelu_as_elementwise`).
"""

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from workers.pipeline import protobuf_wire
from workers.pipeline.errors import ModelUnavailable

BATCH_DIMENSION_NAME = "batch"
# Which dimensions of the graph's inputs and outputs become symbolic: none, the first, or all of them.
FreeDimensions = Literal["batch", "all"] | None

# ONNX protobuf field numbers (onnx/onnx.proto), only those rewritten here.
_MODEL_GRAPH = 7
_GRAPH_NODE = 1
_NODE_INPUT = 1
_NODE_OUTPUT = 2
_NODE_NAME = 3
_NODE_OP_TYPE = 4
_NODE_ATTRIBUTE = 5
_NODE_DOMAIN = 7
_GRAPH_INITIALIZER = 5
_GRAPH_INPUT = 11
_GRAPH_OUTPUT = 12
_GRAPH_VALUE_INFO = 13
_TENSOR_DIMS = 1
_TENSOR_DATA_TYPE = 2
_TENSOR_FLOAT_DATA = 4
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9
_FLOAT32_DATA_TYPE = 1  # TensorProto.DataType.FLOAT
_VALUE_INFO_NAME = 1
_VALUE_INFO_TYPE = 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_SHAPE = 2
_SHAPE_DIM = 1
_DIM_PARAM = 2


@dataclass(frozen=True)
class LoadedModel:
    session: ort.InferenceSession
    sha256: str

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]


_sessions: dict[tuple[int, Path, int, int, bool, FreeDimensions, tuple[str, ...]], LoadedModel] = {}
_sessions_lock = threading.Lock()


def load_model(
    path: Path,
    *,
    intra_op_threads: int,
    inter_op_threads: int,
    thread_spinning: bool = False,
    free_dimensions: FreeDimensions = None,
    extra_outputs: tuple[str, ...] = (),
) -> LoadedModel:
    """The process-wide session for `path`, created on first use, with `extra_outputs` (names of intermediate
    tensors) added after the model's own outputs.

    The key includes the process id: a session created before a fork (Celery's prefork pool) must not be
    shared with the child, whose copy of onnxruntime's thread pool is dead.

    `thread_spinning` lets idle pool threads busy-wait for the next operator. It shaves a little latency on
    a dedicated machine but, with several worker processes sharing the cores, the spinning threads steal
    the CPU the busy ones need (measured: SFace 2-3x slower on 2 oversubscribed cores), hence off by default.
    """
    path = Path(path).resolve()
    key = (
        os.getpid(),
        path,
        intra_op_threads,
        inter_op_threads,
        thread_spinning,
        free_dimensions,
        tuple(extra_outputs),
    )
    with _sessions_lock:
        if key not in _sessions:
            _sessions[key] = _create(
                path, intra_op_threads, inter_op_threads, thread_spinning, free_dimensions, extra_outputs
            )
        return _sessions[key]


def _create(
    path: Path,
    intra_op_threads: int,
    inter_op_threads: int,
    thread_spinning: bool,
    free_dimensions: FreeDimensions,
    extra_outputs: tuple[str, ...],
) -> LoadedModel:
    try:
        model_bytes = path.read_bytes()
    except OSError as error:
        raise ModelUnavailable(f"cannot read model {path}: {error}") from error
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if thread_spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if thread_spinning else "0")
    try:
        prepared = prepare_model(model_bytes, free_dimensions=free_dimensions, extra_outputs=extra_outputs)
        session = ort.InferenceSession(prepared, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ModelUnavailable(f"cannot load model {path}: {error}") from error
    return LoadedModel(session=session, sha256=hashlib.sha256(model_bytes).hexdigest())


def prepare_model(
    model_bytes: bytes, *, free_dimensions: FreeDimensions = None, extra_outputs: tuple[str, ...] = ()
) -> bytes:
    """`model_bytes` with weights removed from the graph inputs, PRelu in elementwise operators and, if asked,
    symbolic dimensions (the batch, named BATCH_DIMENSION_NAME, or every one) and intermediate tensors as
    extra outputs (ValueError if a node of the graph makes none of that name).

    Intermediate shape annotations (value_info) are dropped when dimensions are freed, since they may still
    say the old sizes; onnxruntime infers them again.
    """
    model_fields = protobuf_wire.parse(model_bytes)
    rewritten = []
    for number, wire_type, value in model_fields:
        if number == _MODEL_GRAPH and wire_type == protobuf_wire.WIRE_BYTES:
            value = _prepare_graph(value, free_dimensions, extra_outputs)
        rewritten.append((number, wire_type, value))
    return protobuf_wire.serialise(rewritten)


def _prepare_graph(graph: bytes, free_dimensions: FreeDimensions, extra_outputs: tuple[str, ...]) -> bytes:
    fields = protobuf_wire.parse(graph)
    weight_names = {
        _string_field(value, _TENSOR_NAME) for number, _, value in fields if number == _GRAPH_INITIALIZER
    }
    prelu_slopes = _prelu_slopes(fields)
    taken_names = _names(fields)
    unknown = sorted(set(extra_outputs) - _node_tensors(fields, _NODE_OUTPUT))
    if unknown:
        raise ValueError(f"the model has no intermediate tensors named {unknown}")
    rewritten, added_initializers = [], []
    for number, wire_type, value in fields:
        if number == _GRAPH_INPUT:
            if _string_field(value, _VALUE_INFO_NAME) in weight_names:
                continue
            if free_dimensions:
                value = _free_dimensions(value, free_dimensions)
        elif number == _GRAPH_OUTPUT and free_dimensions:
            value = _free_dimensions(value, free_dimensions)
        elif number == _GRAPH_VALUE_INFO and free_dimensions:
            continue
        elif number == _GRAPH_NODE:
            nodes, initializers = _prelu_as_elementwise(value, prelu_slopes, taken_names)
            rewritten.extend((number, wire_type, node) for node in nodes)
            added_initializers.extend(initializers)
            continue
        rewritten.append((number, wire_type, value))
    last_output = max(index for index, (number, _, _) in enumerate(rewritten) if number == _GRAPH_OUTPUT)
    # A name alone is a valid output declaration: onnxruntime infers the type and shape.
    rewritten[last_output + 1 : last_output + 1] = [
        (
            _GRAPH_OUTPUT,
            protobuf_wire.WIRE_BYTES,
            protobuf_wire.serialise([(_VALUE_INFO_NAME, protobuf_wire.WIRE_BYTES, name.encode())]),
        )
        for name in extra_outputs
    ]
    rewritten.extend((_GRAPH_INITIALIZER, protobuf_wire.WIRE_BYTES, tensor) for tensor in added_initializers)
    node_inputs = _node_tensors(rewritten, _NODE_INPUT)
    # The slopes of the rewritten PRelus are read by no node any more: left in, they are dead weights that
    # onnxruntime removes again, with a warning each, on every load.
    return protobuf_wire.serialise(
        [
            (number, wire_type, value)
            for number, wire_type, value in rewritten
            if number != _GRAPH_INITIALIZER
            or (name := _string_field(value, _TENSOR_NAME)) not in prelu_slopes
            or name in node_inputs
        ]
    )


def _node_tensors(graph_fields: list[protobuf_wire.Field], node_field: int) -> set[str]:
    """The names the graph's nodes list as inputs (node_field _NODE_INPUT) or outputs (_NODE_OUTPUT)."""
    return {
        value.decode()
        for number, _, node in graph_fields
        if number == _GRAPH_NODE
        for field_number, _, value in protobuf_wire.parse(node)
        if field_number == node_field
    }


def _prelu_as_elementwise(
    node: bytes, prelu_slopes: dict[str, np.ndarray], taken_names: set[str]
) -> tuple[list[bytes], list[bytes]]:
    """(nodes, initializers): `node` itself, or, for a standard PRelu whose slopes are a float32 initializer,
    nodes computing the same numbers for every finite input (up to the sign of a zero result) and the two
    constants they multiply by.

    onnxruntime's PRelu kernel with per-channel slopes is several times slower than a multiplication and a
    maximum, and its cost depends on the signs of the input: on aligned LFW faces it took 24.7 of SFace's 49
    ms for a face and its mirror image (one thread), on uniform noise 9 ms. PRelu(x) is x where x > 0 and s*x
    elsewhere: relu(x) + (-s) * relu(-x), whose terms are x + 0 or 0 + s*x, for any slope. It uses no operator
    but Relu, Add and products by per-channel constants because onnxruntime runs convolutions in a blocked
    channel layout and keeps that layout across exactly those operators (a product becomes a 1x1 depthwise
    convolution, the Relu and Add fuse into it); a Max or Sub between two convolutions makes it convert both
    operands back and the result forth, which made SFace 15-19 % slower (`docs/performance.md`).
    """
    fields = protobuf_wire.parse(node)
    inputs = [value.decode() for number, _, value in fields if number == _NODE_INPUT]
    outputs = [value.decode() for number, _, value in fields if number == _NODE_OUTPUT]
    if not _is_standard_prelu(node) or len(inputs) != 2 or inputs[1] not in prelu_slopes or len(outputs) != 1:
        return [node], []
    (x, slope), (y,) = inputs, outputs
    name = _string_field(node, _NODE_NAME) or y
    positive, negated, negative, scaled = (
        f"{y}/{part}" for part in ("positive", "negated", "negative", "scaled")
    )
    minus_one, minus_slope = f"{name}/minus_one", f"{name}/minus_slope"
    new_names = {positive, negated, negative, scaled, minus_one, minus_slope}
    new_names |= {f"{name}/{step}" for step in ("negate", "scale", "sum")}
    if taken_names & new_names:
        return [node], []  # never rename what the model itself names
    slopes = prelu_slopes[slope]
    nodes = [
        _node("Relu", [x], [positive], positive),
        _node("Mul", [x, minus_one], [negated], f"{name}/negate"),
        _node("Relu", [negated], [negative], negative),
        _node("Mul", [negative, minus_slope], [scaled], f"{name}/scale"),
        _node("Add", [positive, scaled], [y], f"{name}/sum"),
    ]
    return nodes, [
        _float32_tensor(minus_one, np.full_like(slopes, -1.0)),
        _float32_tensor(minus_slope, -slopes),
    ]


def _is_standard_prelu(node: bytes) -> bool:
    fields = protobuf_wire.parse(node)
    domain = _string_field(node, _NODE_DOMAIN) or ""
    has_attributes = any(number == _NODE_ATTRIBUTE for number, _, _ in fields)
    return _string_field(node, _NODE_OP_TYPE) == "PRelu" and domain in ("", "ai.onnx") and not has_attributes


def _node(op_type: str, inputs: list[str], outputs: list[str], name: str) -> bytes:
    wire = protobuf_wire.WIRE_BYTES
    return protobuf_wire.serialise(
        [(_NODE_INPUT, wire, value.encode()) for value in inputs]
        + [(_NODE_OUTPUT, wire, value.encode()) for value in outputs]
        + [(_NODE_NAME, wire, name.encode()), (_NODE_OP_TYPE, wire, op_type.encode())]
    )


def _float32_tensor(name: str, values: np.ndarray) -> bytes:
    """A TensorProto holding `values` (any shape) as little-endian float32 raw data."""
    return protobuf_wire.serialise(
        [
            (_TENSOR_DIMS, protobuf_wire.WIRE_VARINT, protobuf_wire.encode_varint(size))
            for size in values.shape
        ]
        + [
            (_TENSOR_DATA_TYPE, protobuf_wire.WIRE_VARINT, protobuf_wire.encode_varint(_FLOAT32_DATA_TYPE)),
            (_TENSOR_NAME, protobuf_wire.WIRE_BYTES, name.encode()),
            (_TENSOR_RAW_DATA, protobuf_wire.WIRE_BYTES, values.astype("<f4").tobytes()),
        ]
    )


def _names(graph_fields: list[protobuf_wire.Field]) -> set[str]:
    """Every tensor and node name the graph uses."""
    names = set()
    for number, _, value in graph_fields:
        if number == _GRAPH_NODE:
            names.update(
                field.decode()
                for field_number, _, field in protobuf_wire.parse(value)
                if field_number in (_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME)
            )
        elif number == _GRAPH_INITIALIZER:
            names.add(_string_field(value, _TENSOR_NAME))
        elif number in (_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO):
            names.add(_string_field(value, _VALUE_INFO_NAME))
    return names


def _prelu_slopes(graph_fields: list[protobuf_wire.Field]) -> dict[str, np.ndarray]:
    """The slopes of the graph's standard PRelu nodes, by initializer name, in their own shape: those stored
    in the graph as float32 (raw_data or packed float_data) with as many values as their dimensions say."""
    slope_names = set()
    for number, _, node in graph_fields:
        if number == _GRAPH_NODE and _is_standard_prelu(node):
            inputs = [value.decode() for field, _, value in protobuf_wire.parse(node) if field == _NODE_INPUT]
            slope_names.update(inputs[1:2])
    slopes = {}
    for number, _, tensor in graph_fields:
        if number != _GRAPH_INITIALIZER or (name := _string_field(tensor, _TENSOR_NAME)) not in slope_names:
            continue
        fields = protobuf_wire.parse(tensor)
        if protobuf_wire.repeated_varints(fields, _TENSOR_DATA_TYPE) != [_FLOAT32_DATA_TYPE]:
            continue
        dims = protobuf_wire.repeated_varints(fields, _TENSOR_DIMS)
        # Packed float_data may come in several pieces, which a reader must join.
        data = b"".join(
            value
            for field, wire_type, value in fields
            if field in (_TENSOR_FLOAT_DATA, _TENSOR_RAW_DATA) and wire_type == protobuf_wire.WIRE_BYTES
        )
        values = np.frombuffer(data, dtype="<f4")
        if values.size and values.size == int(np.prod(dims)):
            slopes[name] = values.reshape(dims)
    return slopes


def _free_dimensions(value_info: bytes, free_dimensions: FreeDimensions) -> bytes:
    tensor = _string_field(value_info, _VALUE_INFO_NAME)

    def rewrite_shape(shape: bytes) -> bytes:
        dims = protobuf_wire.parse(shape)
        positions = [i for i, (number, _, _) in enumerate(dims) if number == _SHAPE_DIM]
        for axis, position in enumerate(positions if free_dimensions == "all" else positions[:1]):
            # Equal names would tell onnxruntime that sizes are equal: only the batch is shared.
            name = BATCH_DIMENSION_NAME if axis == 0 else f"{tensor}_{axis}"
            symbolic = protobuf_wire.serialise([(_DIM_PARAM, protobuf_wire.WIRE_BYTES, name.encode())])
            dims[position] = (_SHAPE_DIM, protobuf_wire.WIRE_BYTES, symbolic)
        return protobuf_wire.serialise(dims)

    def rewrite_tensor_type(tensor_type: bytes) -> bytes:
        return _rewrite_submessage(tensor_type, _TENSOR_TYPE_SHAPE, rewrite_shape)

    def rewrite_type(type_proto: bytes) -> bytes:
        return _rewrite_submessage(type_proto, _TYPE_TENSOR, rewrite_tensor_type)

    return _rewrite_submessage(value_info, _VALUE_INFO_TYPE, rewrite_type)


def _rewrite_submessage(message: bytes, field_number: int, rewrite) -> bytes:
    return protobuf_wire.serialise(
        [
            (
                number,
                wire_type,
                rewrite(value) if number == field_number and wire_type == protobuf_wire.WIRE_BYTES else value,
            )
            for number, wire_type, value in protobuf_wire.parse(message)
        ]
    )


def _string_field(message: bytes, field_number: int) -> str | None:
    for number, wire_type, value in protobuf_wire.parse(message):
        if number == field_number and wire_type == protobuf_wire.WIRE_BYTES:
            return value.decode("utf-8")
    return None
