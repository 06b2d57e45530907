"""circuit.html, the interactive explorer, and the pictures every run writes.

The browser tests open the generated file in headless Chromium (the system's ``chromium``, driven by
Playwright) with the network cut off, and check through the page what it draws and selects against the
Python selector and the run's files. They skip, saying why, where no browser can be started, except under
``CI=true``, where they fail instead.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import circuitkit as ck
from circuitkit import explorer
from circuitkit.graph import Graph
from circuitkit.results import Circuit, RunResult, Scores

#: Stated size budgets of circuit.html (see circuitkit/explorer.py).
BUDGET_BUNDLED = 150_000
BUDGET_GPT2_SMALL = 700_000
NS = "http://www.w3.org/2000/svg"


def random_scores(g: Graph, seed: int = 0, ties: bool = False) -> Scores:
    v = np.random.default_rng(seed).standard_normal(g.n_edges)
    if ties:  # many equal |score|s and both signs: the rank order must follow the edge order
        v = np.round(v * 2) / 2
    return Scores(g, torch.from_numpy(v))


def top_n(scores: Scores, n: int, absolute: bool = True) -> Circuit:
    return ck.build("selectors", "top_n", n_edges=n, absolute=absolute).select(scores)


def run_config(method: str, n_edges: int, budgets: list[int]) -> dict:
    return {
        "seed": 0,
        "progress": False,
        "cache": False,
        "method": {"name": method},
        "task": {"name": "greater_than", "n_examples": 8},
        "selector": {"name": "top_n", "n_edges": n_edges},
        "evaluator": {"faithfulness": {}, "faithfulness_curve": {"unit": "edges", "budgets": budgets, "refine_steps": 0}},
        "reporter": {},
    }


# ----- the file, without a browser ------------------------------------------------------------------


def test_size_budget_and_self_contained():
    bundled = Graph(4, 8)  # the bundled model's shape: 1,519 edges
    gpt2 = Graph(12, 12)
    assert (bundled.n_edges, gpt2.n_edges) == (1519, 32491)
    sizes = {}
    for name, g, n in (("bundled", bundled, 200), ("gpt2", gpt2, 1000)):
        s = random_scores(g)
        view = explorer.run_view(s, top_n(s, n), "eap", stderr=torch.rand(g.n_edges, dtype=torch.float64))
        text = explorer.render(g, [view], title="t <script>", d_model=768)
        sizes[name] = len(text.encode())
        # Every ranked edge is stored (the slider covers the whole graph) ...
        assert len(np.frombuffer(base64.b64decode(view["order"]), dtype="<u2")) == g.n_edges
        # ... and nothing is fetched: no URL but the SVG namespace, no external script, style or image.
        urls = {u for u in re.findall(r"https?://[^\s\"'<>)]+", text)}
        assert urls <= {NS}, urls
        assert "<script src" not in text and "<link" not in text and "@import" not in text
        assert "<title>t &lt;script&gt;</title>" in text and "t <script>" not in text.split("ck-data")[1].split("</script>")[0]
    assert sizes["bundled"] < BUDGET_BUNDLED and sizes["gpt2"] < BUDGET_GPT2_SMALL, sizes


def test_large_graph_stores_the_strongest_edges_and_the_circuit():
    g = Graph(3, 4)
    s = random_scores(g, 1)
    c = Circuit.from_mask(g, np.arange(g.n_edges) % 7 == 0, s)  # not a top-n circuit
    view = explorer.run_view(s, c, "x", max_stored=50)
    order = np.frombuffer(base64.b64decode(view["order"]), dtype="<u2")
    assert order.tolist() == explorer.ranking(s)[:50].tolist()
    stored_circuit = set(order.tolist()) | {e for e, _, _ in view["extra"]}
    assert set(view["circuit"]) == set(np.flatnonzero(c.edges).tolist()) <= stored_circuit
    assert all(v == pytest.approx(s.values[e].item()) for e, v, _ in view["extra"])


def test_initial_n_reproduces_the_circuit():
    g = Graph(2, 4)
    s = random_scores(g, 2, ties=True)
    order = explorer.ranking(s)
    for n in (0, 7, 40):
        c = top_n(s, n)
        m = explorer.initial_n(g, order, c.edges, hint=n)
        assert m == n
        m = explorer.initial_n(g, order, c.edges)  # without the hint: a size giving the same edges
        mask = np.zeros(g.n_edges, bool)
        mask[order[:m]] = True
        assert np.array_equal(g.prune(mask), c.edges)


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """Two finished runs (EAP and EAP-IG) of the tiny model, with the default reporters and a curve."""
    from circuitkit.pipeline import run

    out = {}
    for method in ("eap", "eap_ig"):
        d = tmp_path_factory.mktemp(method) / "run"
        out[method] = (d, run(run_config(method, 40, [5, 10, 20, 40, 80]), d, model=tiny_model))
    return out


def test_every_run_writes_pictures_and_the_explorer(runs):
    d, result = runs["eap"]
    assert result.status == "complete"
    for name in ("circuit.html", "circuit.svg", "circuit.png", "curve.png"):
        assert (d / name).stat().st_size > 0, name
    assert (d / "circuit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (d / "circuit.svg").read_text().lstrip().startswith("<?xml")


def test_pictures_false_and_an_explicit_reporter_list(tiny_model, tmp_path):
    from circuitkit.pipeline import run

    cfg = run_config("eap", 10, [5, 10])
    d = tmp_path / "off"
    run({**cfg, "pictures": False}, d, model=tiny_model)
    assert not [p for p in d.iterdir() if p.suffix in (".html", ".svg", ".png")]
    d = tmp_path / "options"  # listed with options: used once, with those options
    run({**cfg, "reporter": {"pictures": {"formats": ["svg"], "html": False}}}, d, model=tiny_model)
    assert sorted(p.name for p in d.iterdir() if p.suffix in (".html", ".svg", ".png")) == ["circuit.svg", "curve.svg"]


def test_missing_matplotlib_warns_once_and_keeps_every_result(tiny_model, tmp_path, monkeypatch, caplog):
    from circuitkit.pipeline import run

    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    d = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="circuitkit"):
        result = run(run_config("eap", 10, [5, 10]), d, model=tiny_model)
    assert result.status == "complete"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # One warning about it, and no reporter failed (other warnings, e.g. about the random model, may appear).
    assert len([w for w in warnings if "matplotlib" in w]) == 1 and not [w for w in warnings if "failed" in w], warnings
    assert "matplotlib cannot be imported" in next(w for w in warnings if "matplotlib" in w)
    assert json.loads((d / "results.json").read_text())["status"] == "complete"
    assert Circuit.load(d / "circuit.json").n_edges == result.circuit.n_edges
    assert (d / "scores.json").is_file() and (d / "circuit.html").is_file()
    assert not list(d.glob("*.png")) and not list(d.glob("*.svg"))


def test_curve_points_follow_the_ranking_rule():
    rows = [
        {"requested_edges": 10, "n_edges": 8, "faithfulness": 0.5},
        {"requested_edges": 20, "n_edges": 17, "faithfulness": None},
    ]
    evals = {
        "faithfulness_curve": {
            "values": {"target": 0.85},
            "tables": {
                "curve": rows,
                "curve_signed": [{"requested_edges": 5, "faithfulness": 0.1}],
                "refine": [{"requested_edges": 15, "n_edges": 12, "faithfulness": 0.7}],
            },
        },
    }
    pts = explorer.curve_points(evals)
    assert pts == {
        "points": [{"n": 10, "edges": 8, "faithfulness": 0.5}, {"n": 15, "edges": 12, "faithfulness": 0.7}],
        "target": 0.85,
    }
    assert explorer.curve_points(evals, absolute=False) is None  # that curve ranked by |score|
    assert explorer.curve_points(evals, configs={"faithfulness_curve": {"selector": "greedy"}}) is None
    # The sizes the top-n selector's target search evaluated count as measured points too.
    selection = {"target": 0.8, "evaluated": [{"requested_edges": 3, "n_edges": 2, "faithfulness": 0.2, "stage": "grid"}]}
    pts = explorer.curve_points({}, selection=selection)
    assert pts == {"points": [{"n": 3, "edges": 2, "faithfulness": 0.2}], "target": 0.8}


# ----- in a browser ---------------------------------------------------------------------------------


def _browser_or_reason():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, "the playwright package is not installed (pip install -e '.[dev]')"
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None, "no chromium executable on PATH (apt-get install chromium)"
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
    except Exception as e:  # noqa: BLE001 - any start failure is a reason to skip, outside CI
        pw.stop()
        return None, f"chromium at {exe} did not start: {str(e).splitlines()[0]}"
    return (pw, browser), None


def _no_browser(reason: str) -> None:
    """Skip, saying why; under CI=true fail instead: CI must run the browser tests."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the browser tests, but {reason}.")
    pytest.skip(f"browser tests need headless Chromium: {reason}")


