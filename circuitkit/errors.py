"""User-facing errors.

Every failure caused by bad input is raised as a :class:`CircuitkitError` whose message says what was
wrong and what to do. The CLI prints that message on one line and exits non-zero; ``HYDRA_FULL_ERROR=1``
shows the full traceback for debugging.
"""

from __future__ import annotations


class CircuitkitError(Exception):
    """An error whose message is meant for the user: what was wrong, and what to do about it."""


class ConfigError(CircuitkitError):
    """A configuration value is invalid (unknown name, out-of-range number, missing path...)."""


class DataError(CircuitkitError):
    """A task's examples are unusable (length mismatch, multi-token answer, too few examples...)."""


class ModelLoadError(CircuitkitError):
    """A model could not be loaded (hub unreachable, unsupported architecture, missing tokenizer...)."""


class PluginError(CircuitkitError):
    """A plugin is broken (raises in its hook, registers a duplicate name, misspells a hook...)."""


def choices_hint(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``"'x' is not one of: a, b, c"``, with a close match suggested when there is one."""
    import difflib

    text = f"'{name}' is not one of: {', '.join(sorted(choices)) or '(none registered)'}"
    close = difflib.get_close_matches(name, list(choices), n=1)
    if close:
        text += f" (did you mean '{close[0]}'?)"
    return text


def quote(text: object, limit: int = 80) -> str:
    """``repr(text)`` cut to about ``limit`` characters, saying how long it was: user data (a prompt, a
    file's value) can be megabytes, and a message quotes only its start."""
    s = text if isinstance(text, str) else repr(text)
    if len(s) <= limit:
        return repr(s) if isinstance(text, str) else s
    head = repr(s[:limit]) if isinstance(text, str) else s[:limit]
    return f"{head}... ({len(s):,} characters)"
