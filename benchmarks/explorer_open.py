"""How long circuit.html takes to open and to re-select with its slider, GPT-2 small against the bundled model.

Writes explorer pages for random scores on a GPT-2-small-shaped graph (12 layers x 12 heads, 32,491 edges,
every edge stored for the slider) and on the bundled model's shape (4 x 8, 1,519 edges), opens each in
headless Chromium (the system's ``chromium``, driven by Playwright) with no network, and prints the file
sizes, the time from navigation until the page is drawn, and the time of one slider move (re-selection
with pruning, then drawing), as medians over ``--repeats`` and as ratios to the bundled model's.

    python benchmarks/explorer_open.py --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import circuitkit as ck
from circuitkit import explorer
from circuitkit.graph import Graph
from circuitkit.results import Scores


def page_for(graph: Graph, n: int, out: Path) -> Path:
    s = Scores(graph, torch.from_numpy(np.random.default_rng(0).standard_normal(graph.n_edges)))
    c = ck.build("selectors", "top_n", n_edges=n).select(s)
    return explorer.write(out, graph, [explorer.run_view(s, c, "random", n_hint=n)], title=f"{graph.n_edges} edges")


def measure(browser, path: Path, repeats: int, slide_to: list[int]) -> tuple[float, float]:
    opens, slides = [], []
    for _ in range(repeats):
        ctx = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
        page = ctx.new_page()
        t = time.perf_counter()
        page.goto(path.resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']")
        opens.append(time.perf_counter() - t)
        for n in slide_to:
            t = time.perf_counter()
            page.evaluate(f"circuitExplorer.setN({n})")  # re-select, prune and draw synchronously
            slides.append(time.perf_counter() - t)
        ctx.close()
    return statistics.median(opens), statistics.median(slides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        rows = []
        for name, g, n, slide in (
            ("bundled shape (4x8)", Graph(4, 8), 200, [100, 400, 1519]),
            ("GPT-2 small shape (12x12)", Graph(12, 12), 500, [300, 3000, 32491]),
        ):
            path = page_for(g, n, Path(tmp) / f"{g.n_edges}.html")
            t_open, t_slide = measure(browser, path, args.repeats, slide)
            rows.append((name, g.n_edges, path.stat().st_size, t_open, t_slide))
        browser.close()
    base = rows[0]
    print(f"{'graph':28} {'edges':>7} {'file KB':>8} {'open s':>7} {'x bundled':>9} {'slider s':>9} {'x bundled':>9}")
    for name, edges, size, t_open, t_slide in rows:
        print(
            f"{name:28} {edges:7d} {size / 1000:8.1f} {t_open:7.3f} {t_open / base[3]:9.2f} {t_slide:9.3f} {t_slide / base[4]:9.2f}"
        )
    print("(slider: median over moves to 3 sizes up to the whole graph; at most 1,500 edges are drawn)")


if __name__ == "__main__":
    main()
