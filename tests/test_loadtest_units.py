"""Pieces of the load test that need no server: payloads, model choice, scenarios, plans, cost."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from shoal.errors import UsageError
from shoal.loadtest import cost
from shoal.loadtest.payload import builtin_texts, load_payloads
from shoal.loadtest.scenario import load_scenario, parse_duration, parse_rate
from shoal.loadtest.targets import K8S_TEMPLATE, ModelChooser, _parse_models_listing, routes_from_plan
from shoal.pack.plan_file import InstancePlan, Plan, ServerPlan

REPO = Path(__file__).parent.parent


def test_builtin_sentences_are_varied_and_about_thirty_words() -> None:
    texts = builtin_texts(200)
    words = [len(t.split()) for t in texts]
    assert 20 <= min(words) and max(words) <= 45
    assert 25 <= sum(words) / len(words) <= 35
    assert len(set(texts)) > 150
    assert builtin_texts(5, seed=7) == builtin_texts(5, seed=7)


def test_payload_file_text_and_json_lines(tmp_path: Path) -> None:
    text = tmp_path / "p.txt"
    text.write_text("first line\n\nsecond line\n")
    p = load_payloads(str(text))
    assert [json.loads(b)["text"] for b in p.bodies("classification")] == ["first line", "second line"]
    assert set(json.loads(p.bodies("question-answering")[0])) == {"question", "context"}
    frames = p.bodies("detection")  # a text file says nothing to a detector: it gets JPEG frames
    assert len(frames) == 8 and len(set(frames)) == 8 and all(f[:2] == b"\xff\xd8" for f in frames)
    assert p.content_type("detection") == "image/jpeg" and p.content_type("classification") == "application/json"
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"inputs": ["a", "b"]}\n')
    assert json.loads(load_payloads(str(jl)).bodies(None)[0]) == {"inputs": ["a", "b"]}
    assert load_payloads(str(jl)).content_type("detection") == "application/json"  # the user's bodies, as written
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n{oops\n')
    with pytest.raises(UsageError, match="line 2 is not JSON"):
        load_payloads(str(bad))
    with pytest.raises(UsageError, match="cannot read payload file"):
        load_payloads(str(tmp_path / "missing.txt"))


def test_model_choice_random_sequential_zipf() -> None:
    models = [f"m{i}" for i in range(100)]
    seq = ModelChooser("sequential", models[:3])
    assert [seq.next() for _ in range(7)] == ["m0", "m1", "m2", "m0", "m1", "m2", "m0"]
    chooser = ModelChooser("random", models, seed=1)
    rnd = Counter(chooser.next() for _ in range(20000))
    assert len(rnd) == 100 and max(rnd.values()) < 3 * min(rnd.values())
    z = ModelChooser("zipf:1.1", models, seed=1)
    counts = Counter(z.next() for _ in range(20000))
    top = z.models[0]
    assert counts[top] == max(counts.values())
    share_top10 = sum(counts[m] for m in z.models[:10]) / 20000
    assert 0.5 < share_top10 < 0.8  # Zipf(1.1) over 100: about 63 % in the top ten
    for bad in ("zipf:x", "zipf:-1", "roundrobin"):
        with pytest.raises(UsageError):
            ModelChooser(bad, models)


def test_durations_and_rates() -> None:
    assert parse_duration("60s") == 60 and parse_duration("2m") == 120 and parse_duration("500ms") == 0.5
    assert parse_duration(3) == 3.0
    assert parse_rate("150%", 200.0) == 300.0 and parse_rate(25, None) == 25.0
    for bad in ("soon", "-1s", "10 parsecs"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    with pytest.raises(UsageError, match="capacity"):
        parse_rate("10%", None)


def test_checked_in_scenarios_are_valid() -> None:
    names = {p.stem: load_scenario(p) for p in (REPO / "loadtest").glob("*.yaml")}
    assert {"reference-40-clients", "zipf-1000-models", "burst"} <= set(names)
    ref = names["reference-40-clients"]
    assert (ref.clients, parse_duration(ref.duration), ref.models) == (40, 60.0, "random")
    assert names["zipf-1000-models"].models == "zipf:1.1" and names["zipf-1000-models"].expect_models == 1000
    burst = names["burst"]
    assert [s.rate for s in burst.stages] == ["10%", "150%", "10%"] and burst.capacity == "measure"
    assert [s.max_error_rate for s in burst.stages] == [None, 1.0, None]  # shedding only in the overload step


@pytest.mark.parametrize("text, message", [
    ("clients: [1, 2", "not readable YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("clients: 0\n", "malformed at clients"),
    ("speed: 11\n", "malformed at speed"),
    ("models: roundrobin\n", "malformed at models"),
    ("duration: forever\n", "cannot read duration"),
    ("stages: [{rate: fast, duration: 1s}]\n", "cannot read rate"),
    ("clients: 4\nstages: [{rate: 10, duration: 1s}]\n", "open-loop schedule"),
])
def test_malformed_scenarios_give_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(UsageError, match=message) as info:
        load_scenario(p)
    assert "\n" not in str(info.value)


def _plan(tmp_path: Path, routing: dict[str, str] | None = None) -> Path:
    plan = Plan(instances=[InstancePlan(name="i0", type="c6i.xlarge", price_per_hour=0.17)],
                servers=[ServerPlan(name="shoal-0", instance="i0", instance_type="c6i.xlarge", processor="cpu",
                                    device="cpu", port=8080, models=["a", "b"]),
                         ServerPlan(name="shoal-1", instance="i0", instance_type="c6i.xlarge", processor="cpu",
                                    device="cpu", port=8081, models=["c"])],
                routing=routing or {"a": "shoal-0", "b": "shoal-0", "c": "shoal-1"}, cost_per_hour=0.17)
    path = tmp_path / "plan.json"
    plan.save(path)
    return path


def test_plan_routes_locally_and_on_kubernetes(tmp_path: Path) -> None:
    path = _plan(tmp_path)
    local = routes_from_plan(path, None)
    assert local.endpoint_of("c").url == "http://127.0.0.1:8081"
    assert local.endpoint_of("a").url == "http://127.0.0.1:8080"
    assert local.price_per_hour == 0.17
    k8s = routes_from_plan(path, ["a", "c"], K8S_TEMPLATE, namespace="prod")
    assert k8s.endpoint_of("c").url == "http://shoal-1.prod.svc.cluster.local:8080"
    assert k8s.models == ["a", "c"]
    assert routes_from_plan(path, None, host="10.0.0.5").endpoint_of("a").url == "http://10.0.0.5:8080"


def test_plan_errors(tmp_path: Path) -> None:
    path = _plan(tmp_path)
    with pytest.raises(UsageError, match="'zz' is not in the routing table"):
        routes_from_plan(path, ["a", "zz"])
    with pytest.raises(UsageError, match="unknown placeholder"):
        routes_from_plan(path, None, "http://{nmae}:8080")
    bad = _plan(tmp_path, {"a": "shoal-9"})
    with pytest.raises(UsageError, match="server 'shoal-9', which it does not define"):
        routes_from_plan(bad, None)
    with pytest.raises(UsageError, match="does not exist"):
        routes_from_plan(tmp_path / "nope.json", None)


def test_models_listing_shapes() -> None:
    assert _parse_models_listing(["a", "b"]) == {"a": None, "b": None}
    assert _parse_models_listing({"models": [{"id": "a", "task": "embedding"}, {"model_id": "b"}]}) == {
        "a": "embedding", "b": None}


def test_cost_figures() -> None:
    price = cost.Price(3.6, "test")
    assert cost.per_million(1000.0, price) == pytest.approx(1.0)  # $3.6/h over 3.6 M inferences/h
    assert cost.per_model_hour(price, 40) == pytest.approx(0.09)
    # 30 fps cameras, 300 frames/s -> 10 cameras share 730 h x $3.6
    assert cost.per_camera_month(300.0, 30.0, price) == pytest.approx(262.8)
    assert cost.per_million(0.0, price) is None
    report = cost.cost_report(1000.0, price, 4, fps=30)
    assert report["usd_per_million"] == 1.0 and report["usd_per_camera_month"] == pytest.approx(78.84)
    assert cost.cost_report(1.0, None, 1)["basis"] is None


def test_price_from_catalog_override_and_unknown_type() -> None:
    assert cost.resolve_price(0.5, "c6i.xlarge").per_hour == 0.5
    full = cost.resolve_price(None, "c6i.xlarge")
    assert full is not None and full.per_hour == pytest.approx(0.17)
    half = cost.resolve_price(None, "c6i.xlarge", vcpus_used=2)
    assert half is not None and half.per_hour == pytest.approx(0.085) and "2/4 vCPU" in half.basis
    assert cost.resolve_price(None, None, plan_price=1.2).per_hour == 1.2  # type: ignore[union-attr]
    assert cost.resolve_price(None, None) is None
    with pytest.raises(UsageError, match="not in the catalog; give --price-per-hour"):
        cost.resolve_price(None, "z9.mega")
