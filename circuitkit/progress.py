"""Progress bars (tqdm), off when ``ctx.progress`` is false."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], ctx: Any, *, total: int | None = None, desc: str = "") -> Iterator[T]:
    from tqdm.auto import tqdm

    enabled = bool(getattr(ctx, "progress", False))
    return iter(tqdm(items, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True))


def progress_bar(ctx: Any, *, total: int, desc: str = "") -> Any:
    """A manually updated bar (``with progress_bar(...) as bar: bar.update(1)``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not bool(getattr(ctx, "progress", False)), leave=False, dynamic_ncols=True)