def test_without_a_browser_tests_skip_with_the_reason_and_fail_under_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    got, reason = _browser_or_reason()
    assert got is None and reason in (
        "no chromium executable on PATH (apt-get install chromium)",
        "the playwright package is not installed (pip install -e '.[dev]')",
    )
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="browser tests need headless Chromium: "):
        _no_browser(reason)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser tests"):
        _no_browser(reason)


@pytest.fixture(scope="module")
def browser():
    got, reason = _browser_or_reason()
    if got is None:
        _no_browser(reason)
    pw, b = got
    yield b
    b.close()
    pw.stop()


class Page:
    """One opened explorer page with no network, recording console errors and attempted requests."""

    def __init__(self, browser, path: Path) -> None:
        self.ctx = browser.new_context(offline=True, accept_downloads=True, viewport={"width": 1400, "height": 900})
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']")

    def wait(self, expr: str, timeout: float = 10.0) -> None:
        """Poll ``expr`` until it is true (the page's Content-Security-Policy forbids wait_for_function's eval)."""
        import time

        end = time.monotonic() + timeout
        while not self.page.evaluate(expr):
            assert time.monotonic() < end, f"timed out waiting for {expr}"
            time.sleep(0.02)

    def drawn(self) -> set[str]:
        return set(self.page.evaluate("[...document.querySelectorAll('#graph g.edge')].map(g => g.dataset.edge)"))

    def slide(self, n: int) -> None:
        self.page.fill("#slider", str(n))  # sets the range input and fires its input/change events
        self.wait(
            f"document.getElementById('n-box').value === '{n}' && document.getElementById('n-readout').textContent.startsWith('top {n} ')"
        )

    def close(self) -> None:
        assert not self.errors, self.errors
        assert [u for u in self.requests if not u.startswith("file:") and not u.startswith(("data:", "blob:"))] == []
        self.ctx.close()


