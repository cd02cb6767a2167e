"""Providers: the seam between the deploy engine and where instances run.

``protocol`` is the seven-method contract the engine drives, ``registry`` maps a
provider name to its class (imported lazily), and ``fake`` is an in-memory
provider for the engine's unit tests. The real providers live in ``kiln.local``
and ``kiln.aws``.
"""
