"""Batching with an optional rich progress bar, shared by the embedders and the cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

#: batches above this many texts show a progress bar (a single prompt never does)
PROGRESS_THRESHOLD = 256


def length_sorted_batches(
    texts: Sequence[str], batch_size: int, *, progress: bool, label: str, max_padded_chars: int | None = None,
) -> Iterator[list[int]]:
    """Yield index lists of at most ``batch_size`` texts, shortest texts together.

    Sorting by length keeps padding (and so wasted transformer work) small; the
    caller scatters results back by index, so output order is the input order.
    ``max_padded_chars`` also caps a batch's padded size (texts × its longest
    text, in characters): a transformer's attention memory grows with it, so
    long texts go in smaller batches.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches: list[list[int]] = []
    for i in order:
        # sorted ascending: text i is the longest of the batch it joins
        if batches and len(batches[-1]) < batch_size and (
                max_padded_chars is None or (len(batches[-1]) + 1) * len(texts[i]) <= max_padded_chars):
            batches[-1].append(i)
        else:
            batches.append([i])
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
