"""The ``/v1`` pipeline: one module per stage over one per-request context (``context.Call``).

    admission (authenticate, read + validate, police) → [moderation] → idempotency → spend (estimate,
    reserve) → upstream (route + call, failover) → relay (the adapter's decoder) → spend (settle + meter)

``app.ProxyApp`` is the ASGI entry; ``info`` serves ``/v1/models`` and ``/v1/key``.
"""
