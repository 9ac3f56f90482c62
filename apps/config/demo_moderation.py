"""The demo company's data policy, for ``jetstream_demo``: personal data masked on the way to the
provider and restored in the answer, so ``make run`` shows depersonalization end to end with the
``demo-echo`` mock (it answers with the prompt it received and logs it).

The policy is created once; a policy the operator changed afterwards is left as it is."""

from __future__ import annotations

from apps.accounts.models import Company
from apps.moderation.findings import Action, Category, Direction
from apps.moderation.models import Policy, PolicyMode, default_actions

DEMO_PROMPT = "Позвоните Ивану Петрову по номеру +7 912 345-67-89, он ждёт звонка."


def demo_policy() -> dict:
    """The demo policy's fields: enforced, with names, phone numbers and e-mail addresses masked in prompts
    (and restored in answers), the rest as a new policy has them."""
    actions = default_actions()
    for category in (Category.PERSON, Category.PHONE, Category.EMAIL):
        actions[Direction.PROMPT.value][category.value] = Action.MASK.value
    return {"mode": PolicyMode.ENFORCE, "actions": actions, "use_ner": True}


def ensure_demo_policy(*, company_slug: str) -> tuple[Policy, bool]:
    """(the company's policy, whether it was created now). Raises ``Company.DoesNotExist``."""
    company = Company.objects.get(slug=company_slug)
    return Policy.objects.get_or_create(company=company, token=None, defaults=demo_policy())
