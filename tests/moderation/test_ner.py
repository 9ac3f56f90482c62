"""Named entities: natasha for Russian, the name list for English."""

from __future__ import annotations

from apps.moderation.detectors.ner import EnglishNameDetector, NerDetector, RussianNerDetector
from apps.moderation.findings import Category


def entities(detector, text: str) -> set[tuple[Category, str]]:
    found = set()
    for detection in detector.detect(text):
        assert text[detection.start:detection.end] == detection.value
        found.add((detection.category, detection.value))
    return found


def test_it_finds_russian_people_places_and_organisations():
    text = ("Договор подписали Иван Петрович Сидоров и Анна Смирнова в Санкт-Петербурге. "
            "Вторая сторона — ПАО Сбербанк. Передайте Марии Ивановой, что встреча в Казани.")
    found = entities(RussianNerDetector(), text)
    people = {value for category, value in found if category == Category.PERSON}
    assert {"Иван Петрович Сидоров", "Анна Смирнова", "Марии Ивановой"} <= people
    assert (Category.ADDRESS, "Санкт-Петербурге") in found
    assert (Category.ADDRESS, "Казани") in found
    assert any(category == Category.ORGANIZATION and "Сбербанк" in value for category, value in found)


def test_it_finds_nothing_in_text_without_names():
    text = "Отчёт за третий квартал готов. Выручка выросла на 12 %, расходы снизились. Прошу согласовать бюджет."
    assert entities(RussianNerDetector(), text) == set()
    assert entities(RussianNerDetector(), "") == set()
    assert entities(RussianNerDetector(), "only latin text here") == set()


def test_it_finds_english_names_with_a_first_name_or_a_title():
    found = entities(EnglishNameDetector(), "Please ask John Smith or Dr. Watson; Mary Johnson signed it.")
    assert found == {(Category.PERSON, "John Smith"), (Category.PERSON, "Dr. Watson"), (Category.PERSON, "Mary Johnson")}


def test_it_leaves_capitalised_english_words_alone():
    text = "The Quarterly Report. Will Smith-like phrasing aside, May Day Parade and New York Times. Hello World."
    assert {value for _, value in entities(EnglishNameDetector(), text)} <= {"Will Smith"} - {"Will Smith"}


def test_the_layer_runs_both():
    found = entities(NerDetector(), "Привет, Ольга Кузнецова! Forward this to John Smith.")
    assert {(Category.PERSON, "Ольга Кузнецова"), (Category.PERSON, "John Smith")} <= found
