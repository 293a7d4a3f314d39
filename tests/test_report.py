"""qtf-edge report: every section's content for runs and bundles, every energy figure
labelled, the per-part torch timing, the page rendered by headless Chromium, bad input."""

from __future__ import annotations

import html.parser
import math
import os
import shutil
import subprocess

import pytest
from run_factory import export_dense_run, make_run, tiny_model, tokenizer_json

from cli_helpers import assert_one_line_error, invoke
from qtf_edge import runs
from qtf_edge.cost import list_profiles
from qtf_edge.cost.counts import count_params
from qtf_edge.pareto import non_dominated
from qtf_edge.profile.pipeline import ProfileOptions
from qtf_edge.profile.torch_parts import part_modules, torch_decode_breakdown
from qtf_edge.report.collect import ReportOptions, build_report
from qtf_edge.report.html import SECTIONS, render_html

FAST = ReportOptions(ProfileOptions(runs=1, seq_len=8, new_tokens=4, targets=("rpi4",)),
                     max_tokens=256)
LABELS = {"measured", "estimated", "predicted"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A QTF run with training evaluations, a run derived from it (none of its own), a
    dense run, and a dense bundle for the cpu target."""
    root = tmp_path_factory.mktemp("report")
    parent = make_run(root / "qtf")
    # step 20 dominates step 10; step 30 trades perplexity for size
    for step, ppl, params, ms, uj in ((10, 900.0, 50_000, 2.0, 100.0),
                                      (20, 700.0, 50_000, 2.0, 100.0),
                                      (30, 750.0, 40_000, 1.5, 80.0)):
        runs.append_metrics(parent, {"event": "eval", "step": step,
                                     "val_perplexity_per_word": ppl, "params": params,
                                     "estimated": {"latency_ms_per_query": ms,
                                                   "energy_uj_per_query": uj}})
    child = runs.save_run(root / "child", tiny_model(seed=1), tokenizer_json().encode(),
                          command="tests: derived", parent=parent)
    dense = make_run(root / "dense", dense=True)
    _, bundle, _ = export_dense_run(root / "exported", "cpu")
    return {"parent": parent, "child": child, "dense": dense, "bundle": bundle}


@pytest.fixture(scope="module")
def child_report(folders):
    return build_report(folders["child"], FAST)


def test_a_derived_qtf_run_has_every_section(folders, child_report):
    doc, figures = child_report
    run = runs.load_run(folders["child"])
    card = doc["model_card"]
    assert card["params"]["total"] == count_params(run.model)
    assert card["compression_ratio"] > 1 and card["dense_params"] > card["params"]["total"]
    assert card["evaluation"]["tokens"] == 255 and card["evaluation"]["perplexity_per_token"] > 1
    # no evaluations of its own: the frontier is its parent's, and says so
    pareto = doc["pareto"]
    assert pareto["run"] == str(folders["parent"].resolve()) and pareto["own"] is False
    assert [p["step"] for p in pareto["frontier"]] == [20, 30]
    assert pareto["frontier"] == non_dominated(pareto["points"])
    breakdown = doc["latency"]["breakdown"]
    assert breakdown["graph"] == "torch eager" and breakdown["steps"] == 4
    assert {"embedding", "quantum_encoder", "attention", "ffn", "head"} <= set(breakdown["parts"])
    assert math.isclose(sum(p["ms_per_step"] for p in breakdown["parts"].values()),
                        breakdown["ms_per_step"], rel_tol=1e-9)
    routing = doc["routing"]
    routes = [b["route"] for t in routing["tokens"] for b in t["blocks"]]
    assert set(routes) <= {"quantum", "classical"} and len(routing["tokens"]) > 8
    assert routing["quantum_share"] == routes.count("quantum") / len(routes)
    manifest = doc["manifest"]
    assert manifest["kind"] == "run" and manifest["parent"]["path"] == str(
        folders["parent"].resolve())
    for entry in manifest["files"]:
        assert runs.sha256_file(folders["child"] / entry["path"]) == entry["sha256"]
    assert set(figures) == {"pareto", "latency", "routing", "energy"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in figures.values())


def test_every_energy_figure_carries_its_label(folders, child_report):
    doc, _ = child_report
    energy = doc["energy"]
    forward = energy["cost_model_forward"]
    assert [r["profile"] for r in forward] == list_profiles()
    assert all(r["label"] == "estimated" and r["energy_uj"] > 0 for r in forward)
    # this machine's torch row (RAPL where readable, else estimated), then the prediction
    assert [r["profile"] for r in energy["per_query"]] == ["this machine, torch", "rpi4"]
    assert [r["label"] for r in energy["per_query"]][1:] == ["predicted"]
    for rows in (energy["per_query"], energy["per_decoded_token"]):
        assert all(r["label"] in LABELS and r["energy_uj"] > 0 for r in rows)
    # a query (prefill + decode steps) costs more than one of its decode steps
    assert all(q["energy_uj"] > t["energy_uj"] for q, t in
               zip(energy["per_query"], energy["per_decoded_token"]))
    # in the page: every table with an energy column has a label column, or names the
    # label in the energy column's own header
    for headers, rows in _tables(render_html(*child_report)):
        for i, header in enumerate(headers):
            if "uJ" not in header:
                continue
            if any(label in header for label in LABELS):
                continue
            assert "label" in headers, headers
            column = headers.index("label")
            assert rows and all(row[column] in LABELS for row in rows), (headers, rows)


def test_a_dense_run_says_it_has_no_routing_and_no_evaluations(folders):
    doc, figures = build_report(folders["dense"], FAST)
    assert "no quantum encoder" in doc["routing"]["note"] and "routing" not in figures
    assert doc["pareto"]["run"] is None and "no training evaluations" in doc["pareto"]["note"]
    assert doc["model_card"]["architecture"] == "dense"
    assert set(figures) == {"latency", "energy"}
    page = render_html(doc, figures)
    assert page.count("<section id=") == len(SECTIONS)


def test_a_bundle_report_measures_its_graphs_and_shows_its_manifest(folders):
    doc, figures = build_report(folders["bundle"], FAST)
    latency = doc["latency"]
    assert [r["artifact"] for r in latency["measured"]] == ["torch", "onnx", "onnx_int8"]
    assert latency["breakdown"]["graph"] == "decode.onnx"
    assert [p["label"] for p in latency["predictions"]] == ["predicted"]
    assert doc["manifest"]["kind"] == "bundle" and doc["manifest"]["target"] == "cpu"
    listed = {f["path"] for f in doc["manifest"]["files"]}
    assert {"decode.onnx", "prefill.onnx", "run.py", "tokenizer.json"} <= listed
    assert set(doc["model_card"]["graphs"]) >= {"prefill", "decode"}
    assert "latency" in figures


def test_torch_part_timing_covers_the_step_and_removes_its_hooks():
    model = tiny_model()
    result = torch_decode_breakdown(model, list(range(1, 9)), steps=3, threads=1)
    assert result["steps"] == 3 and result["ms_per_step"] > 0
    assert math.isclose(sum(p["share"] for p in result["parts"].values()), 1.0)
    modules = part_modules(model)
    assert "blocks.1.encoder" in modules and "blocks.0.ffn" in modules
    assert all(not m._forward_hooks and not m._forward_pre_hooks
               for m in [model, *modules.values()])


# ---------------------------------------------------------------------------- the browser

def _chromium() -> str | None:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                 "google-chrome"))), None)
    if found is None and os.environ.get("QTF_EDGE_REQUIRE_CHROMIUM") != "1":
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    assert found, "QTF_EDGE_REQUIRE_CHROMIUM=1 but no chromium on PATH"
    return found


HEADLESS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--virtual-time-budget=5000")
# Counts the page's images and those that failed to decode, once everything has loaded.
IMAGE_PROBE = ("<script>window.addEventListener('load', () => { const images = "
               "[...document.images]; document.body.setAttribute('data-images', images.length);"
               " document.body.setAttribute('data-broken', images.filter(i => !i.complete || "
               "i.naturalWidth === 0).length); });</script></body>")


def test_the_report_renders_in_headless_chromium(folders, tmp_path):
    chromium = _chromium()
    out = tmp_path / "report.html"
    result = invoke("report", folders["child"], "--out", out, "--max-tokens", "256",
                    "--seq-len", "8", "--new-tokens", "4", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.json").is_file()
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", IMAGE_PROBE), encoding="utf-8")
    dom = subprocess.run([chromium, *HEADLESS, "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-images="4"' in dom and 'data-broken="0"' in dom, dom[:300]
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *HEADLESS, "--window-size=1280,4000", f"--screenshot={shot}",
                    out.as_uri()], capture_output=True, timeout=120, check=True)
    from matplotlib.image import imread
    pixels = imread(shot)
    assert pixels.shape[:2] == (4000, 1280) and pixels.std() > 0.05  # not a blank page


def test_a_broken_image_is_detected_by_the_probe(tmp_path):
    """The probe the render test relies on does see an image that fails to decode."""
    chromium = _chromium()
    page = tmp_path / "broken.html"
    page.write_text("<html><body><img src=\"data:image/png;base64,AAAA\">"
                    + IMAGE_PROBE.replace("</body>", "") + "</body></html>")
    dom = subprocess.run([chromium, *HEADLESS, "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-broken="1"' in dom


# ---------------------------------------------------------------------------- bad input

def test_bad_input_is_one_line_and_exit_2(folders, tmp_path):
    bundle = folders["bundle"]
    out = tmp_path / "r.html"
    small = ("--seq-len", "8", "--new-tokens", "4")  # the tiny runs' context is 32
    for args, words in (((tmp_path / "nowhere", "--out", out), ["nowhere", "not found"]),
                        ((tmp_path, "--out", out), ["holds neither", "expected a bundle folder"]),
                        ((bundle, "--out", tmp_path / "r.txt"), ["--out", ".html"]),
                        ((bundle, "--out", tmp_path / "no" / "r.html"), ["--out", "not exist"]),
                        ((bundle, "--out", out, "--runs", "0"), ["--runs"]),
                        ((folders["child"], "--out", out, *small, "--text", " "), ["--text"]),
                        ((folders["child"], "--out", out, *small, "--data", tmp_path / "none.txt"),
                         ["--data"]),
                        ((folders["child"], "--out", out), ["--seq-len 32", "context of 32"])):
        assert_one_line_error(invoke("report", *args), *words)
    (tmp_path / "taken.json").mkdir()  # where the page's JSON would go
    assert_one_line_error(invoke("report", bundle, "--out", tmp_path / "taken.html"),
                          "taken.json", "cannot write")
    assert not out.exists() and not (tmp_path / "taken.html").exists()
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    (tampered / "config.json").write_text("{}")
    assert_one_line_error(invoke("report", tampered, "--out", out), "config.json")


def _tables(page: str) -> list[tuple[list[str], list[list[str]]]]:
    """(headers, rows of cell text) of every table in an HTML page."""

    class Tables(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append(([], []))
            elif tag == "tr":
                self.tables[-1][1].append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.tables[-1][1][-1].append(self.cell)
                self.cell = None

    parser = Tables()
    parser.feed(page)
    return [(rows[0], rows[1:]) for _, rows in parser.tables if rows]
