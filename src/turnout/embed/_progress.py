"""Batching with an optional rich progress bar, shared by the embedders and the cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

#: batches above this many texts show a progress bar (a single prompt never does)
PROGRESS_THRESHOLD = 256


def length_sorted_batches(
    texts: Sequence[str],
    batch_size: int,
    *,
    progress: bool,
    label: str,
    max_padded_chars: int | None = None,
    call_cost_chars: int | None = None,
) -> Iterator[list[int]]:
    """Yield index lists of at most ``batch_size`` texts, shortest texts together.

    Sorting by length keeps padding (and so wasted transformer work) small; the
    caller scatters results back by index, so output order is the input order.
    ``max_padded_chars`` also caps a batch's padded size (texts × its longest
    text, in characters): a transformer's attention memory grows with it, so
    long texts go in smaller batches.

    ``call_cost_chars`` (the fixed cost of one model call, in characters of
    padded text) switches from filling each batch greedily to the split of the
    sorted texts that minimises padded characters plus that cost per call: a
    batch of mixed lengths is padded to its longest, so 32 short chat prompts of
    5 to 90 tokens cost several times their real work in one call.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    if call_cost_chars is not None:
        batches = _cheapest_split(order, [len(texts[i]) for i in order], batch_size, max_padded_chars, call_cost_chars)
    else:
        batches = _greedy_split(order, texts, batch_size, max_padded_chars)
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


def _greedy_split(order: list[int], texts: Sequence[str], batch_size: int, max_padded_chars: int | None) -> list[list[int]]:
    """Fill each batch in sorted order until ``batch_size`` or the padded-size cap."""
    batches: list[list[int]] = []
    for i in order:
        # sorted ascending: text i is the longest of the batch it joins
        if (
            batches
            and len(batches[-1]) < batch_size
            and (max_padded_chars is None or (len(batches[-1]) + 1) * len(texts[i]) <= max_padded_chars)
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _cheapest_split(
    order: list[int], lengths: list[int], batch_size: int, max_padded_chars: int | None, call_cost: int
) -> list[list[int]]:
    """Contiguous runs of the sorted texts minimising Σ (texts × longest + ``call_cost``) over the runs.

    Dynamic programming over the sorted lengths (a run's longest is its last):
    O(n × batch_size). A run never exceeds ``batch_size`` texts nor, unless it
    is one text, ``max_padded_chars``.
    """
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the first j texts
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = max(lengths[j - 1], 1)
        for i in range(j - 1, max(j - batch_size, 0) - 1, -1):
            size = j - i
            if size > 1 and max_padded_chars is not None and size * longest > max_padded_chars:
                break  # larger runs ending at j only grow
            cost = best[i] + size * longest + call_cost
            if cost < best[j]:
                best[j], start[j] = cost, i
    runs: list[list[int]] = []
    j = n
    while j > 0:
        runs.append(order[start[j] : j])
        j = start[j]
    return runs[::-1]
