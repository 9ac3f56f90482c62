"""Prompt injection heuristics, Russian and English: instruction override ("ignore all previous
instructions", «игнорируй предыдущие инструкции»), role-play jailbreaks (DAN, "developer mode", «ты больше не
ассистент»), system prompt extraction, delimiter injection (a chat template's role markers —
``<|im_start|>system``, ``[INST]``, ``<<SYS>>``, ``### System:`` — written into user text) and
base64-encoded instructions (a base64 run that decodes to text the other rules flag).

Each match is one ``PROMPT_INJECTION`` detection spanning the phrase. The phrases follow the attack
families catalogued in OWASP's LLM01 (Prompt Injection) and the public jailbreak corpora; the LLM
moderator catches what no fixed phrase can.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from apps.moderation.detectors.secrets import decode_base64_text
from apps.moderation.findings import Category, Detection

NAME = "injection"

_EN = [
    # instruction override
    r"\b(?:ignore|disregard|forget|skip|override|bypass|drop)\s+(?:all\s+|any\s+|every\s+|the\s+|your\s+|my\s+|of\s+)*"
    r"(?:previous|prior|above|earlier|preceding|former|original|initial|system|safety|existing)\s+"
    r"(?:instructions?|prompts?|rules|directions|guidelines|messages?|context|constraints|directives|orders|policies)",
    r"\b(?:ignore|disregard|forget)\s+(?:everything|all)\s+(?:you\s+(?:were|have\s+been)\s+told|(?:written\s+)?above|before(?:\s+this)?)",
    r"\bnew\s+(?:system\s+)?instructions?\s*:",
    r"\byour\s+(?:new\s+)?(?:instructions|rules)\s+are\s+(?:now\s+)?(?:as\s+follows|:)",
    r"\bfrom\s+now\s+on,?\s+you\s+(?:will|must|shall|are)\b(?!\s+(?:help|assist|answer\s+in))",
    # role-play jailbreaks
    r"\b(?:you\s+are|you're|act\s+as|pretend\s+(?:to\s+be|you\s+are)|roleplay\s+as|behave\s+like)\s+(?:now\s+)?(?:a\s+|an\s+)?"
    r"(?:DAN|jailbroken|unrestricted|unfiltered|uncensored|evil|rogue)\b",
    r"\bdo\s+anything\s+now\b",
    r"\b(?:developer|god|debug|jailbreak|unrestricted)\s+mode\s+(?:enabled|activated|on)\b|\benable\s+(?:developer|god|jailbreak)\s+mode\b",
    r"\bpretend\s+(?:that\s+)?you\s+(?:have|are\s+under)\s+no\s+(?:restrictions|rules|limits|filters|guidelines|content\s+policy)",
    r"\bwithout\s+(?:any\s+)?(?:ethical|moral|safety|content)\s+(?:restrictions|guidelines|filters|limitations)\b",
    r"\byou\s+(?:are\s+no\s+longer|aren't)\s+(?:an?\s+)?(?:AI|assistant|language\s+model|ChatGPT|Claude)\b",
    # system prompt extraction
    r"\b(?:reveal|print|show|output|repeat|leak|display|tell\s+me)\s+(?:me\s+)?(?:your|the)\s+(?:full\s+|hidden\s+|initial\s+|original\s+)?"
    r"(?:system\s+prompt|system\s+message|instructions|initial\s+prompt|hidden\s+prompt)",
]
_RU = [
    r"(?:игнорируй|игнорировать|проигнорируй|забудь|забыть|отбрось|отмени|не\s+обращай\s+внимания\s+на|не\s+следуй)\s+"
    r"(?:все\s+|всё\s+|любые\s+|свои\s+|мои\s+|эти\s+)*"
    r"(?:предыдущ\w+|прошл\w+|прежн\w+|вышеуказанн\w+|вышеизложенн\w+|ранее\s+данн\w+|изначальн\w+|системн\w+|исходн\w+)?\s*"
    r"(?:инструкци\w+|указани\w+|правил\w*|ограничени\w+|промпт\w*|установк\w+|директив\w+|запрет\w*)",
    r"(?:забудь|игнорируй)\s+(?:всё|все),?\s+что\s+(?:тебе\s+)?(?:говорили|сказали|было\s+сказано|написано\s+выше)",
    r"новые\s+(?:системные\s+)?инструкции\s*:",
    r"(?:отныне|с\s+этого\s+момента|теперь)\s+ты\s+(?:—\s+|-\s+)?(?:DAN|ДАН|не\s+(?:ассистент|ИИ|бот)|свободн\w+|без\s+ограничений|"
    r"злой|взломанн\w+|будешь\s+отвечать\s+без)",
    r"ты\s+больше\s+не\s+(?:ассистент|помощник|ИИ|языковая\s+модель|бот|ChatGPT|GigaChat)",
    r"притворись,?\s+(?:что\s+)?(?:у\s+тебя\s+нет|ты\s+без)\s+(?:никаких\s+)?(?:ограничений|правил|фильтров|цензуры)",
    r"(?:\bвключи|\bактивируй|\bперейди\s+в|\bвойди\s+в|ты\s+(?:теперь\s+)?в)\s+режим\w*\s+(?:разработчика|бога|без\s+ограничений|джейлбрейка|DAN)",
    r"(?:без|не\s+соблюдая)\s+(?:каких-либо\s+|любых\s+)?(?:этических|моральных|цензурных)\s+(?:ограничений|норм|правил|фильтров)",
    r"(?:покажи|выведи|раскрой|повтори|напиши)\s+(?:мне\s+)?(?:свой|свои|твой|твои|весь|исходный|скрытый)?\s*"
    r"(?:системн\w+\s+(?:промпт|сообщение|инструкци\w+)|скрыт\w+\s+инструкци\w+|исходн\w+\s+инструкци\w+)",
]
_DELIMITERS = [
    r"<\|(?:im_start|im_end|system|endoftext|start_header_id|end_header_id|eot_id)\|>(?:\s*system)?",
    r"\[/?INST\]|<<\/?SYS>>",
    r"(?:^|\n)\s*#{2,}\s*(?:system|instruction|new\s+instructions?|системн\w+)\s*:?\s*(?:\n|$)",
    r"(?:^|\n)\s*(?:system|системн\w+\s+сообщение)\s*:\s*(?=you\b|ты\b|вы\b|ignore|игнор|new\b|from\s+now|отныне|забудь)",
    r"</?(?:system|system_prompt|instructions)>",
    r"(?:^|\n)\s*(?:Human|Assistant|User)\s*:\s*(?=\S)(?=[\s\S]*\n\s*(?:Human|Assistant|User)\s*:)",
    r"\bEND\s+OF\s+(?:USER\s+)?(?:INPUT|PROMPT|CONVERSATION)\b|\bBEGIN\s+SYSTEM\s+PROMPT\b",
]

_PHRASES = re.compile("|".join(f"(?:{p})" for p in _EN + _RU), re.IGNORECASE)
_DELIMITER = re.compile("|".join(f"(?:{p})" for p in _DELIMITERS), re.IGNORECASE)
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=])")
_HINTS = ("ignor", "disregard", "forget", "instruction", "prompt", "pretend", "mode", "dan", "you are", "you're",
          "act as", "from now", "reveal", "anything", "restrict", "assistant", "игнор", "забудь", "инструкц", "указани",
          "правил", "отныне", "теперь ты", "больше не", "притворись", "режим", "ограничен", "промпт", "отбрось",
          "не обращай", "не следуй", "отмени", "покажи", "выведи", "раскрой")


class InjectionDetector:
    """Prompt injection phrases, delimiters and base64-wrapped instructions; see the module docstring."""

    name = NAME

    def detect(self, text: str) -> Iterator[Detection]:
        if not text:
            return
        yield from self._plain(text, 0, text)
        if any(marker in text for marker in ("<|", "[INST", "<<SYS", "#", "ystem", "YSTEM", "Human", "User", "END OF",
                                              "BEGIN SYSTEM", "<instructions")):
            for match in _DELIMITER.finditer(text):
                start = match.start() + (len(match.group()) - len(match.group().lstrip()))
                if match.end() > start:
                    yield Detection(Category.PROMPT_INJECTION, start, match.end(), text[start:match.end()], NAME)
        if max(map(len, text.split()), default=0) >= 24:
            yield from self._encoded(text)

    def _plain(self, text: str, offset: int, original: str) -> Iterator[Detection]:
        lowered = text.lower()
        if not any(hint in lowered for hint in _HINTS):
            return
        for match in _PHRASES.finditer(text):
            yield Detection(Category.PROMPT_INJECTION, offset + match.start(), offset + match.end(),
                            original[offset + match.start():offset + match.end()], NAME)

    def _encoded(self, text: str) -> Iterator[Detection]:
        for match in _BASE64.finditer(text):
            decoded = decode_base64_text(match.group())
            if decoded and (_PHRASES.search(decoded) or _DELIMITER.search(decoded)):
                yield Detection(Category.PROMPT_INJECTION, match.start(), match.end(), match.group(), NAME)

