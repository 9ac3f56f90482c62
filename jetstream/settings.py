"""Jetstream settings: one module, every value from the environment (see lib/env.py).

DEBUG defaults to off. With DEBUG on and no secrets configured, development secrets are
generated once under .data/ so `make run` works on a fresh machine; with DEBUG off a missing
JETSTREAM_SECRET_KEY or JETSTREAM_ENCRYPTION_KEYS stops the process with a clear message.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import secrets
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from lib import embedded
from lib.env import envbool, envint, envlist, envstr, local_url, parse_database_url, parse_encryption_keys

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = envbool("DEBUG", False)


def _dev_secrets() -> dict[str, str]:
    """Generated once per checkout for DEBUG runs; never used in production."""
    path = embedded.data_dir() / "dev-secrets.json"
    with embedded._lock("dev-secrets"):
        if path.exists():
            return json.loads(path.read_text())
        values = {
            "JETSTREAM_SECRET_KEY": secrets.token_urlsafe(50),
            "JETSTREAM_ENCRYPTION_KEYS": "dev1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        path.write_text(json.dumps(values))
        path.chmod(0o600)
        return values


def _required_secret(name: str) -> str:
    value = envstr(name)
    if value:
        return value
    if DEBUG:
        return _dev_secrets()[name]
    raise ImproperlyConfigured(
        f"{name} is not set. Production settings (DEBUG off) need it; "
        f"see README.md 'Configuration' (it may also be read from {name}_FILE)."
    )


SECRET_KEY = _required_secret("JETSTREAM_SECRET_KEY")
if not DEBUG and len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("JETSTREAM_SECRET_KEY must be at least 50 characters")

# Supplier keys: AES-256-GCM, "id:base64,id:base64"; the first key encrypts, all decrypt.
JETSTREAM_ENCRYPTION_KEYS = parse_encryption_keys(_required_secret("JETSTREAM_ENCRYPTION_KEYS"))

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list this server's host names when DEBUG is off")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
# Where bin/serve listens; without SITE_URL (the public address) the site is that address.
SERVE_HOST = envstr("JETSTREAM_HOST", "127.0.0.1")
SERVE_PORT = envint("JETSTREAM_PORT", 8000, minimum=1, maximum=65535)
SITE_URL = envstr("SITE_URL", local_url(SERVE_HOST, SERVE_PORT))

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.postgres",
    "channels",
    "rest_framework",
    "allauth",
    "allauth.account",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "import_export",
    "django_htmx",
    "django_filters",

    "apps.audit",
    "apps.accounts",
    "apps.providers",
    "apps.billing",
    "apps.proxy",
    "apps.moderation",
    "apps.config",
    "apps.invoicing",
    "apps.notifications",
    "apps.cabinets",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "apps.cabinets.signin.SessionLifetimeMiddleware",
    "apps.cabinets.signin.TotpRequiredMiddleware",
    "apps.audit.middleware.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, so it sees the response of a locked-out sign-in (django-axes).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "jetstream.urls"
ASGI_APPLICATION = "jetstream.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
            ],
        },
    },
]

# --- data stores: real servers only; embedded ones when none is configured ---------------
DATABASE_URL = envstr("DATABASE_URL") or embedded.ensure_postgres()
DATABASES = {"default": parse_database_url(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = envint("DATABASE_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = envstr("REDIS_URL") or embedded.ensure_redis()
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL must be a redis://, rediss:// or unix:// URL, got {REDIS_URL.split(':')[0]!r}")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "js:cache",
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # First: refuses every attempt for a locked-out email + address before a password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
SITE_ID = 1
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "/"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = envstr("ACCOUNT_EMAIL_VERIFICATION", "optional")
# Failed sign-ins are counted and locked out by django-axes (below), one mechanism with an admin
# page and a lockout page; allauth's own counter would answer first with a plain form error.
ACCOUNT_RATE_LIMITS = {"login_failed": False}
ACCOUNT_ALLOW_REGISTRATION = False
# Accounts are created by invitation (apps/accounts/services.py) or by the operator, never by sign-up;
# sign-in records the moment for re-authentication (apps/cabinets/signin.py).
ACCOUNT_ADAPTER = "apps.cabinets.signin.AccountAdapter"
ACCOUNT_SESSION_REMEMBER = False
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_LOGIN_ON_PASSWORD_RESET = False
ACCOUNT_PASSWORD_RESET_BY_CODE_ENABLED = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Jetstream] "

# --- sessions and sign-in security (docs/security.md "Cabinets") ----------------------------------
# A session ends after this much inactivity (each request extends it) and, whatever the activity,
# this long after sign-in; the cookie dies with the browser.
SESSION_COOKIE_AGE = envint("JETSTREAM_SESSION_IDLE_MINUTES", 30, minimum=1) * 60
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
JETSTREAM_SESSION_MAX_HOURS = envint("JETSTREAM_SESSION_MAX_HOURS", 12, minimum=1)
# Sensitive actions (a new token, payout details, approving a withdrawal) ask for the password or a
# TOTP code again when the last one is older than this (apps/cabinets/access.py:recent_auth_required).
JETSTREAM_REAUTH_MINUTES = envint("JETSTREAM_REAUTH_MINUTES", 10, minimum=1)
# How long an emailed invitation to a company or supplier stays valid.
JETSTREAM_INVITATION_TTL_HOURS = envint("JETSTREAM_INVITATION_TTL_HOURS", 72, minimum=1)
# django-axes: this many failed sign-ins for one email from one address lock that pair out for the
# cool-off (a 429 page); a success resets the count. The address is the TCP peer (as for allauth).
AXES_FAILURE_LIMIT = envint("JETSTREAM_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = envint("JETSTREAM_LOGIN_LOCKOUT_MINUTES", 15, minimum=1) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_CALLABLE = "apps.cabinets.signin.axes_username"
AXES_LOCKOUT_TEMPLATE = "account/lockout.html"
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address", "password"]
# django-otp: a TOTP code is good for its 30 s step ±1 step of clock drift; wrong codes slow the next
# try down exponentially (throttling); the issuer names the account in authenticator apps.
OTP_TOTP_ISSUER = envstr("JETSTREAM_TOTP_ISSUER", "Jetstream") or "Jetstream"
# Messages stay server-side, not in a signed-but-readable cookie. One-time secrets (a new token's)
# are never messages: the page that creates one shows it (apps/proxy/admin.py), so no store holds it.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
# django-otp: never show TOTP secrets or QR codes in the admin.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

# --- i18n: Russian and Moscow time by default, English ships too -------------------------
LANGUAGE_CODE = envstr("LANGUAGE_CODE", "ru")
LANGUAGES = [("ru", _("Russian")), ("en", _("English"))]
if LANGUAGE_CODE not in dict(LANGUAGES):
    raise ImproperlyConfigured(f"LANGUAGE_CODE must be one of {', '.join(dict(LANGUAGES))}, got {LANGUAGE_CODE!r}")
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = envstr("TIME_ZONE", "Europe/Moscow")
try:
    import zoneinfo

    zoneinfo.ZoneInfo(TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(f"TIME_ZONE {TIME_ZONE!r} is not a known IANA time zone") from None
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(BASE_DIR / ".data" / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage" if not DEBUG
                    else "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# In DEBUG, serve app static files straight from their finders (no collectstatic needed).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# --- security: strict unless DEBUG -------------------------------------------------------
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if envbool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Load balancers probe /healthz over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# --- Email (spend alerts, operator alerts, account mail) ----------------------------------------
# DEBUG prints mail to the console unless EMAIL_BACKEND says otherwise; production sends by SMTP.
EMAIL_BACKEND = envstr("EMAIL_BACKEND") or ("django.core.mail.backends.console.EmailBackend" if DEBUG
                                            else "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "localhost") or "localhost"
EMAIL_PORT = envint("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "") or ""
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "") or ""  # or EMAIL_HOST_PASSWORD_FILE
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "jetstream@localhost") or "jetstream@localhost"
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Celery (Redis broker) -----------------------------------------------------------------
def _celery_url(url: str) -> str:
    return "redis+socket://" + url[len("unix://"):] if url.startswith("unix://") else url


CELERY_BROKER_URL = _celery_url(envstr("CELERY_BROKER_URL") or REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    # Ledger holds are supplier withdrawals (apps/billing/withdrawals.py), which live for days: a
    # lapsed one released within 5 minutes is on time, and a 30 s sweep would only cost queries.
    "void-expired-holds": {"task": "apps.billing.tasks.void_expired_holds", "schedule": 300.0},
    # Audit events are sealed into their hash chain when their transaction commits; this catches
    # those of a process that died in between (apps/audit/services.py).
    "seal-audit-trail": {"task": "apps.audit.tasks.seal_audit_trail", "schedule": 60.0},
    # Compares the Redis spend counters with the ledger and repairs confirmed drift (apps/proxy/reconcile.py).
    "reconcile-spend-counters": {"task": "apps.proxy.tasks.reconcile_spend_counters", "schedule": 600.0},
    # The Bank of Russia publishes the next day's rates on working days in the afternoon, Moscow
    # time; four runs a day (hours in CELERY_TIMEZONE) catch them within hours and ride out an
    # outage. Beat also sends it once when it starts (apps/billing/tasks.py). Both tasks add nothing
    # when nothing changed.
    "fetch-fx-rates": {"task": "apps.billing.tasks.fetch_fx_rates", "schedule": crontab(minute=5, hour="4,10,16,22")},
    # List prices change rarely; a daily run is plenty (only when JETSTREAM_PRICES_SOURCE is set).
    "update-prices": {"task": "apps.providers.tasks.update_prices", "schedule": crontab(minute=20, hour=3)},
    # Closing acts for the month that has just ended in each company's time zone: hourly, so a
    # company far west of UTC gets its act within the hour its month ends; a run finds an act
    # already issued and leaves it (apps/invoicing/tasks.py).
    "generate-monthly-acts": {"task": "apps.invoicing.tasks.generate_monthly_acts", "schedule": 3600.0},
    # Approved supplier withdrawals are paid once a day, in one batch with a registry file.
    "pay-approved-withdrawals": {"task": "apps.billing.tasks.pay_approved_withdrawals",
                                 "schedule": crontab(hour=6, minute=0)},
    # Spend alerts (apps/notifications/alerts.py): a few aggregate queries; sends what is due.
    # Invitations past their expiry are marked expired (an expired link is refused before that too).
    "expire-invitations": {"task": "apps.accounts.tasks.expire_invitations", "schedule": 3600.0},
    "send-spend-alerts": {"task": "apps.notifications.tasks.send_spend_alerts", "schedule": 60.0},
    # Local nodes' health (apps/providers/node_health.py): a down node leaves routing on the next config poll.
    "check-local-nodes": {"task": "apps.providers.tasks.check_local_nodes",
                          "schedule": float(envint("JETSTREAM_NODE_HEALTH_SECONDS", 15, minimum=1))},
    # Limit resets (apps/proxy/rollover.py): windows roll at midnight in each company's zone (some
    # zones are 30 or 45 minutes off the hour) and a reached limit should block within a minute.
    "limit-resets": {"task": "apps.proxy.tasks.reset_limits", "schedule": 60.0},
    # Egress proxies' health (apps/proxy/egress_health.py): a state change reaches workers on their config poll.
    "check-egress-health": {"task": "apps.proxy.tasks.check_egress_health",
                            "schedule": float(envint("JETSTREAM_EGRESS_CHECK_SECONDS", 30, minimum=5))},
}

# --- Prices and FX (docs/billing.md "Prices and currencies") --------------------------------
# Where fetch_fx_rates reads rates: a URL (http/https) or a file path of a document in the Bank of
# Russia's XML_daily format. The default is the Bank of Russia itself; empty: no fetching (manual rates only).
JETSTREAM_FX_SOURCE = envstr("JETSTREAM_FX_SOURCE", "https://www.cbr.ru/scripts/XML_daily.asp") or ""
# A model priced in a currency whose newest rate was last stated for a moment older than this is
# refused (503 fx_rate_stale). 72 h covers a weekend (Saturday's rate holds until Tuesday); 0 turns
# the check off. Long holidays (the New Year) need more, or a manual rate.
JETSTREAM_FX_MAX_AGE_HOURS = envint("JETSTREAM_FX_MAX_AGE_HOURS", 72, minimum=0)
# Where update_prices reads the price document (docs/billing.md gives its format): a URL or a file
# path. Empty: the task does nothing (`manage.py load_prices` loads the shipped catalogue).
JETSTREAM_PRICES_SOURCE = envstr("JETSTREAM_PRICES_SOURCE", "") or ""
# Timeout (seconds) and size cap (bytes) for fetching either document.
JETSTREAM_FEED_TIMEOUT = envint("JETSTREAM_FEED_TIMEOUT", 30, minimum=1)
JETSTREAM_FEED_MAX_BYTES = envint("JETSTREAM_FEED_MAX_BYTES", 5_000_000, minimum=1_000)

# The sell coefficient of a company that sets none (Company.sell_coefficient empty): provider price
# × FX × this = the company's price (docs/billing.md "How a request's price is computed").
_default_sell = envstr("JETSTREAM_DEFAULT_SELL_COEFFICIENT", "1.0000") or "1.0000"
try:
    _default_sell_dec = Decimal(_default_sell)
except InvalidOperation:
    _default_sell_dec = Decimal(0)
if not (_default_sell_dec.is_finite() and 0 < _default_sell_dec < 10_000
        and _default_sell_dec == _default_sell_dec.quantize(Decimal("0.0001"))):
    raise ImproperlyConfigured(f"JETSTREAM_DEFAULT_SELL_COEFFICIENT must be a positive number with at most 4 decimal places "
                               f"(below 10000), got {_default_sell!r}")
JETSTREAM_DEFAULT_SELL_COEFFICIENT = str(_default_sell_dec.quantize(Decimal("0.0001")))

# --- REST framework ------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
}

# --- Jetstream proxy -----------------------------------------------------------------------
# Client identity. The servers pass the TCP peer through untouched (bin/serve runs uvicorn with
# --no-proxy-headers and Daphne without --proxy-headers): any client can write X-Forwarded-For, so
# only apps/proxy/pipeline/admission.py:ClientAddress reads a client-IP header, and only when it is
# configured here and the peer is one of the trusted proxies.
_trusted_proxy_header = envstr("JETSTREAM_TRUSTED_PROXY_HEADER", "") or ""
if _trusted_proxy_header and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", _trusted_proxy_header):
    raise ImproperlyConfigured(f"JETSTREAM_TRUSTED_PROXY_HEADER must be an HTTP header name, got {_trusted_proxy_header!r}")
_trusted_proxies = envlist("JETSTREAM_TRUSTED_PROXIES", ["127.0.0.1/32", "::1/128"])
for _network in _trusted_proxies:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"JETSTREAM_TRUSTED_PROXIES must list IP networks (CIDR), got {_network!r}") from None
# allauth (login rate limits, sessions) reads the client IP on its own: keep it on the peer address,
# whatever headers a client sends (0 trusted X-Forwarded-For hops, no client-IP header).
ALLAUTH_TRUSTED_PROXY_COUNT = 0
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = None

JETSTREAM: dict[str, Any] = {
    # Header carrying the client IP when a trusted load balancer is in front ("" = peer address).
    "TRUSTED_PROXY_HEADER": _trusted_proxy_header,
    "TRUSTED_PROXIES": _trusted_proxies,
    "MAX_BODY_BYTES": envint("JETSTREAM_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024),
    # Origins whose browser scripts may call /v1 (CORS): "https://app.example.com,…" or "*"; none = off.
    "CORS_ALLOWED_ORIGINS": envlist("JETSTREAM_CORS_ALLOWED_ORIGINS", []),
    # Also how long a /v1 reservation outlives its worker: a live request keeps its own alive.
    "HOLD_TTL_SECONDS": envint("JETSTREAM_HOLD_TTL_SECONDS", 900, minimum=1),
    # Days a supplier's accrual stays on hold (for disputes) before it can be withdrawn.
    "SUPPLIER_HOLD_DAYS": envint("JETSTREAM_SUPPLIER_HOLD_DAYS", 14, minimum=0),
    # Upstream time limits (apps/proxy/pipeline/upstream.py): connecting; a stream's response
    # headers and first body bytes; silence between a stream's reads; a non-streamed answer whole.
    "UPSTREAM_CONNECT_TIMEOUT_SECONDS": envint("JETSTREAM_UPSTREAM_CONNECT_TIMEOUT_SECONDS", 10, minimum=1),
    "UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS": envint("JETSTREAM_UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS", 120, minimum=1),
    "UPSTREAM_IDLE_TIMEOUT_SECONDS": envint("JETSTREAM_UPSTREAM_IDLE_TIMEOUT_SECONDS", 120, minimum=1),
    "UPSTREAM_TIMEOUT_SECONDS": envint("JETSTREAM_UPSTREAM_TIMEOUT_SECONDS", 600, minimum=1),
    # SSE comments to a streaming client after this much silence (0 = off): load balancers' idle
    # timeouts (often 60 s) must not cut a slow model's answer.
    "SSE_KEEPALIVE_SECONDS": envint("JETSTREAM_SSE_KEEPALIVE_SECONDS", 15, minimum=0),
    # How long a stream whose client left is still read for the upstream's usage before it is closed.
    "CLIENT_GONE_DRAIN_SECONDS": envint("JETSTREAM_CLIENT_GONE_DRAIN_SECONDS", 10, minimum=0),
    # Failover between providers (apps/proxy/pipeline/routing.py): a provider whose every key failed
    # is tried last for this long, then leads 10 %, then 50 % of its requests, a step each.
    "PROVIDER_DOWN_SECONDS": envint("JETSTREAM_PROVIDER_DOWN_SECONDS", 10, minimum=0),
    "PROVIDER_RAMP_STEP_SECONDS": envint("JETSTREAM_PROVIDER_RAMP_STEP_SECONDS", 30, minimum=0),
    # Supplier keys' circuit breaker (apps/proxy/health.py): this many failures in a row (5xx,
    # timeouts, connection errors) open it; after the cool-off one probe at a time is let through;
    # this many successful probes close it.
    "BREAKER_FAILURES": envint("JETSTREAM_BREAKER_FAILURES", 3, minimum=1),
    "BREAKER_COOLOFF_SECONDS": envint("JETSTREAM_BREAKER_COOLOFF_SECONDS", 30, minimum=1),
    "BREAKER_CLOSE_AFTER": envint("JETSTREAM_BREAKER_CLOSE_AFTER", 2, minimum=1),
    # Spend alerts (apps/notifications): the low-wallet threshold of companies that set none
    # (whole RUB in the environment, micro-RUB here); webhook time limit; sends before giving up.
    "LOW_WALLET_THRESHOLD": envint("JETSTREAM_LOW_WALLET_THRESHOLD_RUB", 1000, minimum=0) * 1_000_000,
    "ALERT_WEBHOOK_TIMEOUT_SECONDS": envint("JETSTREAM_ALERT_WEBHOOK_TIMEOUT_SECONDS", 5, minimum=1),
    "ALERT_MAX_ATTEMPTS": envint("JETSTREAM_ALERT_MAX_ATTEMPTS", 8, minimum=1),
    # Allow alert webhooks to private/loopback addresses (on-premises receivers; tests).
    "ALERT_WEBHOOK_ALLOW_PRIVATE": envbool("JETSTREAM_ALERT_WEBHOOK_ALLOW_PRIVATE", False),
    # Operators' alerts (reconciliation mismatches): emails, and a webhook signed like companies' ones.
    "OPS_ALERT_EMAILS": envlist("JETSTREAM_OPS_ALERT_EMAILS", []),
    "OPS_ALERT_WEBHOOK_URL": envstr("JETSTREAM_OPS_ALERT_WEBHOOK_URL", "") or "",
    "OPS_ALERT_WEBHOOK_SECRET": envstr("JETSTREAM_OPS_ALERT_WEBHOOK_SECRET", "") or "",
    # Egress proxies' health check (apps/proxy/egress_health.py): how long one probe may take.
    "EGRESS_PROBE_TIMEOUT_SECONDS": envint("JETSTREAM_EGRESS_PROBE_TIMEOUT_SECONDS", 10, minimum=1),
}

for _origin in JETSTREAM["CORS_ALLOWED_ORIGINS"]:
    if _origin != "*" and not re.fullmatch(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?", _origin):
        raise ImproperlyConfigured(f"JETSTREAM_CORS_ALLOWED_ORIGINS: {_origin!r} is not an origin like https://app.example.com (or *)")

# --- Documents: invoices and closing acts (apps/invoicing, docs/billing.md) -----------------------
# The platform's own requisites as its invoices and acts print them. With DEBUG on, unset values
# fall back to an obviously fictitious demo company; with DEBUG off, issuing a document without them
# is refused (RequisitesMissing) rather than printing an incomplete invoice.
_SELLER_FIELDS = {
    # key: (environment variable, digits it must have or None, DEBUG demo value)
    "name": ("JETSTREAM_SELLER_NAME", None, "ООО «Джетстрим Демо»"),
    "inn": ("JETSTREAM_SELLER_INN", (10, 12), "7700000000"),
    "kpp": ("JETSTREAM_SELLER_KPP", (9,), "770001001"),
    "address": ("JETSTREAM_SELLER_ADDRESS", None, "123112, г. Москва, Пресненская наб., д. 1"),
    "bank": ("JETSTREAM_SELLER_BANK", None, "АО «Демо Банк», г. Москва"),
    "bik": ("JETSTREAM_SELLER_BIK", (9,), "044500000"),
    "corr_account": ("JETSTREAM_SELLER_CORR_ACCOUNT", (20,), "30101810400000000000"),
    "account": ("JETSTREAM_SELLER_ACCOUNT", (20,), "40702810900000000001"),
    "director": ("JETSTREAM_SELLER_DIRECTOR", None, "Иванов И. И."),
    "accountant": ("JETSTREAM_SELLER_ACCOUNTANT", None, "Петрова П. П."),
}


def _seller_requisites() -> dict[str, str]:
    values: dict[str, str] = {}
    for key, (name, digits, demo) in _SELLER_FIELDS.items():
        value = (envstr(name, "") or "").strip() or (demo if DEBUG else "")
        if value and digits and not (value.isdigit() and len(value) in digits):
            raise ImproperlyConfigured(f"{name} must be {' or '.join(map(str, digits))} digits, got {value!r}")
        values[key] = value
    return values


def _vat_percent() -> Decimal:
    raw = envstr("JETSTREAM_VAT_PERCENT", "22") or "22"
    try:
        value = Decimal(raw.strip().replace(",", "."))
    except InvalidOperation:
        raise ImproperlyConfigured(f"JETSTREAM_VAT_PERCENT must be a number of percent like 22 or 10.5, got {raw!r}") from None
    if not value.is_finite() or not 0 <= value < 100 or value != value.quantize(Decimal("0.01")):
        raise ImproperlyConfigured(f"JETSTREAM_VAT_PERCENT must be 0 to 99.99 with at most 2 decimals, got {raw!r}")
    return value.quantize(Decimal("0.01"))


INVOICING: dict[str, Any] = {
    "SELLER": _seller_requisites(),
    # VAT included in every amount (the ledger holds what the company pays); 0 prints «Без НДС».
    "VAT_PERCENT": _vat_percent(),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "lib.logredact.RedactSecretsFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["redact"], "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    # WeasyPrint (invoices and acts) logs every rendering step at INFO; httpx logs every request's
    # full URL at INFO, and a webhook's or provider's URL may carry a secret.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "weasyprint": {"level": "WARNING"}, "fontTools": {"level": "WARNING"},
                "httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}

