"""Named entities: people (``PERSON``), places and addresses (``ADDRESS``) and organisations
(``ORGANIZATION``).

Russian: natasha's news NER model (slovnet, a CNN + CRF over navec embeddings; both ship inside the
``natasha`` package, nothing is downloaded). The text is tokenised here (a regular expression; razdel's
tokenizer costs more than the model), cut into sentences of at most ``CHUNK_TOKENS`` tokens, and only
sentences with a capital letter are tagged: the CNN over those sentences laid end to end (no padding),
the CRF's Viterbi per sentence in one batch — its loop then runs as many steps as the longest sentence
has tokens, not the whole text. A one-word person that pymorphy3's dictionary
knows only as another part of speech (an imperative opening a prompt: "Составь", "Переведи") is dropped.

English names: the news model is Russian-only, so Latin-script names are found with the first-name list
of ``gender-guesser`` (Jörg Michael's name dictionary, ~48 000 names with their frequency per country, in
the package): a first name common in Britain, Ireland or the USA followed by a capitalised surname, or a
title (Mr, Mrs, Ms, Dr, Prof) and a capitalised surname.

The model loads once per process (about 1.5 s, ~30 MB); ``preload()`` does it ahead of the first request.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterator
from typing import Any

import numpy as np
from slovnet.shape import word_shape

from apps.moderation.findings import Category, Detection

NAME = "ner"
CHUNK_TOKENS = 48
GROUP_TOKENS = 2048  # tokens per model call (~10 KB of text)

_TOKEN = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]")
_SENTENCE_END = frozenset({".", "!", "?", "…", ";"})
_TYPES = {"PER": Category.PERSON, "LOC": Category.ADDRESS, "ORG": Category.ORGANIZATION}

_lock = threading.Lock()
_model: Any = None


def _load() -> Any:
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                from natasha import NewsEmbedding, NewsNERTagger  # noqa: PLC0415 (heavy: loaded on first use)
                from threadpoolctl import threadpool_limits  # noqa: PLC0415

                # One BLAS thread: a request's matrices are small, and on a busy server BLAS threads only
                # fight the other workers for the cores (3× slower under load, measured).
                threadpool_limits(limits=1, user_api="blas")
                tagger = NewsNERTagger(NewsEmbedding())
                tagger.infer.encoder.batch_size = 256
                _model = tagger.infer
    return _model


def preload() -> None:
    """Load the Russian NER model and the English name list now (a worker's start-up)."""
    _load()
    _morph()
    english_first_names()


class RussianNerDetector:
    """People, places and organisations in Russian text (natasha); see the module docstring."""

    name = NAME

    def detect(self, text: str) -> Iterator[Detection]:
        if not text or not any("А" <= ch <= "Я" or ch == "Ё" for ch in text):
            return
        # Symbols (emoji, arrows, currency signs) are left out: the news model never saw them, and one
        # between two words breaks a name in two or joins a word to it.
        tokens = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)
                  if m.group()[0].isalnum() or m.group()[0] == "_" or unicodedata.category(m.group()[0])[0] == "P"]
        chunks = [chunk for chunk in _sentences(tokens) if any(_capitalised_cyrillic(t[2]) for t in chunk)]
        if not chunks:
            return
        infer = _load()
        tags_vocab = infer.decoder.tags_vocab
        for group in _groups(chunks):
            for chunk, path in zip(group, _tag(infer, group), strict=True):
                tags = [tags_vocab.decode(int(tag)) for tag in path[:len(chunk)]]
                for detection in _spans(text, chunk, tags):
                    if detection.category != Category.PERSON or _may_be_name(detection.value):
                        yield detection


def _groups(chunks: list[list[tuple[int, int, str]]]) -> Iterator[list[list[tuple[int, int, str]]]]:
    """The sentences in runs of at most ``GROUP_TOKENS`` tokens (one model call each)."""
    group: list[list[tuple[int, int, str]]] = []
    size = 0
    for chunk in chunks:
        if group and size + len(chunk) > GROUP_TOKENS:
            yield group
            group, size = [], 0
        group.append(chunk)
        size += len(chunk)
    if group:
        yield group


