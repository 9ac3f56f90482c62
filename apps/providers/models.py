from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlsplit

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.accounts.models import MAX_FALLBACKS
from lib import crypto
from lib.money import Currency
from lib.ssrf import UnsafeURLError, validate_outbound_url

# GCM associated data: a blob encrypted for one purpose does not decrypt as another.
_SUPPLIER_KEY_CONTEXT = "supplier-key"
_EGRESS_CONTEXT = "egress-proxy"


class ProviderKind(models.TextChoices):
    """The upstream's wire format: it picks the adapter. A kind with no adapter yet is answered 501."""

    OPENAI = "openai", "OpenAI"
    AZURE_OPENAI = "azure_openai", "Azure OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Google Gemini"
    MISTRAL = "mistral", "Mistral"
    DEEPSEEK = "deepseek", "DeepSeek"
    GIGACHAT = "gigachat", "GigaChat"
    YANDEXGPT = "yandexgpt", "YandexGPT"
    QWEN = "qwen", "Qwen"
    OPENAI_COMPATIBLE = "openai_compatible", _("OpenAI-compatible (vLLM, Ollama, …)")
    MOCK = "mock", _("Mock (answers locally)")


# Kinds whose providers process data in Russia (their ``country`` defaults to RU).
RUSSIAN_KINDS = frozenset({ProviderKind.GIGACHAT, ProviderKind.YANDEXGPT})


class Routing(models.TextChoices):
    """How a model's candidates (itself and its fallbacks) are ordered for each request."""

    ORDERED = "ordered", _("Ordered: the model, then its fallbacks in order")
    CHEAPEST = "cheapest", _("Cheapest first (this request's maximum cost)")
    FASTEST = "fastest", _("Lowest recent latency first")


class EgressHealth(models.TextChoices):
    """What the last health check through an egress proxy found (``apps.proxy.egress_health``)."""

    UNKNOWN = "unknown", _("Not checked yet")
    UP = "up", _("Up")
    DOWN = "down", _("Down")


class EgressProxy(models.Model):
    """An outbound proxy (HTTP, HTTPS or SOCKS5) through which upstream calls leave, in one country.

    A provider lists its egress proxies in order (``ProviderEgress``). The ``health_*`` fields are
    written by the periodic health check only (``apps.proxy.egress_health``):
    ``health_latency_ms`` the probe's round trip in milliseconds, ``health_error`` the last
    failure, scrubbed (no URL, credential or address)."""

    slug = models.SlugField(_("slug"), max_length=64, unique=True)
    country = models.CharField(_("country"), max_length=2, help_text=_("ISO 3166-1 alpha-2, e.g. NL"))
    url_encrypted = models.TextField(_("URL (encrypted)"), editable=False,
                                     help_text=_("May carry credentials, so it is stored like a supplier key."))
    url_display = models.CharField(_("URL"), max_length=300, editable=False)
    internal = models.BooleanField(_("internal address allowed"), default=False)
    is_active = models.BooleanField(_("active"), default=True)
    probe_url = models.URLField(_("probe URL"), max_length=500, blank=True,
                                help_text=_("What the health check requests through this proxy (any HTTP answer means "
                                            "up). Empty: the base URL of the first provider using it."))
    health = models.CharField(_("health"), max_length=8, choices=EgressHealth.choices, default=EgressHealth.UNKNOWN,
                              editable=False)
    health_checked_at = models.DateTimeField(_("last check"), null=True, blank=True, editable=False)
    health_latency_ms = models.PositiveIntegerField(_("latency, ms"), null=True, blank=True, editable=False)
    health_error = models.CharField(_("last error"), max_length=300, blank=True, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("egress proxy")
        verbose_name_plural = _("egress proxies")
        ordering = ["country", "slug"]

    def __str__(self) -> str:
        return f"{self.slug} ({self.country})"

    def set_url(self, url: str) -> None:
        """Validate ``url`` (http, https or socks5; credentials allowed; the host resolved — a DNS lookup —
        and a non-public address allowed only if ``internal``) and store it encrypted, with
        ``scheme://host:port`` for display. Raises ``ValidationError`` keyed ``url``.

        A name that does not resolve yet is accepted: the proxy's connect-time guard (``lib.ssrf``)
        judges every address it connects to anyway. ``socks5`` lets the proxy resolve the provider's
        name (as ``socks5h`` does elsewhere)."""
        try:
            validate_outbound_url(url, internal=self.internal, schemes=("http", "https", "socks5"), allow_credentials=True,
                                  unresolved_ok=True, subject="egress proxy")
        except UnsafeURLError as exc:
            raise ValidationError({"url": str(exc)}) from None
        parts = urlsplit(url)
        self.url_encrypted = crypto.encrypt(url, context=_EGRESS_CONTEXT)
        self.url_display = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}".rstrip(":")

    def reveal_url(self) -> str:
        """The decrypted URL, credentials included. Raises ``lib.crypto.SecretDecryptionError``."""
        return crypto.decrypt(self.url_encrypted, context=_EGRESS_CONTEXT)

    def clean(self) -> None:
        """Upper-case ``country``; raise ``ValidationError`` unless it is two letters, or when the probe
        URL is not one the gateway may call (``validate_outbound_url``; a DNS lookup)."""
        self.country = (self.country or "").upper()
        if len(self.country) != 2 or not self.country.isalpha():
            raise ValidationError({"country": _("Use a two-letter country code.")})
        if self.probe_url:
            try:
                validate_outbound_url(self.probe_url, internal=self.internal, unresolved_ok=True, subject="egress proxy")
            except UnsafeURLError as exc:
                raise ValidationError({"probe_url": str(exc)}) from None