def test_page_draws_the_circuit_and_the_slider_matches_the_python_selector(browser, runs):
    d, result = runs["eap"]
    p = Page(browser, d / "circuit.html")
    circuit = json.loads((d / "circuit.json").read_text())
    in_graph = {n for n, e in circuit["edges"].items() if e["in_graph"]}
    # The run's circuit: as many drawn edges as circuit.json has, the same ones.
    assert p.drawn() == in_graph and len(in_graph) == result.circuit.n_edges
    assert p.page.get_attribute("#n-readout", "data-edges") == str(len(in_graph))
    scores = Scores.load(d / "scores.json")
    total = scores.graph.n_edges
    assert p.page.get_attribute("#slider", "max") == str(total)
    for n in sorted({1, 3, 12, 40, 75, total - 1, total}):
        p.slide(n)
        want = top_n(scores, n).edge_names
        assert p.drawn() == set(want), n
        assert p.page.get_attribute("#n-readout", "data-edges") == str(len(want))
    p.slide(0)
    assert p.drawn() == set()
    p.page.click("#reset")
    assert p.drawn() == in_graph
    # For context, the strongest edges outside the selection, thin and grey; a checkbox hides them.
    ranked = [scores.graph.edge_names[e] for e in explorer.ranking(scores)]
    context = set(p.page.evaluate("[...document.querySelectorAll('#graph g.ctx')].map(g => g.dataset.edge)"))
    assert context == set([e for e in ranked if e not in in_graph][: explorer.CONTEXT])
    p.page.uncheck("#context")
    assert p.page.locator("#graph g.ctx").count() == 0 and p.drawn() == in_graph
    p.close()


