"""Regenerate docs/img/explorer.png, the README's screenshot of circuit.html.

Runs the README's command on the bundled model (with the faithfulness curve), opens the run's
``circuit.html`` in headless Chromium (the system's ``chromium``, driven by Playwright, as in
tests/test_explorer.py), clicks one node to highlight its inputs and outputs, hovers one edge, and saves a
screenshot as a palette PNG (small enough for the repository).

    python docs/make_screenshot.py                      # a fresh run
    python docs/make_screenshot.py --run-dir outputs/DATE/TIME
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "img" / "explorer.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", help="an existing run directory holding circuit.html (default: run the README's command)")
    ap.add_argument("--node", help="the node to click (default: the head with the most edges in the circuit)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        if not args.run_dir:
            cmd = [sys.executable, "-m", "circuitkit", "method=eap_ig", "task=greater_than", "evaluator=[faithfulness,faithfulness_curve]",
                   f"output_dir={run_dir}", "progress=false", "cache=false"]  # fmt: skip
            subprocess.run(cmd, check=True)
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise SystemExit("no chromium on PATH (apt-get install chromium)")
        page_path = Path(tmp) / "circuit.html"  # made again from the run's files, by this version's explorer
        from circuitkit import explorer

        explorer.for_run_dirs([run_dir], page_path)
        shot = Path(tmp) / "shot.png"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1360, "height": 820}, device_scale_factor=1)
            page.goto(page_path.resolve().as_uri())
            page.wait_for_selector("body[data-ready='1']")
            node = args.node or page.evaluate(
                """() => { const n = {};
                   for (const g of document.querySelectorAll('#graph g.edge')) {
                     const [s, d] = g.dataset.edge.split('->'), dn = d.replace(/<.*>$/, '');
                     for (const x of [s, dn]) if (/^a\\d+\\.h\\d+$/.test(x)) n[x] = (n[x] || 0) + 1; }
                   return Object.keys(n).sort((a, b) => n[b] - n[a])[0]; }"""
            )
            page.click(f"#graph g.node[data-node='{node}']")
            # A point of a highlighted edge that no node or other edge covers.
            box = page.evaluate(
                """() => { for (const f of [0.5, 0.4, 0.6, 0.3, 0.7]) for (const g of document.querySelectorAll('#graph g.edge.hl')) {
                     const p = g.querySelector('path.hit'), m = p.getPointAtLength(p.getTotalLength() * f), c = p.getScreenCTM();
                     const x = c.a * m.x + c.c * m.y + c.e, y = c.b * m.x + c.d * m.y + c.f, top = document.elementFromPoint(x, y);
                     if (top && top.parentNode === g) return [x, y]; }
                   return [0, 0]; }"""
            )
            page.mouse.move(*box)
            page.screenshot(path=str(shot))
            browser.close()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(colors=128).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1000:.0f} KB)")


if __name__ == "__main__":
    main()
