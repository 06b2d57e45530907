"""``python -m circuitkit --help`` and ``--version``: circuitkit's own text instead of Hydra's.

The choices of each config group come from the plugin registry (third-party plugins included, blocked
ones left out), the defaults from the primary config and the plugins' config dataclasses, so the text
follows what is installed. Hydra's own help stays at ``--hydra-help``.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

HELP_FLAGS = ("--help", "-h")
VERSION_FLAGS = ("--version", "-V")

EXAMPLES = (
    ("python -m circuitkit", "EAP-IG on greater_than with the bundled model: the smallest circuit reaching 0.85"),
    ("python -m circuitkit method=eap task=ioi selector.target=0.9", "another method, task and target"),
    ("python -m circuitkit selector=top_n selector.n_edges=200", "a fixed circuit size instead of the search"),
    ("python -m circuitkit model=gpt2", "GPT-2 small from the Hugging Face Hub (needs a network or a cached copy)"),
    ("python -m circuitkit model.name=/path/to/saved_dir", "any model saved with save_pretrained (+ tokenizer)"),
    ("python -m circuitkit task=custom task.path=pairs.jsonl", "your own clean/corrupted pairs"),
    ("python -m circuitkit -m method=eap,eap_ig task=ioi,greater_than", "a sweep (Hydra multirun)"),
    ("python -m circuitkit 'reporter=[wandb]'", "also log to Weights & Biases"),
)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _defaults() -> dict[str, Any]:
    """The primary config's values and the default choice of each group (``{"method": "eap_ig", ...}``)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(Path(__file__).parent / "conf" / "config.yaml"))
    assert isinstance(raw, dict)
    cfg: dict[str, Any] = {str(k): v for k, v in raw.items()}
    choices: dict[str, Any] = {}
    for item in cfg.pop("defaults", []):
        if isinstance(item, dict):
            choices.update(item)
    cfg["_choices"] = choices
    return cfg


