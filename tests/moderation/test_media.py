"""Images and documents: OCR of a generated image (Tesseract, Russian and English), the text of
PDF and DOCX files, and what the stage does with them in a request — block, drop, depersonalize,
refuse by content type, and the time budget's fail-closed / fail-open rule."""

from __future__ import annotations

import base64
import io

import anthropic
import docx
import openai
import pytest
from PIL import Image, ImageDraw, ImageFont
from weasyprint import HTML

from apps.moderation.findings import Action, Category
from apps.moderation.media import MediaError, decode_data_url, document_text, image_text
from tests.moderation.stage_fixtures import *  # noqa: F403 - the moderated gateway's fixtures
from tests.moderation.stage_fixtures import NAME, PHONE, StagePolicy

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def card_image(*lines: str) -> bytes:
    """A PNG with ``lines`` in black on white (what a photographed form looks like to OCR, minus the noise)."""
    font = ImageFont.truetype(FONT, 36)
    image = Image.new("RGB", (900, 40 + 60 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(lines):
        draw.text((20, 20 + 60 * number), line, font=font, fill="black")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def pdf_file(text: str) -> bytes:
    return HTML(string=f"<html><body><p>{text}</p></body></html>").write_pdf()


def docx_file(paragraph: str, cell: str) -> bytes:
    document = docx.Document()
    document.add_paragraph(paragraph)
    document.add_table(rows=1, cols=2).rows[0].cells[1].text = cell
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_ocr_reads_a_name_and_a_phone_number_from_a_generated_image():
    text = image_text(card_image(NAME, PHONE), budget=30)
    assert NAME in text
    assert PHONE in text


def test_ocr_refuses_what_is_not_an_image_and_a_remote_url():
    with pytest.raises(MediaError) as caught:
        image_text(b"not an image at all", budget=5)
    assert caught.value.reason == "not_an_image"
    with pytest.raises(MediaError) as caught:
        decode_data_url("https://example.com/passport.png")
    assert caught.value.reason == "remote_url"


def test_it_reads_the_text_of_a_pdf_and_a_docx():
    assert NAME in document_text(pdf_file(f"Договор с {NAME}"), budget=30)
    text = document_text(docx_file(f"Договор с {NAME}", PHONE), budget=30)
    assert NAME in text and PHONE in text
    with pytest.raises(MediaError) as caught:
        document_text(b"plain bytes", budget=5)
    assert caught.value.reason == "unknown_document"


def image_message(image: bytes, text: str = "Что на картинке?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": data_url(image, "image/png")}}]}]


def test_an_image_with_a_value_to_block_refuses_the_call(gateway, fake_openai, policies):
    policies.set(StagePolicy(prompt={Category.PHONE: Action.BLOCK}))
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=image_message(card_image(NAME, PHONE)))
    assert caught.value.body["code"] == "phone" and caught.value.body["type"] == "moderation_blocked"
    assert fake_openai.requests == []


def test_an_anthropic_image_block_is_read_too(gateway, fake_openai, policies):
    policies.set(StagePolicy(prompt={Category.PHONE: Action.BLOCK}))
    image = base64.b64encode(card_image(PHONE)).decode()
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.world.secret, max_retries=0) as client, \
            pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
            {"type": "text", "text": "Что это?"}]}])
    assert caught.value.body["error"]["code"] == "phone"
    assert fake_openai.requests == []


def test_an_image_to_block_is_dropped_when_the_policy_says_so(gateway, fake_openai, policies):
    policies.set(StagePolicy(prompt={Category.PHONE: Action.BLOCK}, drop_blocked_images=True))
    gateway.client().chat.completions.create(model="gpt-4o-mini", messages=image_message(card_image(PHONE)))
    parts = fake_openai.last_request.body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "text"]
    assert "removed" in parts[1]["text"] and "phone numbers" in parts[1]["text"]
    assert "912" not in fake_openai.last_request.raw_body.decode()


def test_an_image_with_values_to_mask_goes_as_its_depersonalized_text(gateway, fake_openai):
    gateway.client().chat.completions.create(model="gpt-4o-mini", messages=image_message(card_image(NAME, PHONE)))
    parts = fake_openai.last_request.body["messages"][0]["content"]
    assert parts[1]["type"] == "text" and "[PERSON_1]" in parts[1]["text"] and "[PHONE_1]" in parts[1]["text"]
    assert "image_url" not in fake_openai.last_request.raw_body.decode()


def test_an_image_without_findings_is_sent_as_it_is(gateway, fake_openai):
    gateway.client().chat.completions.create(model="gpt-4o-mini", messages=image_message(card_image("Просто открытка")))
    parts = fake_openai.last_request.body["messages"][0]["content"]
    assert parts[1]["type"] == "image_url"


def test_images_refused_by_content_type(gateway, fake_openai, policies):
    policies.set(StagePolicy(image_action="block"))
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=image_message(card_image("Открытка")))
    assert caught.value.body["code"] == "image_not_allowed"


def test_an_anthropic_pdf_document_goes_depersonalized(gateway, fake_openai):
    pdf = base64.b64encode(pdf_file(f"Договор с {NAME}, телефон {PHONE}")).decode()
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.world.secret, max_retries=0) as client:
        client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}, "title": "contract.pdf"},
            {"type": "text", "text": "Кратко перескажи"}]}])
    sent = fake_openai.last_request.raw_body.decode()
    assert "[PERSON_1]" in sent and "[PHONE_1]" in sent and "contract.pdf" in sent
    assert "Петров" not in sent and "912" not in sent and "application/pdf" not in sent


def test_a_responses_docx_file_goes_depersonalized(gateway, fake_openai):
    document = data_url(docx_file(f"Сотрудник {NAME}", PHONE), "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    gateway.client().responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": [
        {"type": "input_file", "file_data": document, "filename": "staff.docx"},
        {"type": "input_text", "text": "Что в файле?"}]}])
    sent = fake_openai.last_request.raw_body.decode()
    assert "[PERSON_1]" in sent and "[PHONE_1]" in sent and "Петров" not in sent


def test_content_over_the_time_budget_fails_closed_or_open(gateway, fake_openai, policies):
    big = card_image(*([NAME, PHONE] * 6))
    policies.set(StagePolicy(scan_budget_seconds=0.01))
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=image_message(big))
    assert caught.value.body["code"] == "moderation_unavailable" and fake_openai.requests == []
    policies.set(StagePolicy(scan_budget_seconds=0.01, fail_closed=False))
    gateway.client().chat.completions.create(model="gpt-4o-mini", messages=image_message(big))
    assert fake_openai.last_request.body["messages"][0]["content"][1]["type"] == "image_url"


def test_an_unreadable_document_fails_closed(gateway, fake_openai, policies):
    bogus = {"type": "file", "file": {"file_data": data_url(b"garbage", "application/pdf"), "filename": "x.pdf"}}
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [bogus]}])
    assert caught.value.body["code"] == "moderation_unavailable"
