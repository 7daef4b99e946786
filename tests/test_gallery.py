"""The submit page's gallery: every template validates and plans, and the services among them
(real inference servers from Nosana's examples) are labelled with what they need, as their
definitions say it."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from tests import factories
from tests.factories import bearer
from tests.test_dashboard import sign_in

GALLERY = Path(__file__).resolve().parents[1] / "web" / "gallery"
NOSANA = Path(__file__).resolve().parents[2] / "shared" / "compat" / "nosana"
if not NOSANA.exists():  # a checkout with shared/ inside it
    NOSANA = Path(__file__).resolve().parents[1] / "shared" / "compat" / "nosana"
INDEX = json.loads((GALLERY / "index.json").read_text())
# The inference servers the gallery must offer, by the upstream file each comes from.
INFERENCE = {"nosana-vllm.json": "vllm.json", "nosana-ollama.json": "ollama.json",
             "nosana-comfyui-wan.json": "resource-test-files__wan-comfyui.json",
             "nosana-jupyter-notebook.json": "jupyter-notebook.json", "nosana-open-webui.json": "open-webui.json"}


def _ports(expose) -> list[int]:
    """The port numbers of an `expose` as these templates write it (a number, or objects)."""
    items = expose if isinstance(expose, list) else [expose] if expose is not None else []
    return sorted(item["port"] if isinstance(item, dict) else int(item) for item in items)


def _expected(document: dict) -> dict:
    """What the labels must say, read straight from the definition's fields."""
    args = [op["args"] for op in document["ops"] if op["type"] == "container/run"]
    return {
        "gpus": max(a.get("gpu_count", 1 if a.get("gpu") else 0) for a in args),
        "vram_mb": max(int(a.get("required_vram", 0) * 1000) for a in args),
        "ports": sorted(p for a in args for p in _ports(a.get("expose"))),
        "images": list(dict.fromkeys(a["image"] for a in args)),
    }


def _card(page: str, slug: str) -> tuple[dict, str]:
    """A template's card on the page: its data attributes, and the text it shows."""
    match = re.search(rf'<a class="template[^"]*" href="[^"]*" data-template="{re.escape(slug)}"(.*?)>(.*?)</a>', page, re.S)
    assert match, f"no card for {slug}"
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', match.group(1)))
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", match.group(2)))).strip()
    return attrs, text


def test_the_gallery_offers_inference_servers_taken_unchanged_but_for_the_memory_they_need():
    files = {entry["file"] for entry in INDEX}
    assert set(INFERENCE) <= files
    for ours, upstream in INFERENCE.items():
        mine = json.loads((GALLERY / ours).read_text())
        theirs = json.loads((NOSANA / upstream).read_text())
        # The one field added, where the model's size decides it (SOURCE.md says how much and why).
        for op in mine["ops"]:
            op["args"].pop("required_vram", None)
        assert mine == theirs, ours
        assert (GALLERY / ours).name in (GALLERY / "SOURCE.md").read_text()


@pytest.mark.parametrize("entry", INDEX, ids=[e["file"] for e in INDEX])
def test_every_template_validates_and_plans(client, core, entry):
    _, token = factories.user(core)
    document = json.loads((GALLERY / entry["file"]).read_text())
    answer = client.post("/api/v1/jobs/validate", json=document, headers=bearer(token)).json
    assert answer["valid"], answer["errors"]
    assert [op["id"] for op in answer["ops"]] == [op["id"] for op in document["ops"]]
    assert answer["max_cost"] > 0


def test_each_service_is_labelled_with_what_its_definition_needs(client, core):
    factories.user(core, email="ann@example.com")
    sign_in(client, "ann@example.com")
    page = client.get("/submit").get_data(as_text=True)
    services = [e for e in INDEX if e["group"] == "Services"]
    assert {e["file"] for e in services} >= set(INFERENCE) | {"web-server.json"}
    for entry in INDEX:
        want = _expected(json.loads((GALLERY / entry["file"]).read_text()))
        attrs, text = _card(page, entry["file"].removesuffix(".json"))
        assert int(attrs["gpus"]) == want["gpus"] and int(attrs["vram-mb"]) == want["vram_mb"], entry["file"]
        assert attrs["ports"] == ",".join(map(str, want["ports"])) and attrs["images"] == " ".join(want["images"])
        # What a reader sees says the same.
        for image in want["images"]:
            assert image in text
        if want["gpus"]:
            assert f"{want['gpus']} GPU" in text
            assert (f"{want['vram_mb'] // 1000} GB VRAM" if want["vram_mb"] else "any VRAM") in text, text
        else:
            assert "no GPU" in text
        if want["ports"]:
            assert entry["group"] == "Services" and f"service · port {', '.join(map(str, want['ports']))}" in text
        else:
            assert entry["group"] != "Services" and "service" not in text


def test_a_chosen_service_says_which_market_gives_it_its_memory_and_that_its_port_gets_a_url(client, core):
    factories.user(core, email="ann@example.com")
    sign_in(client, "ann@example.com")
    page = client.get("/submit?template=nosana-vllm").get_data(as_text=True)
    needs = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", re.search(r'<section class="needs-panel".*?</section>', page, re.S).group(0)))
    # 8 GB asked for; the cheapest market that guarantees it is the 24 GB one (the seeded markets).
    assert "1 GPU with at least 8 GB of memory: market gpu-24gb here, 24 GB or more" in needs, needs
    assert "docker.io/vllm/vllm-openai:v0.7.2" in needs
    assert "Port 8000 gets a URL, shown on the job page" in needs
    cpu = client.get("/submit?template=nosana-ollama").get_data(as_text=True)
    assert "none: it runs on a CPU market" in cpu
    anyone = client.get("/submit?template=nosana-jupyter-notebook").get_data(as_text=True)
    assert "memory not stated (any GPU): market gpu here" in re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", anyone))
