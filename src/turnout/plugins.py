"""Where third-party parts come from: Python entry points, one group per kind of part.

A package adds a backend protocol, a router, an embedder or a pipeline stage to turnout by declaring an
entry point; turnout's own built-ins are found the same way or through lists in each registry, so a
plugin is named in ``turnout.yaml`` exactly like a built-in and validated against the same registry::

    [project.entry-points."turnout.routers"]
    mine = "my_package.router:MyRouter"          # a Router subclass (or a module that registers one)
    [project.entry-points."turnout.embedders"]
    mine = "my_package.embed:SPEC"               # an EmbedderSpec, or a factory(model_dir, progress)
    [project.entry-points."turnout.backends"]
    mine = "my_package.backend:MyBackend"
    [project.entry-points."turnout.stages"]
    mine = "my_package.stage:MyStage"

Reading the installed entry points is cached per process (the installed set does not change while it runs).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

BACKENDS = "turnout.backends"
ROUTERS = "turnout.routers"
EMBEDDERS = "turnout.embedders"
STAGES = "turnout.stages"


@cache
def plugin_entry_points(group: str) -> dict[str, EntryPoint]:
    """The installed entry points of ``group`` by name (the first one of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return found


__all__ = ["BACKENDS", "EMBEDDERS", "ROUTERS", "STAGES", "plugin_entry_points"]
