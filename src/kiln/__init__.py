"""kiln: immutable infrastructure for web apps.

Bake an app into a content-addressed image, deploy it by launching fresh
instances and discarding old ones, never patch anything in place.
"""

__version__ = "0.1.0"
DISTRIBUTION = "kiln-deploy"  # on PyPI "kiln" is an unrelated project

# Before any other kiln module loads: KILN_PURE=1, or an extension older than its
# source, means importing the Python source of the compiled hot path (kiln.local.compiled).
from kiln.local.compiled import install as _install  # noqa: E402

_install()