def test_hover_shows_the_score_and_rank(browser, runs):
    d, _ = runs["eap"]
    scores = Scores.load(d / "scores.json")
    order = explorer.ranking(scores).tolist()
    p = Page(browser, d / "circuit.html")
    # Edges whose midpoint is not covered by another edge or a node, so the mouse reaches them.
    points = p.page.evaluate(
        """() => [...document.querySelectorAll('#graph g.edge')].map(g => {
             const path = g.querySelector('path.hit'), m = path.getPointAtLength(path.getTotalLength() / 2);
             const c = path.getScreenCTM(), x = c.a * m.x + c.c * m.y + c.e, y = c.b * m.x + c.d * m.y + c.f;
             const top = document.elementFromPoint(x, y);
             return [g.dataset.edge, x, y, !!top && top.parentNode === g];
           }).filter(r => r[3])"""
    )
    assert len(points) >= 5
    for name, x, y, _ in points[:8]:
        p.page.mouse.move(x, y)
        p.wait(f"document.getElementById('tooltip').textContent.startsWith({json.dumps(name)})")
        text = p.page.text_content("#tooltip")
        shown = float(text.split("score ")[1].split()[0])
        # Six significant digits are shown: half a unit in the sixth digit, relative.
        assert shown == pytest.approx(scores[name], rel=5e-6, abs=1e-300), (name, text)
        assert f"rank {order.index(scores.graph.index_of(name)) + 1} of {scores.graph.n_edges}" in text
    p.page.mouse.click(x, y)  # a click pins the last edge's text in the selection panel
    assert p.page.text_content("#info") == text
    p.page.mouse.move(1, 1)
    p.close()


