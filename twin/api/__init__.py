"""The HTTP API: one router per resource, included by `install`."""

from twin.api.router import install

__all__ = ["install"]
