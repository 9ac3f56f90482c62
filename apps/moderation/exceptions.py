"""The moderation app's errors."""

from __future__ import annotations


class ModerationError(Exception):
    """Base of the moderation app's errors."""


class RemoteLayerError(ModerationError):
    """A remote layer (``llm``, ``external``) timed out, could not be reached, answered with an error
    status or with something that does not parse. ``reason`` never carries the API key or the text."""

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"{layer}: {reason}")
        self.layer = layer
        self.reason = reason


class ScanFailed(ModerationError):
    """A scan could not finish and the policy fails closed: a layer failed (``RemoteLayerError``) or the
    scan ran over the policy's time budget. The caller refuses the request; ``layer`` names what failed."""

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"moderation {layer} failed: {reason}")
        self.layer = layer
        self.reason = reason
