"""``manage.py jetstream_demo``: what ``make run`` does before starting the servers.

Idempotent: creates the superadmin if there is no superuser (printing the generated password
once), applies demo/demo.yaml, records the demo's money once (``apps/config/demo_money.py``: usage
accrued to two suppliers, a pending withdrawal, a paid invoice, a department budget), and issues a
fresh secret for the demo token on every run, then prints what there is, how to log in and how to
make a first call.

The cabinets' demo people — a company manager, a supplier and the operator (the superadmin) — are
created with generated passwords and TOTP authenticators; their passwords and TOTP secrets (with a
QR code in the terminal) are printed once, when made. ``--reset-people`` makes new ones.
"""

from __future__ import annotations

import io
import json
import secrets

import segno
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.translation import gettext as _

from apps.accounts import services as accounts
from apps.accounts.exceptions import SuperadminEmailTaken
from apps.accounts.models import Company, CompanyRole, Supplier, SupplierRole
from apps.billing.usage_records import ledger_accounts
from apps.config import demo_money
from apps.config.apply import apply_config
from apps.config.demo_moderation import DEMO_PROMPT, ensure_demo_policy
from apps.config.exceptions import ConfigError
from apps.config.management.commands.jetstream_apply import read_config_file
from apps.proxy.exceptions import ProxyError
from apps.proxy.models import ApiToken, TokenStatus
from apps.proxy.services import rotate_token_secret

ADMIN_EMAIL = "admin@jetstream.local"
DEMO_FILE = settings.BASE_DIR / "demo" / "demo.yaml"
DEMO_COMPANY, DEMO_TOKEN, DEMO_MODEL = "demo", "demo", "demo-chat"
DEMO_MANAGER_EMAIL, DEMO_SUPPLIER_EMAIL, DEMO_SUPPLIER = "manager@jetstream.local", "supplier@jetstream.local", "north-keys"


def first_call_examples(*, api_base: str, secret: str) -> str:
    """A curl command and an OpenAI SDK snippet for a first chat call to ``api_base`` with ``secret`` (indented text)."""
    body = json.dumps({"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hello!"}]})
    return "\n".join([
        f"  curl {api_base}/chat/completions \\",
        f'    -H "Authorization: Bearer {secret}" \\',
        '    -H "Content-Type: application/json" \\',
        f"    -d '{body}'",
        "",
        "  from openai import OpenAI",
        f"  client = OpenAI(base_url={json.dumps(api_base)}, api_key={json.dumps(secret)})",
        f'  print(client.chat.completions.create(model="{DEMO_MODEL}", '
        'messages=[{"role": "user", "content": "Hello!"}]).choices[0].message.content)',
    ])


def moderation_example(*, api_base: str, secret: str) -> str:
    """A curl command sending a name and a phone number to ``demo-echo`` (indented text)."""
    body = json.dumps({"model": "demo-echo", "messages": [{"role": "user", "content": DEMO_PROMPT}]}, ensure_ascii=False)
    return "\n".join([
        f"  curl {api_base}/chat/completions \\",
        f'    -H "Authorization: Bearer {secret}" \\',
        '    -H "Content-Type: application/json" \\',
        f"    -d '{body}'",
    ])


