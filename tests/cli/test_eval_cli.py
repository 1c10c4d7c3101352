import json

import numpy as np

from turnout.cli.main import main


def test_eval_on_generated_table(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        hard = i % 2
        for m, c, p in (("small", 0.001, 0.9 - 0.8 * hard), ("big", 0.01, 0.95)):
            rows.append({"prompt_id": str(i), "prompt": ("hard math proof " if hard else "easy hello ") + str(i),
                         "model": m, "score": float(rng.random() < p), "cost_usd": c})
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "o.json"
    assert main(["eval", str(src), "--embedder", "hashing", "--routers", "knn", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_train"] == 90 and res["n_test"] == 30
    r = res["routers"]["knn"]
    assert 0 <= r["aiq"] <= 1 and r["curve"] and r["max_quality"] <= res["oracle"]["quality"] + 1e-9
