"""Inbound dialects: what a client speaks to ``/v1``, parsed into the canonical request
(``apps.providers.adapters.base.CanonicalRequest``) and rendered back from canonical answers.

``openai`` serves chat completions, completions and embeddings (the canonical form itself: bytes
pass through); ``anthropic`` serves Anthropic Messages (``/v1/messages``); ``responses`` serves
OpenAI Responses (``/v1/responses``). Each is a ``base.Dialect``, chosen by the endpoint table in
``apps/proxy/pipeline/app.py`` and carried on the call; ``canonical`` reads canonical answers and
chunks for the dialects that render their own shapes. Outbound wire formats are the providers'
adapters, not these.
"""