# Kind-specific settings an operator writes as a provider's own fields in ``jetstream_apply`` YAML;
# they are kept in ``Provider.options`` under the same names (docs/providers.md lists them per kind).
# ``auth_url`` is a second address the gateway sends the supplier key to, so it is checked like
# ``base_url``.
OPTION_FIELDS = ("auth_url", "scope", "folder_id", "api_version", "ca_bundle")


class Provider(models.Model):
    """An upstream API of one ``kind``: base URL, options, its egress proxies in order (``ProviderEgress``;
    none: calls leave directly); its models and supplier keys hang off it."""

    slug = models.SlugField(_("slug"), max_length=64, unique=True)
    name = models.CharField(_("name"), max_length=200, blank=True)
    kind = models.CharField(_("kind"), max_length=32, choices=ProviderKind.choices)
    base_url = models.URLField(_("base URL"), max_length=500, blank=True,
                               help_text=_("Upstream API root, e.g. https://api.openai.com/v1. Empty for the mock kind."))
    internal = models.BooleanField(_("internal address allowed"), default=False,
                                   help_text=_("Allow loopback/private base URLs (local vLLM/Ollama nodes). Refused otherwise."))
    egresses = models.ManyToManyField(EgressProxy, through="ProviderEgress", related_name="providers", blank=True,
                                      verbose_name=_("egress proxies"))
    options = models.JSONField(_("options"), default=dict, blank=True,
                               help_text=_("Kind-specific options, e.g. for mock: latency_ms, chunks."))
    country = models.CharField(_("country"), max_length=2, blank=True,
                               help_text=_("Where the provider processes data (ISO 3166-1 alpha-2). RU lets companies "
                                           "with Russian data residency use it; GigaChat and YandexGPT default to RU."))
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("provider")
        verbose_name_plural = _("providers")
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name or self.slug

    def clean(self) -> None:
        """Raise ``ValidationError`` unless a provider (other than the mock) has a base URL — and, when
        its options name one, an ``auth_url`` — that passes ``validate_outbound_url`` (the host is
        resolved: a DNS lookup). Upper-cases ``country``; GigaChat and YandexGPT default to RU."""
        self.country = (self.country or "").upper()
        if not self.country and self.kind in RUSSIAN_KINDS:
            self.country = "RU"
        if self.country and (len(self.country) != 2 or not self.country.isalpha()):
            raise ValidationError({"country": _("Use a two-letter country code.")})
        if self.kind == ProviderKind.MOCK:
            return
        if not self.base_url:
            raise ValidationError({"base_url": _("A base URL is required for this provider kind.")})
        try:
            validate_outbound_url(self.base_url, internal=self.internal)
        except UnsafeURLError as exc:
            raise ValidationError({"base_url": str(exc)}) from None
        auth_url = (self.options or {}).get("auth_url") if isinstance(self.options, dict) else None
        if auth_url is not None:
            try:
                validate_outbound_url(str(auth_url), internal=self.internal)
            except UnsafeURLError as exc:
                raise ValidationError({"options": str(exc)}) from None


