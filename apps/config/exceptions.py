"""The config app's exception hierarchy: catch ``ConfigError`` for all of them.

Messages are user-visible (the command line shows them); they never carry a secret.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file that cannot be applied; every problem is named with its place.

    ``problems`` is a list of ``(place, message)`` pairs, the place written like
    ``companies[0].tokens[0].limits.total`` ("" for the file as a whole).
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{place}: {message}" if place else message for place, message in problems))
