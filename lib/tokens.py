"""Deprecated name of lib/tokenizer.py, kept only until apps/proxy/app.py and the mock adapter import lib.tokenizer."""

from lib.tokenizer import *  # noqa: F403
from lib.tokenizer import O200K, count_embedding_input, preload  # noqa: F401 - the names apps/proxy/app.py uses