class ProviderEgress(models.Model):
    """One egress proxy of a provider: calls leave through the provider's healthy egress proxies in
    ``priority`` order (lower first), the next one tried when a connection through one fails."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="egress_links", verbose_name=_("provider"))
    egress = models.ForeignKey(EgressProxy, on_delete=models.PROTECT, related_name="provider_links",
                               verbose_name=_("egress proxy"))
    priority = models.IntegerField(_("priority"), default=0, help_text=_("Lower is tried first."))

    class Meta:
        verbose_name = _("provider egress")
        verbose_name_plural = _("provider egresses")
        ordering = ["provider__slug", "priority", "egress__slug"]
        constraints = [models.UniqueConstraint(fields=["provider", "egress"], name="provider_egress_unique")]

    def __str__(self) -> str:
        return f"{self.provider.slug} → {self.egress.slug}"


class Modality(models.TextChoices):
    """What a model does; the proxy refuses (422) an endpoint the modality cannot serve."""

    CHAT = "chat", _("Chat")
    COMPLETION = "completion", _("Text completion")
    EMBEDDING = "embedding", _("Embedding")
    IMAGE = "image", _("Image")
    AUDIO = "audio", _("Audio")


class Model(models.Model):
    """A model as the developer names it, mapped to one provider's upstream model id."""

    name = models.CharField(_("public name"), max_length=128, unique=True)
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models", verbose_name=_("provider"))
    upstream_model = models.CharField(_("upstream model id"), max_length=200)
    modality = models.CharField(_("modality"), max_length=16, choices=Modality.choices, default=Modality.CHAT)
    context_window = models.PositiveIntegerField(_("context window, tokens"), default=128_000)
    max_output_tokens = models.PositiveIntegerField(_("max output tokens"), default=16_384)
    fallbacks = ArrayField(models.CharField(max_length=128), default=list, blank=True, size=MAX_FALLBACKS,
                           verbose_name=_("fallback models"),
                           help_text=_("Public names of the models to try, in order, when this one fails before answering. "
                                       "A company's or token's chain overrides this one."))
    routing = models.CharField(_("routing"), max_length=16, choices=Routing.choices, default=Routing.ORDERED)
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("model")
        verbose_name_plural = _("models")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Raise ``ValidationError`` if ``max_output_tokens`` exceeds ``context_window`` (tokens) or the model is its own fallback."""
        if self.max_output_tokens and self.context_window and self.max_output_tokens > self.context_window:
            raise ValidationError({"max_output_tokens": _("Cannot exceed the context window.")})
        if self.name in (self.fallbacks or []):
            raise ValidationError({"fallbacks": _("A model cannot be its own fallback.")})


class PriceQuerySet(models.QuerySet):
    """``Price.objects``: price versions."""

    def current_for(self, model: Model, at=None) -> Price | None:
        """The version in force for ``model`` at ``at`` (default now): the latest ``valid_from`` not after it, or None."""
        return self.filter(model=model, valid_from__lte=at or timezone.now()).order_by("-valid_from").first()


class Price(models.Model):
    """A price version. Never edited: a new price is a new row with a later ``valid_from``.

    Amounts are integer micro-units of ``currency`` per 1M tokens (0.15 USD → 150_000).
    """

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="prices", verbose_name=_("model"))
    currency = models.CharField(_("currency"), max_length=3, choices=Currency.choices, default=Currency.RUB)
    input_per_1m = models.BigIntegerField(_("input per 1M tokens, micro-units"), validators=[MinValueValidator(0)])
    output_per_1m = models.BigIntegerField(_("output per 1M tokens, micro-units"), validators=[MinValueValidator(0)])
    cached_input_per_1m = models.BigIntegerField(_("cached input per 1M tokens, micro-units"), validators=[MinValueValidator(0)],
                                                 help_text=_("Defaults to the input price."))
    # Recorded from the catalogue and price feeds; the proxy charges tokens only (input, cached, output).
    cache_write_per_1m = models.BigIntegerField(_("cache write per 1M tokens, micro-units"), null=True, blank=True,
                                                validators=[MinValueValidator(0)],
                                                help_text=_("Where the provider charges prompt-cache writes (Anthropic)."))
    per_request = models.BigIntegerField(_("per request, micro-units"), null=True, blank=True, validators=[MinValueValidator(0)])
    per_image = models.BigIntegerField(_("per image, micro-units"), null=True, blank=True, validators=[MinValueValidator(0)])
    source = models.CharField(_("source"), max_length=300, blank=True,
                              help_text=_("Where the price comes from: a pricing page URL, a price feed, or empty (entered by hand)."))
    valid_from = models.DateTimeField(_("valid from"), default=timezone.now)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = PriceQuerySet.as_manager()

    class Meta:
        verbose_name = _("price")
        verbose_name_plural = _("prices")
        ordering = ["model__name", "-valid_from"]
        get_latest_by = "valid_from"
        constraints = [
            models.UniqueConstraint(fields=["model", "valid_from"], name="price_version_unique"),
            models.CheckConstraint(condition=models.Q(input_per_1m__gte=0, output_per_1m__gte=0, cached_input_per_1m__gte=0),
                                   name="price_non_negative"),
            models.CheckConstraint(condition=(models.Q(cache_write_per_1m__isnull=True) | models.Q(cache_write_per_1m__gte=0))
                                   & (models.Q(per_request__isnull=True) | models.Q(per_request__gte=0))
                                   & (models.Q(per_image__isnull=True) | models.Q(per_image__gte=0)),
                                   name="price_extras_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.model} @ {timezone.localtime(self.valid_from):%Y-%m-%d %H:%M}"

    def save(self, *args, **kwargs):
        """Insert only: a saved price raises ``ValidationError`` (versions are never edited). An empty
        ``cached_input_per_1m`` takes the input price."""
        if self.pk is not None:
            raise ValidationError(_("Prices are versioned: add a new price instead of editing one."))
        if self.cached_input_per_1m is None:
            self.cached_input_per_1m = self.input_per_1m
        super().save(*args, **kwargs)


class SupplierKeyStatus(models.TextChoices):
    """Only an ACTIVE key (of an active supplier) is routed; the others say why a key is out."""

    ACTIVE = "active", _("Active")
    DISABLED = "disabled", _("Disabled")
    COOLDOWN = "cooldown", _("Cooling down")
    EXHAUSTED = "exhausted", _("Exhausted (quota/balance)")
    INVALID = "invalid", _("Invalid (rejected by the provider)")


class SupplierKey(models.Model):
    """An upstream API key bought from a supplier. The secret is stored AES-256-GCM encrypted."""

    supplier = models.ForeignKey("accounts.Supplier", on_delete=models.PROTECT, related_name="keys", verbose_name=_("supplier"))
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="keys", verbose_name=_("provider"))
    name = models.CharField(_("name"), max_length=100)
    secret_encrypted = models.TextField(_("secret (encrypted)"), editable=False)
    secret_key_id = models.CharField(_("encryption key id"), max_length=32, editable=False, db_index=True)
    secret_last4 = models.CharField(_("last 4 characters"), max_length=4, editable=False)
    weight = models.PositiveIntegerField(_("weight"), default=1, validators=[MinValueValidator(1)])
    priority = models.IntegerField(_("priority"), default=0, help_text=_("Lower is tried first; weights balance within a priority."))
    status = models.CharField(_("status"), max_length=16, choices=SupplierKeyStatus.choices, default=SupplierKeyStatus.ACTIVE)
    status_reason = models.CharField(_("status reason"), max_length=300, blank=True)
    buy_coefficient = models.DecimalField(_("buy coefficient"), max_digits=8, decimal_places=4, default=Decimal("1.0000"),
                                          validators=[MinValueValidator(Decimal("0.0001"))],
                                          help_text=_("Provider price × FX × this coefficient = what the platform owes the supplier."))
    monthly_cap = models.BigIntegerField(
        _("monthly spend cap, micro-RUB"), null=True, blank=True, validators=[MinValueValidator(1)],
        help_text=_("The most the platform may spend through this key in a calendar month (at the buy price); "
                    "the balancer stops using the key once its month's spend reaches it. Empty: no cap."))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("supplier key")
        verbose_name_plural = _("supplier keys")
        ordering = ["provider__slug", "priority", "name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="supplier_key_name_unique_per_provider"),
            models.CheckConstraint(condition=models.Q(monthly_cap__isnull=True) | models.Q(monthly_cap__gt=0),
                                   name="supplier_key_cap_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name} (…{self.secret_last4})"

    def set_secret(self, secret: str) -> None:
        """Store ``secret`` (stripped) encrypted under the current key, with that key's id and the last 4
        characters. Raises ``ValidationError`` keyed ``secret`` for fewer than 8 characters."""
        secret = (secret or "").strip()
        if len(secret) < 8:
            raise ValidationError({"secret": _("The key looks too short.")})
        self.secret_encrypted = crypto.encrypt(secret, context=_SUPPLIER_KEY_CONTEXT)
        self.secret_key_id = crypto.key_id_of(self.secret_encrypted)
        self.secret_last4 = secret[-4:]

    def reveal_secret(self) -> str:
        """Only the proxy (and re-encryption) may call this."""
        return crypto.decrypt(self.secret_encrypted, context=_SUPPLIER_KEY_CONTEXT)

    @property
    def masked_secret(self) -> str:
        """The secret's last 4 characters after an ellipsis ("…1234"), for display."""
        return f"…{self.secret_last4}"