def _tag(infer: Any, chunks: list[list[tuple[int, int, str]]]) -> list[Any]:
    """The CRF's tag ids for each sentence of ``chunks``. The CNN runs once over the sentences laid end to
    end — as natasha runs it over a whole text, and with no padding: padding every sentence to the longest
    doubled the work — and the Viterbi decoding per sentence, in one padded batch (its steps are the
    longest sentence's tokens, each a small numpy operation)."""
    encoder = infer.encoder
    words: list[int] = []
    shapes: list[int] = []
    for chunk in chunks:
        word_ids, shape_ids = _encode(encoder, [t[2] for t in chunk])
        words.extend(word_ids)
        shapes.extend(shape_ids)
    word_id, shape_id = np.array([words]), np.array([shapes])
    emissions = infer.model(word_id, shape_id, np.zeros_like(word_id, dtype=bool))[0]
    longest = max(len(chunk) for chunk in chunks)
    batch = np.zeros((len(chunks), longest, emissions.shape[-1]), dtype=emissions.dtype)
    mask = np.zeros((len(chunks), longest), dtype=bool)
    at = 0
    for index, chunk in enumerate(chunks):
        batch[index, :len(chunk)] = emissions[at:at + len(chunk)]
        mask[index, :len(chunk)] = True
        at += len(chunk)
    return list(infer.model.head.crf.decode(batch, mask))


_word_ids: dict[str, tuple[int, int]] = {}
_WORD_CACHE_SIZE = 200_000


def _encode(encoder: Any, words: list[str]) -> tuple[list[int], list[int]]:
    """The model's word and shape ids of ``words`` (cached per word: the shape is a regex and a few
    string tests, the same for every "и" and "в")."""
    word_ids, shape_ids = [], []
    for word in words:
        ids = _word_ids.get(word)
        if ids is None:
            ids = (encoder.words_vocab.encode(word.lower()), encoder.shapes_vocab.encode(word_shape(word)))
            if len(_word_ids) < _WORD_CACHE_SIZE:
                _word_ids[word] = ids
        word_ids.append(ids[0])
        shape_ids.append(ids[1])
    return word_ids, shape_ids


_NAME_GRAMMEMES = frozenset({"Name", "Surn", "Patr"})
_morph_analyzer: Any = None


def _morph() -> Any:
    global _morph_analyzer
    if _morph_analyzer is None:
        with _lock:
            if _morph_analyzer is None:
                import pymorphy3  # noqa: PLC0415 (heavy: loaded on first use)

                _morph_analyzer = pymorphy3.MorphAnalyzer(lang="ru")
    return _morph_analyzer


def _may_be_name(value: str) -> bool:
    """Whether a one-word ``PER`` span can be a name: some reading of it in pymorphy3's dictionary is a first
    name, surname or patronymic. The news model tags a capitalised imperative that opens a prompt
    ("Составь", "Переведи") as a person; a word no reading of which is a name is dropped. Spans of two or
    more words are kept as they are."""
    if " " in value.strip() or not value[:1].isalpha() or not ("А" <= value[0] <= "Я" or value[0] == "Ё"):
        return True
    return any(_NAME_GRAMMEMES & parse.tag.grammemes for parse in _morph().parse(value))


def _capitalised_cyrillic(word: str) -> bool:
    first = word[0]
    return "А" <= first <= "Я" or first == "Ё"


