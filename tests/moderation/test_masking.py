"""The masking engine: stable placeholders, restoring whole answers, streams split anywhere, and
tool-call arguments as JSON."""

from __future__ import annotations

import orjson
import pytest

from apps.moderation.findings import Action, Category, Detection, Finding, RegexDetector
from apps.moderation.masking import Masker, placeholders_in

PHONE = RegexDetector(Category.PHONE, r"\+7 \d{3} \d{3}-\d{2}-\d{2}")
PERSON = RegexDetector(Category.PERSON, r"Иван Петров|Anna \"Q\" Smith")


def masked(masker: Masker, text: str, action: Action = Action.MASK) -> str:
    findings = [Finding(d, action) for detector in (PHONE, PERSON) for d in detector.detect(text)]
    return masker.mask(text, findings)


def test_it_gives_each_value_a_numbered_placeholder_per_category():
    masker = Masker()
    text = masked(masker, "Иван Петров: +7 912 345-67-89, запасной +7 912 000-00-01")
    assert text == "[PERSON_1]: [PHONE_1], запасной [PHONE_2]"
    assert masker.values == {"[PERSON_1]": "Иван Петров", "[PHONE_1]": "+7 912 345-67-89", "[PHONE_2]": "+7 912 000-00-01"}


def test_the_same_value_gets_the_same_placeholder_across_messages():
    masker = Masker()
    first = masked(masker, "Позвоните +7 912 345-67-89")
    second = masked(masker, "Номер +7 912 345-67-89 — это Иван Петров, и ещё раз +7 912 345-67-89")
    assert first == "Позвоните [PHONE_1]"
    assert second == "Номер [PHONE_1] — это [PERSON_1], и ещё раз [PHONE_1]"
    assert len(masker) == 2


def test_only_mask_findings_are_replaced():
    masker = Masker()
    assert masked(masker, "Иван Петров", Action.LOG) == "Иван Петров"
    assert masked(masker, "Иван Петров", Action.ALLOW) == "Иван Петров"
    assert not masker


def test_overlapping_spans_keep_the_first_and_longest():
    masker = Masker()
    text = "call 12345678"
    findings = [Finding(Detection(Category.PHONE, 5, 13, "12345678", "pattern"), Action.MASK),
                Finding(Detection(Category.INN, 7, 11, "3456", "pattern"), Action.MASK)]
    assert masker.mask(text, findings) == "call [PHONE_1]"


def test_it_restores_a_whole_answer_and_leaves_unknown_placeholders():
    masker = Masker()
    masked(masker, "Иван Петров, +7 912 345-67-89")
    answer = "Связался с [PERSON_1] по [PHONE_1]; [PHONE_9] и [person_1] не наши."
    assert masker.restore(answer) == "Связался с Иван Петров по +7 912 345-67-89; [PHONE_9] и [person_1] не наши."


def test_a_round_trip_gives_back_the_original_text():
    masker = Masker()
    original = "Иван Петров просил перезвонить на +7 912 345-67-89 до пятницы."
    assert masker.restore(masked(masker, original)) == original


def split_everywhere(text: str):
    """Every way to cut ``text`` into two pieces, and into single characters."""
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]
    yield list(text)


@pytest.mark.parametrize("answer", ["Ответ: [PERSON_1], тел. [PHONE_1].", "[PHONE_1][PHONE_1]", "[[PERSON_1]]", "a [ b [PHON c",
                                    "[PHONE_12] [PHONE_1"])
def test_a_stream_restores_a_placeholder_split_at_every_boundary(answer):
    masker = Masker()
    masked(masker, "Иван Петров +7 912 345-67-89")
    expected = masker.restore(answer)
    for pieces in split_everywhere(answer):
        restorer = masker.restorer()
        out = "".join(restorer.feed(piece) for piece in pieces) + restorer.finish()
        assert out == expected, pieces


def test_a_stream_holds_back_only_a_possible_placeholder_prefix():
    masker = Masker()
    masked(masker, "+7 912 345-67-89")
    restorer = masker.restorer()
    assert restorer.feed("Номер: [PHO") == "Номер: "
    assert restorer.held == "[PHO"
    assert restorer.feed("NE_1] и [x") == "Номер: +7 912 345-67-89 и [x".removeprefix("Номер: ")
    assert restorer.held == ""
    assert restorer.feed("массив [1, 2]") == "массив [1, 2]"  # "[" that cannot start a placeholder is not held
    assert restorer.feed("[") == ""
    assert restorer.finish() == "["


def test_a_text_without_brackets_passes_at_once():
    masker = Masker()
    masked(masker, "+7 912 345-67-89")
    restorer = masker.restorer()
    assert [restorer.feed(p) for p in ("Привет", ", ", "мир")] == ["Привет", ", ", "мир"]


def test_tool_call_arguments_are_restored_inside_decoded_strings_and_stay_valid_json():
    masker = Masker()
    masked(masker, 'Anna "Q" Smith, +7 912 345-67-89')
    arguments = orjson.dumps({"name": "[PERSON_1]", "contacts": ["[PHONE_1]"], "note": "[PERSON_1] at [PHONE_1]"}).decode()
    restored = orjson.loads(masker.restore_json(arguments))
    assert restored == {"name": 'Anna "Q" Smith', "contacts": ["+7 912 345-67-89"], "note": 'Anna "Q" Smith at +7 912 345-67-89'}


def test_streamed_tool_call_arguments_are_restored_escaped_at_every_boundary():
    masker = Masker()
    masked(masker, 'Anna "Q" Smith')
    arguments = '{"who": "[PERSON_1]", "n": 1}'
    for pieces in split_everywhere(arguments):
        restorer = masker.restorer(json_string=True)
        out = "".join(restorer.feed(piece) for piece in pieces) + restorer.finish()
        assert orjson.loads(out) == {"who": 'Anna "Q" Smith', "n": 1}, pieces


def test_arguments_that_are_not_json_get_the_escaped_replacement():
    masker = Masker()
    masked(masker, 'Anna "Q" Smith')
    assert masker.restore_json('{"who": "[PERSON_1]"') == '{"who": "Anna \\"Q\\" Smith"'


def test_a_sealed_mapping_is_encrypted_and_reads_back(settings):
    masker = Masker()
    masked(masker, "Иван Петров +7 912 345-67-89")
    sealed = masker.sealed()
    assert "Иван" not in sealed and "912" not in sealed and sealed.startswith("v1:")
    again = Masker.unseal(sealed)
    assert again.values == masker.values
    assert again.placeholder(Category.PHONE, "+7 000 000-00-00") == "[PHONE_2]"
    assert again.placeholder(Category.PERSON, "Иван Петров") == "[PERSON_1]"


def test_a_placeholder_the_client_wrote_itself_is_never_given_to_a_value():
    masker = Masker(reserved=placeholders_in('{"content": "Шаблон: [PHONE_1] и [PERSON_2]"}'.encode()))
    assert masked(masker, "+7 912 345-67-89, Иван Петров") == "[PHONE_2], [PERSON_1]"
    assert masker.restore("[PHONE_1] [PHONE_2]") == "[PHONE_1] +7 912 345-67-89"
