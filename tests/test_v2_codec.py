"""The v2 codec in-process: Triton's binary tensor framing both ways, every datatype, and clear errors.

The bytes are built by ``tritonclient``'s own serializers (``tritonclient.utils``), so "as Triton
defines it" is checked against Triton's code rather than against our reading of its docs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, np_to_triton_dtype, serialize_byte_tensor

from shoal.server.errors import ApiError, BadRequest, Unprocessable
from shoal.server.v2_codec import (InferRequest, check_outputs, decode_request, encode_response,
                                   parse_json_length)
from shoal.server.v2_tensors import from_raw, from_values, tensor, to_raw

NUMERIC = [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64, np.float16,
           np.float32, np.float64]


def body(inputs: list[tuple[str, np.ndarray, bool]], **extra: object) -> tuple[bytes, int | None]:
    """A request as tritonclient frames it: JSON header, then each binary input's raw bytes in order."""
    header, tail = {"inputs": [], **extra}, []
    for name, arr, binary in inputs:
        dtype = np_to_triton_dtype(arr.dtype)
        entry: dict = {"name": name, "shape": list(arr.shape), "datatype": dtype}
        if binary:
            raw = serialize_byte_tensor(arr).item() if dtype == "BYTES" else arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = [v.decode() if isinstance(v, bytes) else v for v in arr.reshape(-1).tolist()]
        header["inputs"].append(entry)
    text = json.dumps(header).encode()
    return text + b"".join(tail), (len(text) if tail else None)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_every_numeric_datatype_round_trips_as_binary_and_json(dtype: type) -> None:
    arr = (np.arange(12) % 2 == 0) if dtype is np.bool_ else np.arange(12).astype(dtype)
    arr = arr.reshape(3, 4)
    for binary in (True, False):
        raw, length = body([("x", arr, binary)])
        t = decode_request(raw, length).inputs[0]
        assert t.shape == (3, 4) and t.datatype == np_to_triton_dtype(arr.dtype)
        np.testing.assert_array_equal(t.data, arr)
        assert to_raw(t) == arr.tobytes()


def test_bytes_tensors_keep_raw_bytes_and_json_strings() -> None:
    files = np.array([b"\x89PNG\r\n\x1a\n\x00\xff", b"", "caf\u00e9".encode()], dtype=object)
    raw, length = body([("image", files, True), ("text", np.array([b"hello"], dtype=object), False)])
    req = decode_request(raw, length)
    assert req.input("image").values() == list(files)  # type: ignore[union-attr]
    assert req.input("text").values() == ["hello"]  # type: ignore[union-attr]
    out = to_raw(tensor("label", "BYTES", ["positive", "caf\u00e9"]))
    assert list(deserialize_bytes_tensor(out)) == [b"positive", "caf\u00e9".encode()]


def test_bf16_travels_as_its_upper_16_bits() -> None:
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    wire = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    t = from_raw("x", "BF16", [3], wire)
    np.testing.assert_array_equal(t.data, values)
    assert to_raw(t) == wire


def test_nested_json_data_is_row_major_and_must_fill_the_shape() -> None:
    t = from_values("x", "INT32", [2, 2], [[1, 2], [3, 4]])
    assert t.data.tolist() == [[1, 2], [3, 4]]
    for shape, data, words in (([3], [1, 2], "holds 3 elements but data has 2"),
                               ([2], [1, 2.5], "must be integers"),
                               ([1], [300], "do not fit"),
                               ([1], [True], "must be integers")):
        with pytest.raises(Unprocessable, match=words):
            from_values("x", "UINT8" if data == [300] else "INT32", shape, data)
    deep: list = [1]
    for _ in range(100):
        deep = [deep]
    with pytest.raises(Unprocessable, match="deeper than 32"):
        from_values("x", "INT32", [1], deep)


def test_outputs_follow_binary_data_output_and_per_output_choice() -> None:
    produced = [tensor("label", "BYTES", ["a", "b"]), tensor("scores", "FP32", [[0.25, 0.75], [0.5, 0.5]])]
    everything = encode_response({"model_name": "m"}, InferRequest([], parameters={"binary_data_output": True}),
                                 produced)
    assert everything.json_length is not None and everything.content_type == "application/octet-stream"
    head = json.loads(everything.body[:everything.json_length])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    tail = everything.body[everything.json_length:]
    assert sum(sizes) == len(tail)
    assert np.frombuffer(tail[sizes[0]:], dtype="<f4").tolist() == [0.25, 0.75, 0.5, 0.5]

    raw, length = body([("text", np.array([b"x"], dtype=object), True)],
                       outputs=[{"name": "scores", "parameters": {"binary_data": False}}])
    req = decode_request(raw, length)
    chosen = encode_response({}, req, produced)
    assert chosen.json_length is None
    assert json.loads(chosen.body)["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [2, 2],
                                                   "data": [0.25, 0.75, 0.5, 0.5]}]
    with pytest.raises(BadRequest, match="no such output"):
        check_outputs(decode_request(*body([("t", np.array([1], dtype=np.int32), False)],
                                           outputs=[{"name": "logits"}])), ["label", "scores"])


@pytest.mark.parametrize("mutate, status, words", [
    (lambda b, n: (b + b"x", n), 400, "belong to no input"),
    (lambda b, n: (b[:-1], n), 400, "runs past"),
    (lambda b, n: (b, n - 3), 400, "not valid JSON"),
    (lambda b, n: (b, None), 400, "Inference-Header-Content-Length"),
])
def test_bad_framing_is_a_clear_4xx(mutate: object, status: int, words: str) -> None:
    raw, length = body([("x", np.arange(4, dtype=np.float32), True)])
    bad_body, bad_length = mutate(raw, length)  # type: ignore[operator]
    with pytest.raises(ApiError, match=words) as err:
        decode_request(bad_body, bad_length)
    assert err.value.status == status


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(Unprocessable, match="needs 16 bytes"):
        from_raw("x", "FP32", [4], b"\0" * 15)
    with pytest.raises(Unprocessable, match="ends inside"):
        from_raw("x", "BYTES", [1], b"\x05\x00")
    both = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1],
                        "parameters": {"binary_data_size": 1}}]}
    header = json.dumps(both).encode()
    with pytest.raises(Unprocessable, match="either data or"):
        decode_request(header + b"\x01", len(header))
    with pytest.raises(Unprocessable, match="datatype"):
        decode_request(json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}).encode(),
                       None)
    for header in ("abc", "0", "999999"):
        with pytest.raises(BadRequest):
            parse_json_length(header, 100)