def _sentences(tokens: list[tuple[int, int, str]]) -> Iterator[list[tuple[int, int, str]]]:
    chunk: list[tuple[int, int, str]] = []
    for token in tokens:
        chunk.append(token)
        if token[2] in _SENTENCE_END or len(chunk) >= CHUNK_TOKENS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _spans(text: str, chunk: list[tuple[int, int, str]], tags: list[str]) -> Iterator[Detection]:
    kind: str | None = None
    start = end = 0
    for (token_start, token_end, _), tag in zip(chunk, tags, strict=False):
        prefix, _, tag_type = tag.partition("-")
        if prefix == "I" and tag_type == kind:
            end = token_end
            continue
        if kind is not None:
            yield Detection(_TYPES[kind], start, end, text[start:end], NAME)
            kind = None
        if prefix in ("B", "I") and tag_type in _TYPES:
            kind, start, end = tag_type, token_start, token_end
    if kind is not None:
        yield Detection(_TYPES[kind], start, end, text[start:end], NAME)


# --- English names ---------------------------------------------------------------------------

# Capitalised English words that are also first names in the list: never a name on their own here.
_ENGLISH_WORDS = frozenset("""
the a an and or but if then this that these those there here when where what which who why how all any each
will may june april august grant bill mark rose art hope joy faith page hunter chase bob sue pat rich frank
norman miles dean rob sky summer autumn winter spring king earl duke prince major chance angel dawn eve
christian guy jack jay jean ray rock stone victor victoria don dick harry tom gene jordan paris florence
sydney dallas austin lincoln washington china india georgia virginia carolina eu us uk dear hi hello thanks
thank please best regards new old north south east west monday tuesday wednesday thursday friday saturday
sunday january february march july september october november december
""".split())
_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Madam|Mx)\.?\s+([A-Z][a-z]+(?:[-'][A-Z][a-z]+)?)")
_NAME_PAIR = re.compile(r"\b([A-Z][a-z]{1,20})\s+(?:[A-Z]\.\s+)?([A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)?)\b")

_english_names: frozenset[str] | None = None


def english_first_names() -> frozenset[str]:
    """First names (lower case) common in Britain, Ireland or the USA (frequency ≥ 3 of 13 in
    gender-guesser's dictionary), minus ``_ENGLISH_WORDS``. Loaded once (~0.7 s)."""
    global _english_names
    if _english_names is None:
        with _lock:
            if _english_names is None:
                from gender_guesser.detector import Detector  # noqa: PLC0415 (heavy: loaded on first use)

                names = set()
                for name, genders in Detector(case_sensitive=False).names.items():
                    for frequencies in genders.values():
                        english = [frequencies[i] for i in range(3) if i < len(frequencies) and frequencies[i].strip()]
                        if any(int(f, 16) >= 3 for f in english):
                            names.add(name)
                _english_names = frozenset(names - _ENGLISH_WORDS)
    return _english_names


class EnglishNameDetector:
    """Latin-script person names: a common first name and a capitalised surname, or a title and a
    surname (see the module docstring)."""

    name = NAME

    def detect(self, text: str) -> Iterator[Detection]:
        if not text or not any("A" <= ch <= "Z" for ch in text):
            return
        names = english_first_names()
        taken: list[tuple[int, int]] = []
        for match in _TITLE.finditer(text):
            taken.append((match.start(), match.end()))
            yield Detection(Category.PERSON, match.start(), match.end(), match.group(), NAME)
        for match in _NAME_PAIR.finditer(text):
            first, last = match.group(1), match.group(2)
            if first.lower() not in names or last.lower() in _ENGLISH_WORDS:
                continue
            if any(not (match.end() <= s or match.start() >= e) for s, e in taken):
                continue
            yield Detection(Category.PERSON, match.start(), match.end(), match.group(), NAME)


class NerDetector:
    """Russian entities (natasha) and English names together: the NER layer."""

    name = NAME

    def __init__(self) -> None:
        self._russian = RussianNerDetector()
        self._english = EnglishNameDetector()

    def detect(self, text: str) -> Iterator[Detection]:
        yield from self._russian.detect(text)
        yield from self._english.detect(text)