class Command(BaseCommand):
    """``jetstream_demo`` (see the module docstring). The demo token gets a new secret on every run.
    Raises ``CommandError`` if demo/demo.yaml does not apply, the admin email is an ordinary user's,
    or the demo token cannot get a new secret (it was revoked); nothing is written then."""

    help = "Set up the demo (superadmin, mock provider, demo company and token) and print how to use it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--reset-people", action="store_true",
                            help="New passwords and TOTP authenticators for the demo manager, supplier and operator (printed once).")

    def handle(self, *args, **options) -> None:
        text = read_config_file(str(DEMO_FILE))
        try:
            with transaction.atomic():
                admin, password = accounts.ensure_superadmin(email=ADMIN_EMAIL)
                report = apply_config(text)
                money = demo_money.populate()
                ensure_demo_policy(company_slug=DEMO_COMPANY)
                token = ApiToken.objects.get(company__slug=DEMO_COMPANY, name=DEMO_TOKEN)
                secret = dict(report.shown_once).get(f"{DEMO_COMPANY}/{DEMO_TOKEN}")
                if secret is None:  # the token existed: replace its secret so it can be shown
                    token, secret = rotate_token_secret(token=token)
                people = _demo_people(admin, reset=options.get("reset_people", False))
        except ConfigError as exc:
            ledger_accounts.clear()  # the rollback may have removed accounts whose ids it cached
            raise CommandError(_("%(path)s is not valid:\n%(problems)s") % {"path": DEMO_FILE, "problems": exc}) from None
        except (SuperadminEmailTaken, ProxyError) as exc:
            ledger_accounts.clear()
            raise CommandError(str(exc)) from None

        site = settings.SITE_URL.rstrip("/")
        write = self.stdout.write
        write(_("Demo configuration (%(path)s):") % {"path": DEMO_FILE.relative_to(settings.BASE_DIR)})
        write("  " + report.summary().replace("\n", "\n  "))
        write("")
        write(_("Demo money (apps/config/demo_money.py):"))
        for line in money.lines():
            write(f"  {line}")
        _sync_wallets()
        write("")
        write(_("Admin: %(url)s") % {"url": f"{site}/admin/"})
        if password is not None or options.get("reset_people"):
            write(_("  login:    %(email)s") % {"email": admin.email})
            write(_("  password: %(password)s  (shown once)") % {"password": password or people[2][1].password})
        else:
            write(_("  superuser %(email)s already exists; to reset its password:") % {"email": admin.email})
            write(f"    .venv/bin/python manage.py changepassword {admin.email}")
        write("")
        _print_people(write, people, site=site)
        write("")
        write(_("Demo token (a new one on every run; the previous one no longer works):"))
        write(f"  {secret}")
        if token.status != TokenStatus.ACTIVE:
            write(_("  note: this token is %(status)s; set it active in the admin to use it") % {"status": token.get_status_display()})
        write("")
        write(_("Try it:"))
        write(first_call_examples(api_base=f"{site}/v1", secret=secret))
        write("")
        write(_("Moderation: the demo company's policy masks names and phone numbers. The demo-echo model answers with the "
                "prompt it received (the server's log shows it, with placeholders); the answer comes back restored:"))
        write(moderation_example(api_base=f"{site}/v1", secret=secret))
        write(_("  Reports: %(cabinet)s (the company cabinet) and %(admin)s") % {
            "cabinet": f"{site}/company/moderation/", "admin": f"{site}/admin/moderation/moderationreport/"})


def _sync_wallets() -> None:
    """Bring the proxy's Redis wallet counters up to the ledger (the demo's usage charged the demo
    company outside the proxy); without Redis the proxy seeds them from the ledger when it starts."""
    import redis

    from apps.proxy.metering import sync_company_funds

    try:
        sync_company_funds(None)
    except redis.RedisError:
        pass


def _demo_people(admin, *, reset: bool) -> list[tuple[str, accounts.DemoCredentials]]:
    """The demo's company manager, supplier and operator, each with a TOTP authenticator: (role label,
    credentials). With ``reset`` the passwords (the operator's too) and authenticators are new."""
    manager = accounts.ensure_demo_member(email=DEMO_MANAGER_EMAIL, role=CompanyRole.MANAGER,
                                          company=Company.objects.get(slug=DEMO_COMPANY), reset=reset)
    supplier = accounts.ensure_demo_member(email=DEMO_SUPPLIER_EMAIL, role=SupplierRole.OWNER,
                                           supplier=Supplier.objects.get(slug=DEMO_SUPPLIER), reset=reset)
    operator_password = None
    if reset:
        operator_password = secrets.token_urlsafe(18)
        admin.set_password(operator_password)
        admin.save(update_fields=["password"])
    totp = accounts.ensure_totp_device(user=admin, reset=reset)
    operator = accounts.DemoCredentials(email=admin.email, password=operator_password,
                                        totp_secret=totp[0] if totp else None, totp_uri=totp[1] if totp else None)
    return [(_("company manager"), manager), (_("supplier"), supplier), (_("operator (superadmin)"), operator)]


def terminal_qr(text: str) -> str:
    """``text`` as a QR code drawn with Unicode half blocks, for a terminal (segno)."""
    buffer = io.StringIO()
    segno.make(text, error="l").terminal(out=buffer, compact=True, border=1)
    return buffer.getvalue().rstrip("\n")


def _print_people(write, people: list[tuple[str, accounts.DemoCredentials]], *, site: str) -> None:
    write(_("Cabinets: %(url)s — sign in with the email and password, then the 6-digit code from an authenticator app "
            "(Google Authenticator, Yandex Key, FreeOTP…) set up with the TOTP secret:") % {"url": f"{site}/"})
    for label, person in people:
        write(f"  {label}: {person.email}")
        if person.password:
            write(_("    password:    %(password)s  (shown once)") % {"password": person.password})
        if person.totp_secret:
            write(_("    TOTP secret: %(secret)s  (shown once)") % {"secret": person.totp_secret})
            write(terminal_qr(person.totp_uri or ""))
        if not person.password and not person.totp_secret:
            write(_("    exists; new password and TOTP secret: manage.py jetstream_demo --reset-people"))
