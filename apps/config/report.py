"""What a configuration run did (or, dry, would do): one ``Change`` per object, rendered for the
command line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from lib.upsert import CREATED, UNCHANGED, UPDATED

# (singular, plural) in report order.
KINDS = [
    (gettext_noop("egress proxy"), gettext_noop("egress proxies")), (gettext_noop("supplier"), gettext_noop("suppliers")),
    (gettext_noop("provider"), gettext_noop("providers")), (gettext_noop("supplier key"), gettext_noop("supplier keys")),
    (gettext_noop("local node"), gettext_noop("local nodes")),
    (gettext_noop("model"), gettext_noop("models")), (gettext_noop("price"), gettext_noop("prices")),
    (gettext_noop("FX rate"), gettext_noop("FX rates")), (gettext_noop("company"), gettext_noop("companies")),
    (gettext_noop("model coefficients"), gettext_noop("companies' model coefficients")),
    (gettext_noop("department"), gettext_noop("departments")), (gettext_noop("top-up"), gettext_noop("top-ups")),
    (gettext_noop("token"), gettext_noop("tokens")),
]


@dataclass(frozen=True)
class Change:
    """One object the run created, updated or left unchanged (or, dry, would)."""

    kind: str  # a singular from KINDS
    label: str
    action: str  # lib.upsert CREATED / UPDATED / UNCHANGED
    detail: str = ""


@dataclass
class Report:
    """Every change of one run, in file order, and the token secrets to show once."""

    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    shown_once: list[tuple[str, str]] = field(default_factory=list)  # (token label, secret)

    @property
    def changed(self) -> bool:
        """Whether anything was (or, dry, would be) created or updated."""
        return any(change.action != UNCHANGED for change in self.changes)

    def counts(self, action: str) -> dict[str, int]:
        """``{plural kind: count}`` of the changes with ``action``, in report order; kinds with none left out."""
        counter = Counter(change.kind for change in self.changes if change.action == action)
        return {plural: counter[singular] for singular, plural in KINDS if counter[singular]}

    def render(self) -> str:
        """The report for the command line: one line per created or updated object, the token secrets
        to show once, then ``summary()``."""
        lines = []
        if self.dry_run:
            lines.append(_("Dry run: the plan below was validated; nothing was written."))
        verbs = ({CREATED: _("would create"), UPDATED: _("would update")} if self.dry_run
                 else {CREATED: _("created"), UPDATED: _("updated")})
        for change in self.changes:
            if change.action != UNCHANGED:
                detail = f": {change.detail}" if change.detail else ""
                lines.append(f"{verbs[change.action]}: {_(change.kind)} {change.label}{detail}")
        for label, plain in self.shown_once:
            lines.append(_("token %(label)s: %(secret)s  (shown once)") % {"label": label, "secret": plain})
        lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        """One line per action with the count per kind, e.g. ``unchanged: suppliers 1, providers 2``."""
        lines = []
        titles = ((CREATED, _("to create") if self.dry_run else _("created")),
                  (UPDATED, _("to update") if self.dry_run else _("updated")),
                  (UNCHANGED, _("unchanged")))
        for action, title in titles:
            counts = self.counts(action)
            if counts:
                lines.append(f"{title}: " + ", ".join(f"{_(kind)} {n}" for kind, n in counts.items()))
        if not self.changed:
            lines.append(_("Nothing to change: the database already matches the file."))
        return "\n".join(lines)
