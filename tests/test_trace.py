"""The trace stage: traced == eager, precision choice, profiles, the real MiniLM, up-to-date skips."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from shoal.graphs import load_text_model
from shoal.samples import sentences
from shoal.store.local import LocalStore
from shoal.trace import precision
from shoal.trace.sources import load_eager_model, load_tokenizer
from shoal.trace.stage import TraceOptions, trace_spec
from shoal.trace.tiny import make_tiny_model, tiny_spec
from shoal.trace.wrappers import wrap


def _encode(tokenizer_path: Path, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    encs = tok.encode_batch(texts)
    return (torch.tensor([e.ids for e in encs], dtype=torch.int64),
            torch.tensor([e.attention_mask for e in encs], dtype=torch.int64))


@pytest.mark.parametrize("task", ["classification", "embedding", "question-answering"])
def test_tiny_artifact_equals_eager_on_fresh_inputs(task: str, store: LocalStore, build_dir: Path) -> None:
    manifest = make_tiny_model(store, "tiny", task=task, seed=3, build_dir=build_dir)
    folder = store.fetch("tiny")
    traced = load_text_model(folder, manifest)
    spec = tiny_spec("tiny", task, seed=3)
    eager = wrap(task, load_eager_model(spec), sep_token_id=102)
    # Different batch size and lengths from the trace example: the graph must not be shape-specialised.
    ids, mask = _encode(folder / "tokenizer.json", sentences(5, seed=99, min_words=3, max_words=60))
    with torch.inference_mode():
        assert precision.max_abs_diff(traced(ids, mask), eager(ids, mask)) < 1e-4
    assert manifest.profile and set(manifest.profile.latency_ms_p50) == {1, 4}
    assert manifest.weights and manifest.profile.param_bytes > 0
    assert manifest.files[manifest.artifact].size + manifest.files[manifest.weights].size == manifest.profile.artifact_bytes


def test_tokenizer_file_truncates_to_seq_len_and_pads_to_longest(store: LocalStore, build_dir: Path) -> None:
    make_tiny_model(store, "tiny", seq_len=32, build_dir=build_dir)
    ids, mask = _encode(store.fetch("tiny") / "tokenizer.json", ["short", " ".join(["word"] * 100)])
    assert ids.shape == (2, 32)
    assert mask[0].sum() == 3 and mask[1].sum() == 32


@pytest.mark.skipif(not precision.cpu_has_fast_bf16(), reason="this CPU has no native bf16")
def test_auto_precision_profiles_every_offered_precision(store: LocalStore, build_dir: Path) -> None:
    manifest = make_tiny_model(store, "tiny-auto", task="embedding", precision="auto", build_dir=build_dir)
    assert manifest.profile
    assert {"fp32", "bf16", "int8", "int8-bf16"} <= set(manifest.profile.precisions_tried)
    assert manifest.precision in manifest.profile.precisions_tried


def test_agreement_rejects_a_model_that_changes_answers() -> None:
    ref = torch.tensor([[2.0, -2.0], [-1.0, 1.0]] * 50)
    assert precision.agreement("classification", ref, ref + 0.001).accepted
    flipped = ref.clone()
    flipped[0] = torch.tensor([-2.0, 2.0])
    verdict = precision.agreement("classification", ref, flipped)
    assert not verdict.accepted and verdict.argmax_agreement == pytest.approx(0.99)
    emb = torch.randn(10, 32)
    assert precision.agreement("embedding", emb, emb * 1.01).accepted
    assert not precision.agreement("embedding", emb, emb + torch.randn(10, 32)).accepted


def _near_half_logits(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Two-class logits of a fresh head: every probability near 0.5, margins spread up to ~0.05."""
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(n, generator=g) - 0.5) * 0.2
    d[d.abs() < 0.03] = 0.03  # every probe decided (margin >= 0.015 > TIE_MARGIN) but those we set
    return torch.stack([0.1 + d / 2, 0.1 - d / 2], dim=1)


def _swap(logits: torch.Tensor, row: int) -> torch.Tensor:
    out = logits.clone()
    out[row] = logits[row].flip(0)
    return out


