"""Loading from the Hugging Face Hub without waiting on a network that is not there.

Without a network, ``from_pretrained("gpt2")`` retries for about a minute (huggingface_hub's backoff),
printing a warning per retry, before it fails. circuitkit asks first:

- :func:`in_local_cache`: is the model's ``config.json`` in the local Hugging Face cache
  (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``)? Nothing is downloaded.
- :func:`hub_unreachable`: one request to the Hub's endpoint (``HF_ENDPOINT``, proxies from the
  environment) with a short timeout; any answer, whatever its status, means reachable.

A cached model is then loaded from the cache (``local_files_only``) when the Hub cannot be reached, and a
model that is neither cached nor reachable fails at once with what to do. ``HF_HUB_OFFLINE=1`` skips the
request and uses the cache only.
"""

from __future__ import annotations

import os

#: Seconds the reachability request may take (connect and read).
PROBE_TIMEOUT_S = 3.0


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(
        os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT


def in_local_cache(repo_id: str) -> bool:
    """Whether ``repo_id``'s ``config.json`` is in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
        return isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=cache), str)
    except Exception:  # noqa: BLE001 - not a valid repo id, unreadable cache: not cached
        return False


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the Hub's endpoint answers within ``timeout`` seconds, else why not (one line)."""
    import httpx

    url = endpoint()
    try:
        httpx.head(url, timeout=timeout, follow_redirects=False)
    except Exception as e:  # noqa: BLE001 - DNS, refused, timeout, proxy, TLS: all mean "cannot reach"
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"{url}: {text}"
    return None
