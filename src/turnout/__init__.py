"""turnout: send every LLM request to the right model.

Importing turnout does no I/O and imports no heavy dependency; the rooms are
``turnout.routing`` (routers and policy), ``turnout.evaluation`` (tables,
metrics, ``turnout eval``), ``turnout.gateway`` and ``turnout.server`` (the
OpenAI-compatible routing server), ``turnout.testing`` (public fakes).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