def test_agreement_ignores_a_flip_on_a_tie_and_says_how_many_ties() -> None:
    """Issue 13: minilm-cls bf16 was rejected at 'max probability change 0.0003, argmax agreement 98.438 %'."""
    ref = _near_half_logits()
    ref[5] = torch.tensor([0.1003, 0.1])  # fp32 margin 0.00015: a tie
    candidate = _swap(ref.to(torch.bfloat16).float(), 5)  # bf16 rounding, and the tie falls the other way
    check = precision.agreement("classification", ref, candidate)
    assert check.max_probability_diff is not None and check.max_probability_diff < 0.001
    assert check.accepted, check.verdict()
    assert check.ties == 1 and check.probes == 64 and check.argmax_agreement == 1.0
    assert "63 confident probes" in check.verdict() and "1 of 64 were ties" in check.verdict()


def test_agreement_still_rejects_a_flip_on_a_confident_probe() -> None:
    """A flip where fp32 was decided (margin 0.007 > TIE_MARGIN) counts, though within the probability guard."""
    ref = _near_half_logits()
    ref[7] = torch.tensor([0.107, 0.093])  # fp32 probabilities 0.5035 / 0.4965
    flipped = _swap(ref, 7)
    check = precision.agreement("classification", ref, flipped)
    assert check.max_probability_diff is not None and check.max_probability_diff <= precision.PROBABILITY_DIFF_MAX
    assert check.ties == 0 and not check.accepted, check.verdict()
    assert check.argmax_agreement == pytest.approx(63 / 64)
    guard = precision.agreement("classification", ref, ref + torch.tensor([0.05, -0.05]))
    assert not guard.accepted and guard.ties == 0, guard.verdict()  # probabilities moved by > 0.01: the guard


def test_span_ties_are_counted_too() -> None:
    """Question answering: a start position fp32 finds as likely as another is a tie, not a disagreement."""
    start = torch.full((4, 10), -5.0)
    start[:, 2] = 3.0
    start[0, 6] = 3.0 - 1e-4  # probe 0: positions 2 and 6 tie
    end = start.clone()
    cand_start = start.clone()
    cand_start[0, 6] = 3.0 + 1e-4
    check = precision.agreement("question-answering", (start, end), (cand_start, end.clone()))
    assert check.accepted and check.ties == 1, check.verdict()


def test_second_trace_is_skipped_when_up_to_date(store: LocalStore, build_dir: Path) -> None:
    spec = tiny_spec("tiny-skip")
    opts = TraceOptions(isolated_profile=False, build_dir=build_dir)
    first, traced = trace_spec(spec, store, opts)
    assert traced
    start = time.perf_counter()
    again, traced_again = trace_spec(spec, store, opts)
    assert not traced_again and again == first
    assert time.perf_counter() - start < 1.0
    changed, traced_changed = trace_spec(spec.model_copy(update={"seq_len": 48}), store, opts)
    assert traced_changed and changed.seq_len == 48


def test_real_minilm_matches_sentence_transformers_pooling(minilm_store: tuple[LocalStore, Path]) -> None:
    """The real all-MiniLM-L6-v2, traced once: its classifier artifact runs, and the profile is measured."""
    store, _ = minilm_store
    manifest = store.read_manifest("minilm-cls")
    assert manifest.precision == "fp32" and manifest.labels == ["negative", "positive"]
    assert manifest.profile and manifest.profile.resident_bytes > 50 * 2**20
    assert 80 * 2**20 < manifest.profile.param_bytes < 100 * 2**20  # 22.7 M parameters in fp32
    folder = store.fetch("minilm-cls")
    traced = load_text_model(folder, manifest)
    from shoal.spec import load_spec

    spec = load_spec(Path(__file__).parent.parent / "models" / "minilm-cls.yaml")
    eager = wrap("classification", load_eager_model(spec))
    ids, mask = _encode(folder / "tokenizer.json", sentences(6, seed=5))
    with torch.inference_mode():
        assert precision.max_abs_diff(traced(ids, mask), eager(ids, mask)) < 1e-4


def test_real_minilm_embedding_is_the_published_model(tmp_path: Path) -> None:
    """Embeddings from our wrapper agree with the model's own mean pooling + normalisation on real weights."""
    from shoal.spec import load_spec

    spec = load_spec(Path(__file__).parent.parent / "models" / "minilm-embed.yaml")
    model = load_eager_model(spec)
    tokenizer = load_tokenizer(spec)
    enc = tokenizer(["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue today."],
                    padding=True, return_tensors="pt")
    with torch.inference_mode():
        emb = wrap("embedding", model)(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    similar = float(emb[0] @ emb[1])
    unrelated = float(emb[0] @ emb[2])
    assert similar > 0.6 and unrelated < 0.3, (similar, unrelated)  # real semantics, not random weights
