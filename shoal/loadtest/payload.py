"""Request bodies: builtin ~30-word English sentences, or lines from a file; JPEG frames for detectors.

Why builtin text: a load test must not download a data set, yet identical bodies
would let caches and tokenizers look better than they are. The generator joins
clauses from small word lists, so every sentence differs and has a realistic
length (25-35 words, about 40 tokens). Detectors get synthetic camera frames
(``shoal.vision.frames``) sent as ``image/jpeg``, as a camera client would: a server
holding text models and detectors must load-test with no error by default.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from shoal.errors import UsageError

_SUBJECTS = [
    "The new support agent", "A frustrated customer", "Our quarterly report", "The delivery driver",
    "My neighbour's old laptop", "The city council", "A small bakery downtown", "The research team",
    "This mobile banking app", "The hotel receptionist", "An experienced pilot", "The museum guide",
    "Her latest novel", "The football coach", "A local farmer", "The weather service",
]
_VERBS = [
    "quickly resolved", "completely ignored", "carefully reviewed", "happily recommended",
    "strongly criticised", "finally delivered", "politely declined", "eagerly explained",
    "patiently repaired", "unexpectedly cancelled", "proudly presented", "barely mentioned",
]
_OBJECTS = [
    "the billing problem", "a long list of complaints", "the broken coffee machine",
    "every late order", "the updated safety rules", "a surprising new offer", "the missing package",
    "the confusing refund policy", "an urgent security warning", "the crowded morning schedule",
    "the results of the survey", "a fresh batch of bread",
]
_CLAUSES = [
    "before the end of a very busy week", "although nobody had asked for any help",
    "while the rain kept falling over the quiet harbour", "after several hours of waiting on the phone",
    "because the previous attempt had failed twice", "during the short meeting on Tuesday morning",
    "even though the instructions were hard to follow", "as soon as the doors opened at nine",
    "without telling anyone in the main office", "despite the noise coming from the street outside",
]
_TAILS = [
    "and everyone agreed that the outcome was far better than expected.",
    "so the team decided to write a detailed note for the next shift.",
    "which made the whole experience surprisingly pleasant for most people.",
    "but several visitors still left the building feeling rather disappointed.",
    "and the manager promised to follow up with a phone call tomorrow.",
    "although the final price turned out to be a little higher than planned.",
    "and the story was shared widely by readers across the country.",
    "so most of the remaining questions could be answered within minutes.",
]
_QUESTIONS = [
    "Who resolved the problem?", "What happened to the package?", "When did the meeting take place?",
    "Why was the attempt repeated?", "What did the team decide?", "Who made the announcement?",
]


def sentence(rng: random.Random) -> str:
    """One varied English sentence of roughly 30 words."""
    parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_CLAUSES)]
    if rng.random() < 0.5:
        parts.append(rng.choice(_CLAUSES).replace("the ", "a ", 1))
    parts.append(rng.choice(_TAILS))
    return " ".join(parts)


def builtin_texts(n: int = 256, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


DETECTION = "detection"
JSON_TYPE = "application/json"
IMAGE_TYPE = "image/jpeg"
FRAMES = 8  # distinct frames per run: enough that no cache sees one image only
FRAME_SIZE = (640, 480)


class Payloads:
    """A fixed pool of encoded request bodies, per task, cycled by each client.

    Bodies are encoded once up front so the hot loop does no JSON work. A JSON-lines file's
    bodies go to every model as they are (the user wrote them for the models under test);
    builtin or plain-text inputs go to text models, and detectors get JPEG frames.
    """

    def __init__(self, texts: list[str], raw_bodies: list[bytes] | None = None, seed: int = 0) -> None:
        if not texts and not raw_bodies:
            raise UsageError("payload is empty: give a file with at least one line")
        rng = random.Random(seed + 1)
        self.seed = seed
        self.raw = raw_bodies or []
        self.text = [json.dumps({"text": t}).encode() for t in texts]
        self.qa = [json.dumps({"question": rng.choice(_QUESTIONS), "context": t}).encode() for t in texts]
        self._frames: list[bytes] = []

    def bodies(self, task: str | None) -> list[bytes]:
        if self.raw:
            return self.raw
        if task == DETECTION:
            return self.frames()
        return self.qa if task == "question-answering" else self.text

    def content_type(self, task: str | None) -> str:
        return IMAGE_TYPE if task == DETECTION and not self.raw else JSON_TYPE

    def frames(self) -> list[bytes]:
        """Synthetic JPEG camera frames, drawn on first use (only runs with a detector pay for them)."""
        if not self._frames:
            from shoal.vision.frames import frame_bytes

            self._frames = [frame_bytes(*FRAME_SIZE, seed=self.seed + i) for i in range(FRAMES)]
        return self._frames


def load_payloads(spec: str, seed: int = 0) -> Payloads:
    """``builtin`` or a file: plain text (one input per line) or JSON lines (one request body per line)."""
    if spec == "builtin":
        return Payloads(builtin_texts(seed=seed), seed=seed)
    path = Path(spec)
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise UsageError(f"cannot read payload file {path}: {exc.strerror or exc}") from None
    if not lines:
        raise UsageError(f"payload file {path} has no non-empty line")
    if lines[0].lstrip().startswith("{"):
        bodies = []
        for i, ln in enumerate(lines, 1):
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as exc:
                raise UsageError(f"payload file {path} line {i} is not JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise UsageError(f"payload file {path} line {i} must be a JSON object (a request body)")
            bodies.append(json.dumps(obj).encode())
        return Payloads([], raw_bodies=bodies, seed=seed)
    return Payloads(lines, seed=seed)