# --- Local nodes (issue 8, item 7) -------------------------------------------------------------

_NODE_SECRET_CONTEXT = "local-node-key"


class NodeHealth(models.TextChoices):
    """A local node's state as the health task (``apps/providers/tasks.py``) last saw it. Only UNKNOWN
    (not checked yet) and UP nodes are routed; DOWN nodes are skipped by every proxy worker."""

    UNKNOWN = "unknown", _("Not checked yet")
    UP = "up", _("Up")
    DOWN = "down", _("Down")


class NodeCostMode(models.TextChoices):
    """How a node's hardware cost is given: per 1M tokens, or per GPU-hour with a throughput."""

    PER_TOKENS = "per_1m", _("Per 1M tokens (input / output)")
    GPU_HOUR = "gpu_hour", _("Per GPU-hour at an expected throughput")


class LocalNode(models.Model):
    """One server (vLLM, Ollama, llama.cpp, TGI…) behind an ``openai_compatible`` provider.

    A provider with active nodes sends its models' calls to its nodes (balanced by least outstanding
    requests, ``apps/proxy/nodes.py``) instead of its own base URL. ``base_url`` is the node's API
    root (``http://10.0.0.5:8000/v1``); the optional API key is stored AES-256-GCM encrypted like a
    supplier key. ``supplier``: the company whose hardware it is (its buy cost accrues to that
    supplier's payable); none = the platform's own hardware (docs/providers.md, "Local nodes").

    Cost, integer micro-RUB: ``input_per_1m`` / ``output_per_1m`` per 1M tokens, or ``gpu_hour`` per
    GPU-hour with ``tokens_per_hour`` (input and output alike); see ``cost_fraction``.
    The ``health_*`` fields are written by the health task only."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="nodes", verbose_name=_("provider"))
    name = models.CharField(_("name"), max_length=100)
    base_url = models.URLField(_("base URL"), max_length=500, help_text=_("The node's API root, e.g. http://10.0.0.5:8000/v1"))
    internal = models.BooleanField(_("internal address allowed"), default=False,
                                   help_text=_("Allow a loopback/private address. Refused otherwise."))
    secret_encrypted = models.TextField(_("API key (encrypted)"), editable=False, blank=True)
    secret_last4 = models.CharField(_("last 4 characters"), max_length=4, editable=False, blank=True)
    weight = models.PositiveIntegerField(_("weight"), default=1, validators=[MinValueValidator(1)],
                                         help_text=_("Capacity relative to the provider's other nodes: outstanding "
                                                     "requests are compared per unit of weight."))
    supplier = models.ForeignKey("accounts.Supplier", on_delete=models.PROTECT, null=True, blank=True, related_name="nodes",
                                 verbose_name=_("supplier"), help_text=_("Empty: the platform's own hardware."))
    cost_mode = models.CharField(_("cost given"), max_length=16, choices=NodeCostMode.choices, default=NodeCostMode.PER_TOKENS)
    input_per_1m = models.BigIntegerField(_("input per 1M tokens, micro-RUB"), default=0, validators=[MinValueValidator(0)])
    output_per_1m = models.BigIntegerField(_("output per 1M tokens, micro-RUB"), default=0, validators=[MinValueValidator(0)])
    gpu_hour = models.BigIntegerField(_("GPU-hour, micro-RUB"), default=0, validators=[MinValueValidator(0)])
    tokens_per_hour = models.PositiveBigIntegerField(_("throughput, tokens per hour"), default=0)
    health_path = models.CharField(_("health check path"), max_length=200, default="/health",
                                   help_text=_("GET on the node's origin, e.g. /health (vLLM, TGI) or /v1/models (Ollama, llama.cpp)."))
    is_active = models.BooleanField(_("active"), default=True)
    health = models.CharField(_("health"), max_length=16, choices=NodeHealth.choices, default=NodeHealth.UNKNOWN, editable=False)
    health_latency_ms = models.PositiveIntegerField(_("check latency, ms"), null=True, blank=True, editable=False)
    health_error = models.CharField(_("last error"), max_length=300, blank=True, editable=False)
    health_checked_at = models.DateTimeField(_("last checked"), null=True, blank=True, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("local node")
        verbose_name_plural = _("local nodes")
        ordering = ["provider__slug", "name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="local_node_name_unique_per_provider"),
            models.CheckConstraint(condition=models.Q(input_per_1m__gte=0, output_per_1m__gte=0, gpu_hour__gte=0),
                                   name="local_node_cost_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.provider.slug}/{self.name}" if self.provider_id else self.name

    def clean(self) -> None:
        """Raise ``ValidationError`` unless the provider is ``openai_compatible``, ``base_url`` passes
        ``validate_outbound_url`` (a DNS lookup; a private address only if ``internal``), ``health_path``
        starts with "/", and a GPU-hour cost names its throughput."""
        if self.provider_id and self.provider.kind != ProviderKind.OPENAI_COMPATIBLE:
            raise ValidationError({"provider": _("Only OpenAI-compatible providers have local nodes.")})
        try:
            validate_outbound_url(self.base_url, internal=self.internal, subject="node")
        except UnsafeURLError as exc:
            raise ValidationError({"base_url": str(exc)}) from None
        if not (self.health_path or "").startswith("/"):
            raise ValidationError({"health_path": _("Start the path with /.")})
        if self.cost_mode == NodeCostMode.GPU_HOUR and not self.tokens_per_hour:
            raise ValidationError({"tokens_per_hour": _("A GPU-hour cost needs the node's throughput.")})

    def set_secret(self, secret: str) -> None:
        """Store the node's API key (stripped) encrypted, or none for "" (a node without auth)."""
        secret = (secret or "").strip()
        self.secret_encrypted = crypto.encrypt(secret, context=_NODE_SECRET_CONTEXT) if secret else ""
        self.secret_last4 = secret[-4:] if secret else ""

    def reveal_secret(self) -> str:
        """The decrypted API key ("" for none); only the proxy and the health task call this.
        Raises ``lib.crypto.SecretDecryptionError``."""
        return crypto.decrypt(self.secret_encrypted, context=_NODE_SECRET_CONTEXT) if self.secret_encrypted else ""

    def cost_fraction(self) -> tuple[int, int, int]:
        """The node's cost as (input numerator, output numerator, denominator): a request of ``i``
        input and ``o`` output tokens costs ``ceil((i × input + o × output) / denominator)`` micro-RUB.
        Per 1M tokens: (input_per_1m, output_per_1m, 1_000_000); per GPU-hour: (gpu_hour, gpu_hour,
        tokens_per_hour) — the GPU-hour shared by the tokens it serves in that hour."""
        if self.cost_mode == NodeCostMode.GPU_HOUR and self.tokens_per_hour:
            return self.gpu_hour, self.gpu_hour, self.tokens_per_hour
        return self.input_per_1m, self.output_per_1m, 1_000_000

    @property
    def rate_per_1m(self) -> tuple[int, int]:
        """(input, output) micro-RUB per 1M tokens, rounded up — for display; billing uses ``cost_fraction``."""
        num_in, num_out, denom = self.cost_fraction()
        return -(-num_in * 1_000_000 // denom), -(-num_out * 1_000_000 // denom)
