"""``kiln ui``: a read-only page of a fleet, its images and its deployments.

It reads what the CLI reads (a platform's status, history and images), so
there is no second source of truth; see :mod:`kiln.ui.server`.
"""