def test_node_click_search_views_and_exports(browser, runs, tmp_path):
    d, result = runs["eap"]
    p = Page(browser, d / "circuit.html")
    node = "a1.h0" if "a1.h0" in result.circuit.node_names else result.circuit.node_names[1]
    p.page.click(f"#graph g.node[data-node='{node}']")
    hl = set(p.page.evaluate("[...document.querySelectorAll('#graph g.edge.hl')].map(g => g.dataset.edge)"))
    touching = {e for e in result.circuit.edge_names if e.split("->")[0] == node or e.split("->")[1].split("<")[0] == node}
    assert hl == touching and touching
    assert p.page.locator("#graph g.edge.dim").count() == len(p.drawn() - touching)
    assert f"inputs ({sum(1 for e in touching if e.split('->')[0] != node)})" in p.page.text_content("#info")
    # Search: a known node gets the focus, an unknown name a message.
    p.page.fill("#search", "m0")
    p.page.press("#search", "Enter")
    assert "focus" in p.page.get_attribute("#graph g.node[data-node='m0']", "class")
    p.page.fill("#search", "zz9")
    p.page.press("#search", "Enter")
    assert "no node named 'zz9'" in p.page.text_content("#msg")
    # Node view and back.
    p.page.check("input[name=view][value=nodes]")
    p.page.check("input[name=view][value=edges]")
    # Exports: circuit.json of the current selection, in the project's format, and the pictures.
    p.slide(25)
    with p.page.expect_download() as dl:
        p.page.click("#export-json")
    dl.value.save_as(tmp_path / "sel.json")
    got = json.loads((tmp_path / "sel.json").read_text())
    scores = Scores.load(d / "scores.json")
    want = top_n(scores, 25)
    want.d_model = result.circuit.d_model
    assert got == json.loads(json.dumps(want.to_json()))
    assert Circuit.load(tmp_path / "sel.json").edge_names == want.edge_names
    with p.page.expect_download() as dl:
        p.page.click("#export-svg")
    dl.value.save_as(tmp_path / "view.svg")
    svg = (tmp_path / "view.svg").read_text()
    assert (
        svg.startswith("<svg")
        and set(re.findall(r'<g class="edge[^"]*" data-edge="([^"]+)"', svg.replace("&gt;", ">").replace("&lt;", "<")))
        == p.drawn()
    )
    with p.page.expect_download() as dl:
        p.page.click("#export-png")
    dl.value.save_as(tmp_path / "view.png")
    assert (tmp_path / "view.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p.close()


def test_curve_beside_the_graph_marks_the_current_size(browser, runs):
    d, _ = runs["eap"]
    rows = json.loads((d / "results.json").read_text())["faithfulness_curve"]["tables"]["curve"]
    p = Page(browser, d / "circuit.html")
    assert p.page.is_visible("#curve-panel") and p.page.locator("#curve circle").count() >= len(rows)
    for row in rows[:3]:
        p.slide(row["requested_edges"])
        assert p.page.get_attribute("#curve-readout", "data-measured") == "1"
        assert float(p.page.get_attribute("#curve-readout", "data-faithfulness")) == row["faithfulness"]
        assert p.page.is_visible("#curve-point")
    p.slide(7)  # between the measured 5 and 10
    assert p.page.get_attribute("#curve-readout", "data-measured") == "0"
    f5, f10 = rows[0]["faithfulness"], rows[1]["faithfulness"]
    assert float(p.page.get_attribute("#curve-readout", "data-faithfulness")) == pytest.approx(f5 + (f10 - f5) * 2 / 5)
    p.close()


@pytest.mark.parametrize(
    "graph", [Graph(3, 4), Graph(2, 4, n_kv_heads=2), Graph(2, 3, parallel_attn_mlp=True)], ids=["mha", "gqa", "parallel"]
)
def test_graph_names_and_pruning_in_the_browser_equal_the_python_graph(browser, tmp_path, graph):
    s = random_scores(graph, 3, ties=True)
    path = explorer.write(
        tmp_path / "g.html",
        graph,
        [explorer.run_view(s, top_n(s, 30), "r", stderr=torch.full((graph.n_edges,), 0.25))],
        title="g",
    )
    p = Page(browser, path)
    names = p.page.evaluate("Array.from({length: circuitExplorer.graph.nEdges}, (_, i) => circuitExplorer.graph.edgeName(i))")
    assert names == graph.edge_names
    order = explorer.ranking(s)
    for n in sorted({0, 2, 9, 30, graph.n_edges // 2, graph.n_edges - 1, graph.n_edges}):
        js = p.page.evaluate(
            f"circuitExplorer.setN({n}), [circuitExplorer.selectedEdges(), circuitExplorer.nodesOf(circuitExplorer.state.sel[0])]"
        )
        c = top_n(s, n)
        assert js[0] == c.edge_names, n
        assert [bool(x) for x in js[1]] == c.nodes.tolist(), n
        # A mask that is not a prefix of the ranking (pruning alone).
        sub = order[: max(n, 1)][::2]
        mask = np.zeros(graph.n_edges, bool)
        mask[sub] = True
        assert p.page.evaluate(f"circuitExplorer.prune({json.dumps(sub.tolist())})") == np.flatnonzero(graph.prune(mask)).tolist()
    # Per-edge uncertainty in the hover text.
    text = p.page.evaluate(
        "document.querySelector('#graph g.edge').dispatchEvent(new MouseEvent('mouseenter')), document.getElementById('tooltip').textContent"
    )
    assert "± 0.250000" in text, text
    p.close()


def test_signed_ranking(browser, tmp_path):
    g = Graph(2, 4)
    s = random_scores(g, 5)
    run = RunResult(
        meta={"method": "eap", "task": "t", "config": {"selector": {"name": "top_n", "n_edges": 20, "absolute": False}}},
        scores=s,
        circuit=top_n(s, 20, absolute=False),
    )
    path = explorer.for_run(run, tmp_path / "c.html")
    p = Page(browser, path)
    assert p.drawn() == set(run.circuit.edge_names)
    for n in (5, 60):
        p.slide(n)
        assert p.drawn() == set(top_n(s, n, absolute=False).edge_names)
    p.close()


def test_comparison_view(browser, runs, tmp_path):
    from circuitkit import compare

    (da, ra), (db, rb) = runs["eap"], runs["eap_ig"]
    out = tmp_path / "cmp.html"
    assert compare.main(["--html", str(da), str(db), "--html-out", str(out), "--no-plot"]) == 0
    p = Page(browser, out)
    a, b = set(ra.circuit.edge_names), set(rb.circuit.edge_names)
    assert p.drawn() == a | b
    assert p.page.get_attribute("#overlap", "data-shared") == str(len(a & b))
    assert float(p.page.get_attribute("#overlap", "data-iou")) == pytest.approx(len(a & b) / len(a | b), rel=1e-12)
    colours = dict(
        p.page.evaluate(
            "[...document.querySelectorAll('#graph g.edge')].map(g => [g.dataset.edge, g.querySelector('path.vis').getAttribute('stroke')])"
        )
    )
    assert (
        {colours[e] for e in a & b} <= {"#6a1b9a"}
        and {colours[e] for e in a - b} <= {"#1f5fbf"}
        and {colours[e] for e in b - a} <= {"#ef6c00"}
    )
    sa, sb = Scores.load(da / "scores.json"), Scores.load(db / "scores.json")
    p.slide(30)
    a, b = set(top_n(sa, 30).edge_names), set(top_n(sb, 30).edge_names)
    assert p.drawn() == a | b and p.page.get_attribute("#overlap", "data-shared") == str(len(a & b))
    p.close()


def test_compare_html_refuses_one_run(runs, capsys):
    from circuitkit import compare

    d, _ = runs["eap"]
    assert compare.main(["--html", str(d), "--no-plot"]) == 1
    assert "circuitkit.compare: error:" in capsys.readouterr().err


def test_wandb_logs_the_explorer_and_the_pictures(tiny_model, tmp_path):
    pytest.importorskip("wandb")
    from wandb_records import offline_runs

    from circuitkit.pipeline import run

    cfg = run_config("eap", 10, [5, 10])
    # wandb listed first: the pictures (added by default) must still reach W&B.
    cfg["reporter"] = {"wandb": {"project": "circuitkit-tests", "mode": "offline"}}
    d = tmp_path / "run"
    assert run(cfg, d, model=tiny_model).status == "complete"
    (wb,) = offline_runs(tmp_path)
    row = next(r for r in wb.history if "explorer/_type" in r)
    assert row["explorer/_type"] == "html-file"
    assert (wb.files_dir / row["explorer/path"]).read_text(encoding="utf-8") == (d / "circuit.html").read_text(encoding="utf-8")
    assert {"images/circuit/_type", "images/curve/_type"} <= wb.history_keys()


def test_a_page_storing_part_of_the_ranking_exports_an_unscored_circuit(browser, tmp_path):
    g = Graph(3, 4)
    s = random_scores(g, 7)
    path = explorer.write(tmp_path / "p.html", g, [explorer.run_view(s, top_n(s, 20), "r", max_stored=50)], title="p", d_model=16)
    p = Page(browser, path)
    assert p.page.get_attribute("#slider", "max") == "50"  # the slider stops at the stored ranking
    p.slide(30)
    got = p.page.evaluate("circuitExplorer.circuitJSON()")
    want = top_n(s, 30)
    assert got["scored"] is False and {e["score"] for e in got["edges"].values()} == {0}
    assert Circuit.from_json(got).edge_names == want.edge_names and Circuit.from_json(got).scores is None
    p.close()
