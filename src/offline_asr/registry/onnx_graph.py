"""The input and output names, types and shapes of an ONNX file, read without its weights.

The `onnx` package is not installed where models are served, and onnxruntime only tells a
graph's inputs after loading all of it. This reads the protobuf wire format directly: the
graph's `input` and `output` lists are parsed, everything else (nodes, initializers: nearly all
of a file's bytes) is skipped with a seek, so a 900 MB encoder is checked in milliseconds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from offline_asr.errors import SourceError

# Field numbers in onnx.proto (ModelProto.graph, GraphProto.input/output, ValueInfoProto, ...).
_MODEL_GRAPH = 7
_GRAPH_INPUT, _GRAPH_OUTPUT = 11, 12
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_ELEM, _TENSOR_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5

ELEMENT_TYPES = {1: "float32", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}
"""TensorProto.DataType codes of the types GigaAM graphs use, by name."""

Dim = int | str | None
"""A fixed size, a symbolic one (e.g. ``batch_size``), or unknown."""


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class GraphIO:
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


class _TruncatedError(Exception):
    pass


def _varint(stream: BinaryIO) -> int:
    value = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise _TruncatedError
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 64 bits")


def _fields(stream: BinaryIO, end: int | None) -> tuple[int, int] | None:
    """The next (field number, wire type), or None at `end` (or at the end of the file)."""
    if end is not None and stream.tell() >= end:
        return None
    try:
        key = _varint(stream)
    except _TruncatedError:
        if end is None:
            return None
        raise
    return key >> 3, key & 7


def _skip(stream: BinaryIO, wire: int) -> None:
    if wire == _VARINT:
        _varint(stream)
    elif wire in (_FIXED64, _FIXED32):
        stream.seek(8 if wire == _FIXED64 else 4, io.SEEK_CUR)
    elif wire == _LENGTH:
        stream.seek(_varint(stream), io.SEEK_CUR)
    else:
        raise ValueError(f"unsupported protobuf wire type {wire}")


def _message(data: bytes) -> list[tuple[int, int | bytes]]:
    """The (field, value) pairs of a small message held in memory."""
    stream = io.BytesIO(data)
    pairs: list[tuple[int, int | bytes]] = []
    while (field := _fields(stream, len(data))) is not None:
        number, wire = field
        if wire == _VARINT:
            pairs.append((number, _varint(stream)))
        elif wire == _LENGTH:
            pairs.append((number, stream.read(_varint(stream))))
        else:
            _skip(stream, wire)
    return pairs


def _dim(data: bytes) -> Dim:
    for number, value in _message(data):
        if number == _DIM_VALUE and isinstance(value, int):
            return value
        if number == _DIM_PARAM and isinstance(value, bytes):
            return value.decode("utf-8")
    return None


def _tensor_info(data: bytes) -> TensorInfo:
    name, dtype = "", "unknown"
    shape: tuple[Dim, ...] = ()
    for number, value in _message(data):
        if number == _VALUE_NAME and isinstance(value, bytes):
            name = value.decode("utf-8")
        elif number == _VALUE_TYPE and isinstance(value, bytes):
            for kind, tensor in _message(value):
                if kind != _TYPE_TENSOR or not isinstance(tensor, bytes):
                    continue
                for part, content in _message(tensor):
                    if part == _TENSOR_ELEM and isinstance(content, int):
                        dtype = ELEMENT_TYPES.get(content, f"type {content}")
                    elif part == _TENSOR_SHAPE and isinstance(content, bytes):
                        shape = tuple(
                            _dim(d)
                            for n, d in _message(content)
                            if n == _SHAPE_DIM
                            if isinstance(d, bytes)
                        )
    return TensorInfo(name, dtype, shape)


def read_graph_io(path: Path) -> GraphIO:
    """The inputs and outputs of the ONNX graph in `path`; SourceError names a bad file."""
    inputs: dict[str, TensorInfo] = {}
    outputs: dict[str, TensorInfo] = {}
    found = False
    try:
        with path.open("rb") as stream:
            while (field := _fields(stream, None)) is not None:
                number, wire = field
                if number != _MODEL_GRAPH or wire != _LENGTH:
                    _skip(stream, wire)
                    continue
                found = True
                end = _varint(stream) + stream.tell()
                while (item := _fields(stream, end)) is not None:
                    part, kind = item
                    if part in (_GRAPH_INPUT, _GRAPH_OUTPUT) and kind == _LENGTH:
                        info = _tensor_info(stream.read(_varint(stream)))
                        (inputs if part == _GRAPH_INPUT else outputs)[info.name] = info
                    else:
                        _skip(stream, kind)
                stream.seek(end)
    except (ValueError, UnicodeDecodeError, _TruncatedError) as error:
        reason = str(error) or "it ends too early"
        raise SourceError(f"{path} is not an ONNX model file ({reason})") from error
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error.strerror or error}") from error
    if not found or not outputs:
        raise SourceError(f"{path} is not an ONNX model file (it has no graph outputs)")
    return GraphIO(inputs, outputs)
