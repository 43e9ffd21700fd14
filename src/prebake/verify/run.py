"""`verify_store`: run the checks of `prebake.verify.checks.CHECKS` in order on one store."""

from __future__ import annotations

from pathlib import Path

from prebake.errors import StoreError
from prebake.storage import StorageOptions, as_path
from prebake.store.layout import StoreDir
from prebake.verify.checks import CHECKS
from prebake.verify.context import VerifyContext
from prebake.verify.report import VerifyReport


def verify_store(
    path: str | Path,
    *,
    src: str | Path | None = None,
    samples: int | None = 16,
    progress: bool = True,
    storage_options: StorageOptions | None = None,
) -> VerifyReport:
    """Check the store at `path`; `samples` items are re-derived from `src` (None: all of them,
    and every row of the store is checked for semantics).

    `path` and `src` may be fsspec URLs; `storage_options` go to fsspec for both. Raises
    StoreError when `path` is not a complete prebake store (a store being built has no tables
    yet: the message says how to finish it); problems found are the report's, not errors.
    """
    store = StoreDir(path, storage_options)
    attrs = store.require_complete()
    if samples is not None and samples < 0:
        raise StoreError(f"samples must be a number >= 0 or None (all), not {samples}")
    report = VerifyReport(store=str(path))
    source = None if src is None else as_path(src, storage_options)
    context = VerifyContext(store, attrs, report, src=source, samples=samples, progress=progress)
    for check in CHECKS:
        if check.needs_source and source is None:
            continue
        context.check = check.name
        if not check.function()(context):
            break  # the store cannot be read further: later checks would only repeat it
    return report
