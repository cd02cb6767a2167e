"""kiln: immutable infrastructure for web apps.

Bake an app into a content-addressed image, deploy it by launching fresh
instances and discarding old ones, never patch anything in place.
"""

__version__ = "0.1.0"
DISTRIBUTION = "kiln-deploy"  # on PyPI "kiln" is an unrelated project
