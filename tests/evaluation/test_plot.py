import sys

import pytest

from turnout.errors import MissingDependency

RESULT = {
    "table": "t.jsonl",
    "n_train": 90,
    "n_test": 30,
    "best_single": {"model": "big", "quality": 0.9, "cost": 0.01},
    "oracle": {"quality": 0.97, "cost": 0.004},
    "single_models_aiq": 0.7,
    "single_models": {"small": {"quality": 0.5, "cost": 0.0001}, "big": {"quality": 0.9, "cost": 0.01}},
    "routers": {
        "knn": {"aiq": 0.8, "curve": [[0.0001, 0.5], [0.002, 0.8], [0.005, 0.85], [0.01, 0.9], [0.01, 0.88]]},
        "random": {"aiq": 0.6, "curve": [[0.005, 0.7]]},
    },
}


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from turnout.evaluation.plot import plot_eval

    out = plot_eval(RESULT, tmp_path / "sub" / "e.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    from turnout.evaluation import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependency) as e:
        plot.plot_eval(RESULT, tmp_path / "e.png")
    assert "turnout[plot]" in str(e.value)


def test_plot_draws_reference_lines_in_the_legend(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from turnout.evaluation.plot import plot_eval

    labels = []
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", lambda self, *a, **k: labels.extend(self.get_legend_handles_labels()[1]))
    result = {**RESULT, "references": {"task_means": {"aiq": 0.75, "curve": [[0.0001, 0.5], [0.01, 0.88]]}}}
    plot_eval(result, tmp_path / "r.png")
    assert "task means, true task (train) (AIQ 0.750)" in labels and "knn (AIQ 0.800)" in labels
