"""The text kinds' protocol: sentences, pairs and question/context in native JSON, query strings and v2 BYTES.

Results come from ``shoal.server.handlers.text`` as dicts (``label``/``scores``, ``embedding``,
or ``answer``/``score``/``start``/``end``); this module only reads requests and writes them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shoal.server.codecs.base import Codec, Parsed
from shoal.server.errors import Unprocessable
from shoal.server.schemas import QABatchRequest, QARequest, TextBatchRequest, TextRequest, validate
from shoal.server.v2_codec import InferRequest
from shoal.server.v2_tensors import Tensor, tensor
from shoal.store.manifest import Manifest


class TextCodec(Codec):
    """Classification and embedding take text (or a pair); question answering a question and a context."""

    def parse(self, body: Any) -> Parsed:
        if isinstance(body, dict) and "inputs" in body:
            if self.manifest.task == "question-answering":
                batch = validate(QABatchRequest, body)
                return Parsed([(q.question, q.context) for q in batch.inputs], single=False)
            return Parsed(list(validate(TextBatchRequest, body).inputs), single=False)
        if self.manifest.task == "question-answering":
            qa = validate(QARequest, body)
            return Parsed([(qa.question, qa.context)], single=True)
        req = validate(TextRequest, body)
        return Parsed([req.text if req.text_pair is None else (req.text, req.text_pair)], single=True)

    def from_query(self, params: Mapping[str, str]) -> Any:
        """The reference sample's ``?seq_0=...&seq_1=...``: a sentence (pair) or question + context."""
        if "seq_0" not in params:
            raise Unprocessable("seq_0: query parameter required")
        if self.manifest.task == "question-answering":
            if "seq_1" not in params:
                raise Unprocessable("seq_1: query parameter required (the context)")
            return {"question": params["seq_0"], "context": params["seq_1"]}
        body: dict[str, str] = {"text": params["seq_0"]}
        if "seq_1" in params:
            body["text_pair"] = params["seq_1"]
        return body

    def parse_v2(self, request: InferRequest) -> list[Any]:
        names = ("question", "context") if self.manifest.task == "question-answering" else ("text",)
        columns = []
        for name in names:
            t = request.input(name) or (request.inputs[0] if len(names) == 1 else None)
            if t is None:
                raise Unprocessable(f"inputs: a BYTES tensor named {name!r} is required")
            if t.datatype != "BYTES":
                raise Unprocessable(f"inputs.{t.name}: datatype must be BYTES (text), not {t.datatype}")
            columns.append([_text(v, t.name) for v in t.values()])
        if len({len(c) for c in columns}) != 1 or not columns[0]:
            raise Unprocessable("inputs: tensors must hold the same, non-zero number of elements")
        if len(columns[0]) > 256:
            raise Unprocessable("inputs: at most 256 elements per request")
        return list(zip(*columns)) if len(columns) == 2 else columns[0]

    def to_v2(self, results: list[Any]) -> list[Tensor]:
        n = len(results)
        if self.manifest.task == "embedding":
            return [tensor("embedding", "FP32", [r["embedding"] for r in results])]
        if self.manifest.task == "classification":
            names = list(results[0]["scores"])
            return [tensor("label", "BYTES", [r["label"] for r in results]),
                    tensor("scores", "FP32", [[r["scores"][k] for k in names] for r in results], (n, len(names)))]
        return [tensor("answer", "BYTES", [r["answer"] for r in results]),
                tensor("score", "FP32", [r["score"] for r in results]),
                tensor("start", "INT64", [r["start"] for r in results]),
                tensor("end", "INT64", [r["end"] for r in results])]

    @classmethod
    def v2_metadata(cls, manifest: Manifest) -> dict[str, Any]:
        """KServe v2 tensor descriptions, known from the manifest alone (no load needed)."""
        if manifest.task == "question-answering":
            inputs = [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in ("question", "context")]
            outputs = [{"name": "answer", "datatype": "BYTES", "shape": [-1]},
                       {"name": "score", "datatype": "FP32", "shape": [-1]},
                       {"name": "start", "datatype": "INT64", "shape": [-1]},
                       {"name": "end", "datatype": "INT64", "shape": [-1]}]
        elif manifest.task == "classification":
            inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
            outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                       {"name": "scores", "datatype": "FP32", "shape": [-1, len(manifest.labels or [])]}]
        else:
            inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
            outputs = [{"name": "embedding", "datatype": "FP32", "shape": [-1, -1]}]
        return {"inputs": inputs, "outputs": outputs}


def _text(value: str | bytes, name: str) -> str:
    """A BYTES element as text: JSON strings as they are, raw bytes (binary data, gRPC) decoded as UTF-8."""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise Unprocessable(f"inputs.{name}: BYTES elements must be UTF-8 text") from None
