"""Public fakes for testing code built on turnout.

They are for fault injection and fast unit tests; everything else in turnout's
own tests runs real parts.

- :class:`ScriptedBackend` — an in-process :class:`~turnout.backends.base.Backend`
  that answers from a :class:`Script` (slow, failing, cut, garbage on cue).
- :class:`ScriptedServer` — the same script served over HTTP on loopback, in the
  OpenAI or Anthropic protocol (also ``python -m turnout.testing.scripted``).
- :class:`HostileServer` — an upstream that breaks HTTP/1.1, SSE and JSON on cue
  (gzip bombs, endless lines, lying chunk sizes, invalid usage...).
- :class:`StaticRouter` — a router that always predicts the given qualities.
- :class:`HashEmbedder` — a tiny deterministic embedder with call counters.
"""

# from the private modules, not from .scripted: `python -m turnout.testing.scripted` must find it not imported yet
from turnout.testing._script import Rule, Script, Step
from turnout.testing._scripted_backend import ScriptedBackend
from turnout.testing._scripted_server import ScriptedServer
from turnout.testing.hash_embedder import HashEmbedder
from turnout.testing.hostile import HostileServer
from turnout.testing.static_router import StaticRouter

__all__ = ["HashEmbedder", "HostileServer", "Rule", "Script", "ScriptedBackend", "ScriptedServer", "StaticRouter", "Step"]