def _field_default(entry: Any, name: str) -> Any:
    for f in dataclasses.fields(entry.options):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def _fmt(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def help_text(block: Iterable[str] = ()) -> str:
    """The text of ``python -m circuitkit --help``."""
    from circuitkit.config import model_presets, run_presets
    from circuitkit.errors import CircuitkitError
    from circuitkit.interventions import intervention_names
    from circuitkit.plugins import get_registry
    from circuitkit.registry import KINDS

    cfg = _defaults()
    chosen = cfg["_choices"]
    lines = [
        f"circuitkit {_version('circuitkit')}: find and verify circuits in transformer language models.",
        "",
        "Usage:",
        "  python -m circuitkit [GROUP=NAME ...] [KEY=VALUE ...]        one run",
        "  python -m circuitkit -m [GROUP=A,B ...] [KEY=X,Y ...]        a sweep (Hydra multirun), one run per combination",
        "",
    ]
    try:
        registry = get_registry(list(block))
    except CircuitkitError as e:
        registry = None
        lines += [f"The plugins could not be loaded: {e}", "(python -m circuitkit.list shows each plugin's status.)", ""]
    rows: list[tuple[str, str]] = []
    if registry is not None:
        for kind, (group, _, cfg_base, combinable) in KINDS.items():
            if cfg_base is None:  # metrics, interventions: chosen by an option, not a config group
                continue
            default = chosen.get(group)
            marked = set(default) if isinstance(default, list) else {default}
            names = [f"{n}*" if n in marked else n for n in registry.kinds[kind].names()]
            hint = (
                f"   (a list: {group}=[{','.join(sorted(str(d) for d in default)) or 'a,b'}])"
                if combinable and isinstance(default, list)
                else ""
            )
            if combinable and not hint:
                hint = f"   (a list: {group}=[a,b])"
            rows.append((group, (", ".join(names) or "(none installed)") + hint))
    rows.append(
        (
            "model",
            ", ".join(f"{n}*" if n == chosen.get("model") else n for n in model_presets())
            + "   (or model.name=/path/to/saved_model)",
        )
    )
    rows.append(("preset", ", ".join(run_presets()) + "   (whole-run settings; none by default)"))
    if registry is not None:
        ivs = intervention_names()
        rows.append(
            (
                "intervention",
                ", ".join(f"{n}*" if n == cfg.get("intervention") else n for n in ivs) + "   (what a removed edge carries)",
            )
        )
    w = max(len(r[0]) for r in rows)
    lines.append("Config groups (GROUP=NAME; * marks the default; installed plugins included):")
    lines += [f"  {g:<{w}}  {text}" for g, text in rows]
    lines.append("")

    opts: list[tuple[str, str]] = []
    if registry is not None:
        sel = registry.selectors.entries.get(chosen.get("selector"))
        if sel is not None and any(f.name == "target" for f in dataclasses.fields(sel.options)):
            opts.append(
                (
                    f"selector.target={_fmt(_field_default(sel, 'target'))}",
                    "the faithfulness the circuit must reach (searched size)",
                )
            )
            opts.append(("selector.n_edges=N", f"a fixed size instead (default {_fmt(_field_default(sel, 'n_edges'))}: search)"))
        task = registry.tasks.entries.get(chosen.get("task"))
        if task is not None:
            opts.append((f"task.n_examples={_fmt(_field_default(task, 'n_examples'))}", "examples of the task"))
        method = registry.methods.entries.get("eap_ig")
        if method is not None:
            opts.append((f"method.ig_steps={_fmt(_field_default(method, 'ig_steps'))}", "EAP-IG's interpolation steps"))
            opts.append(
                (
                    f"method.level={_fmt(_field_default(method, 'level'))}",
                    "edge, node or neuron (then selector=top_n selector.n_nodes=K)",
                )
            )
    opts += [
        ("model.device=auto", "cpu, cuda, cuda:N"),
        ("model.dtype=float32", "bfloat16, float16, float64"),
    ]
    for key in ("batch_size", "seed", "cache", "progress", "output_dir"):
        if key in cfg:
            opts.append((f"{key}={_fmt(cfg[key])}", ""))
    w = max(len(o[0]) for o in opts)
    lines.append("Common options (KEY=VALUE, shown with their defaults; GROUP.OPTION for a group's plugin):")
    lines += [f"  {k:<{w}}  {d}".rstrip() for k, d in opts]
    lines.append("")
    w = max(len(e[0]) for e in EXAMPLES)
    lines.append("Examples:")
    lines += [f"  {c:<{w}}  {d}" for c, d in EXAMPLES]
    lines += [
        "",
        "More:",
        "  python -m circuitkit --cfg job [overrides]   the composed config: every option of the chosen plugins",
        "  python -m circuitkit.list                    installed plugins, their components and distributions",
        "  python -m circuitkit.compare DIR             compare the runs of a sweep",
        "  python -m circuitkit --version               versions and installed plugins",
        "  python -m circuitkit --hydra-help            Hydra's own options",
        "  docs/configuration.md                        every option of every builtin plugin",
        "",
        "Results go to outputs/DATE/TIME-ID/ (results.json, scores.json, circuit.json, pictures).",
    ]
    return "\n".join(lines)


def version_text() -> str:
    """The text of ``python -m circuitkit --version``: circuitkit's version, its main dependencies' and
    the installed plugins with the distributions that declare them (read from the entry points, nothing is
    imported)."""
    from circuitkit.plugins import ENTRY_POINT_GROUP

    deps = ", ".join(f"{d} {_version(d)}" for d in ("torch", "transformer_lens", "transformers", "hydra-core", "pluggy"))
    lines = [f"circuitkit {_version('circuitkit')} (python {platform.python_version()}; {deps})"]
    by_dist: dict[tuple[str, str], list[str]] = {}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        name_version = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "")
        by_dist.setdefault(name_version, []).append(ep.name)
    n = sum(len(v) for v in by_dist.values())
    lines.append(f"plugins (entry-point group '{ENTRY_POINT_GROUP}'): {n} installed")
    for (dist, ver), names in sorted(by_dist.items(), key=lambda kv: (kv[0][0] != "circuitkit", kv[0][0])):
        lines.append(f"  {dist} {ver}: {', '.join(names)}".replace("  ? : ", "  (unknown distribution): "))
    return "\n".join(lines)
