"""Provider adapters, one per folder (``adapters/<kind>/``): how each provider kind is spoken to.

The ``mock`` adapter answers in-process in OpenAI's wire format, so the proxy's OpenAI response
and stream handling serves it unchanged.
"""
