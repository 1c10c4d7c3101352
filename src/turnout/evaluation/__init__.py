"""turnout.evaluation: routing tables, loaders, cost/quality metrics and the router runner.

Example::

    from turnout.evaluation import load_table
    table = load_table("../shared/data/routerbench/routerbench.parquet")
    print(table.summary()["oracle"])
"""

from turnout.evaluation.loaders import load_table
from turnout.evaluation.metrics import aiq, apgr_cpt, cost_fraction_to_match, nondecreasing_hull
from turnout.evaluation.table import RoutingTable

__all__ = ["RoutingTable", "aiq", "apgr_cpt", "cost_fraction_to_match", "load_table", "nondecreasing_hull"]
