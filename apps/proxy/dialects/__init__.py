"""Inbound dialects: what a client speaks to ``/v1``, parsed into the canonical request
(``apps.providers.adapters.base.CanonicalRequest``) and rendered back from canonical answers.

``openai`` serves chat completions, completions and embeddings today; Anthropic Messages
(``/v1/messages``) and OpenAI Responses (``/v1/responses``) come as sibling modules with the same
functions, chosen by the endpoint table in ``apps/proxy/pipeline/app.py``. Outbound wire formats are
the providers' adapters, not these.
"""
