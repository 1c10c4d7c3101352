"""Public fakes for testing code built on turnout.

They are for fault injection and fast unit tests; everything else in turnout's
own tests runs real parts.

- :class:`ScriptedBackend` — an in-process :class:`~turnout.backends.base.Backend`
  that answers from a :class:`Script` (slow, failing, cut, garbage on cue).
- :class:`ScriptedServer` — the same script served over HTTP on loopback, in the
  OpenAI or Anthropic protocol (also ``python -m turnout.testing.scripted``).
- :class:`StaticRouter` — a router that always predicts the given qualities.
- :class:`HashEmbedder` — a tiny deterministic embedder with call counters.
"""

from turnout.testing.hash_embedder import HashEmbedder
from turnout.testing.scripted import Rule, Script, ScriptedBackend, ScriptedServer, Step
from turnout.testing.static_router import StaticRouter

__all__ = ["HashEmbedder", "Rule", "Script", "ScriptedBackend", "ScriptedServer", "StaticRouter", "Step"]
