"""The HTTP API: one router per resource, included by `twin.api.router.install`.

Nothing is imported here, so `twin.api.schemas` can be imported without the service (and
without scikit-learn).
"""
