"""turnout.server: the OpenAI-compatible ASGI server over the gateway (needs the 'server' extra).

Import :func:`turnout.server.app.create_app` explicitly; importing this package
pulls in nothing heavy.
"""

__all__: list[str] = []
