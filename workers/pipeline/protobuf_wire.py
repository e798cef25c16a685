"""The protobuf wire format, just enough to read and rewrite ONNX model files without the `onnx` package.

A message is a list of (field number, wire type, raw payload) in file order; `parse` and `serialise` are
exact inverses, so a rewrite touches only the fields it changes.
"""

WIRE_VARINT, WIRE_FIXED64, WIRE_BYTES, WIRE_FIXED32 = 0, 1, 2, 5

Field = tuple[int, int, bytes]


def read_varint(buffer: bytes, position: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `position`."""
    result = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def encode_varint(value: int) -> bytes:
    """The varint encoding of a non-negative integer."""
    encoded = bytearray()
    while True:
        low_bits = value & 0x7F
        value >>= 7
        if value:
            encoded.append(low_bits | 0x80)
        else:
            encoded.append(low_bits)
            return bytes(encoded)


def repeated_varints(fields: list[Field], number: int) -> list[int]:
    """Every value of the repeated varint field `number`, whether written packed or one by one."""
    values = []
    for field_number, wire_type, payload in fields:
        if field_number != number:
            continue
        if wire_type != WIRE_BYTES:
            values.append(read_varint(payload, 0)[0])
            continue
        position = 0
        while position < len(payload):
            value, position = read_varint(payload, position)
            values.append(value)
    return values


def parse(message: bytes) -> list[Field]:
    """The top-level fields of a protobuf message, in order, each with its raw payload."""
    fields = []
    position, end = 0, len(message)
    while position < end:
        key, position = read_varint(message, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == WIRE_VARINT:
            _, value_end = read_varint(message, position)
        elif wire_type == WIRE_FIXED64:
            value_end = position + 8
        elif wire_type == WIRE_FIXED32:
            value_end = position + 4
        elif wire_type == WIRE_BYTES:
            length, position = read_varint(message, position)
            value_end = position + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} in field {number}")
        if value_end > end:
            raise ValueError("truncated protobuf message")
        fields.append((number, wire_type, message[position:value_end]))
        position = value_end
    return fields


def serialise(fields: list[Field]) -> bytes:
    """The message made of these fields, in this order."""
    parts = []
    for number, wire_type, value in fields:
        parts.append(encode_varint(number << 3 | wire_type))
        if wire_type == WIRE_BYTES:
            parts.append(encode_varint(len(value)))
        parts.append(value)
    return b"".join(parts)
