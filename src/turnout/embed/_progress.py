"""Batching with an optional rich progress bar, shared by the embedders and the cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

#: batches above this many texts show a progress bar (a single prompt never does)
PROGRESS_THRESHOLD = 256


def length_sorted_batches(
    texts: Sequence[str], batch_size: int, *, progress: bool, label: str
) -> Iterator[list[int]]:
    """Yield index lists of at most ``batch_size`` texts, shortest texts together.

    Sorting by length keeps padding (and so wasted transformer work) small; the
    caller scatters results back by index, so output order is the input order.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if not (progress and len(texts) > PROGRESS_THRESHOLD):
        yield from batches
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=len(texts))
        for batch in batches:
            yield batch
            bar.advance(task, len(batch))
