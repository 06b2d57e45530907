"""Hub names without a network: an unreachable Hub is detected with one short request, a model in the local
Hugging Face cache still loads, and an uncached one fails at once (no download attempt, no retries).

No test here needs a network: the "Hub" is a local HTTP server or a closed local port (HF_ENDPOINT)."""

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from circuitkit import hub
from circuitkit.errors import ModelLoadError


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there: connection refused


@pytest.fixture
def local_server():
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802
            self.send_response(404)  # any answer means reachable
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_reachability_probe(local_server, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", local_server)
    assert hub.hub_unreachable() is None
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    why = hub.hub_unreachable()
    assert why is not None and why.startswith(url) and "\n" not in why


def test_uncached_hub_model_fails_at_once_without_a_download_attempt(tmp_path, monkeypatch):
    import transformers

    from circuitkit.model import load_model

    calls = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", lambda *a, **k: calls.append((a, k)) or pytest.fail("from_pretrained called"))
    probes = []
    real = hub.hub_unreachable
    monkeypatch.setattr(hub, "hub_unreachable", lambda *a, **k: probes.append(1) or real(*a, **k))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(
        ModelLoadError, match=r"cannot be reached .* not in the local Hugging Face cache.*model.name=/path/to/DIR"
    ):
        load_model("gpt2", device="cpu")
    assert probes == [1] and calls == []  # one probe, no download (and so no retries)


def write_cache(cache, repo_id, model_dir):
    """``model_dir``'s files as the Hugging Face cache holds a download of ``repo_id`` (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)


def run_python(code, env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_cached_hub_model_loads_when_the_hub_cannot_be_reached(tiny_model_dir, tmp_path):
    cache = tmp_path / "hf-cache"
    write_cache(cache, "ck-test/tiny-gpt2", tiny_model_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=closed_port_url())
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from circuitkit.model import load_model\n"
        "m = load_model('ck-test/tiny-gpt2', device='cpu')\n"
        "print('edges', m.graph.n_edges)\n"
    )
    p = run_python(code, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "edges 110" in p.stdout
    assert "cannot be reached" in p.stderr and "loading 'ck-test/tiny-gpt2' from the local cache" in p.stderr
    assert "Retrying" not in p.stderr


def test_cli_with_a_hub_name_and_no_network_gives_one_line_at_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(tmp_path / "empty-cache"), HF_ENDPOINT=closed_port_url(), WANDB_MODE="disabled")
    p = subprocess.run(
        [sys.executable, "-m", "circuitkit", "model=gpt2", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 1
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "circuitkit: error: Could not load 'gpt2': the Hugging Face Hub cannot be reached"
    ), p.stderr
    assert "model.name=/path/to/DIR" in lines[0] and "Retrying" not in p.stderr
