"""Text out of images and documents, so the same detectors read them as they read a prompt.

- Images (``image_url`` data URLs; Anthropic image blocks arrive as those): OCR with Tesseract
  (Debian's ``tesseract-ocr`` with ``-rus`` and ``-eng`` data) through ``pytesseract``, in Russian and
  English at once (``rus+eng``). The image is decoded with Pillow first, so a file that is no image
  is refused before Tesseract runs, and a huge one is scaled down to ``MAX_OCR_PIXELS``.
- Documents (OpenAI ``file`` parts with ``file_data``, Anthropic ``document`` blocks, Responses
  ``input_file``): PDF with ``pypdf`` (its text layer; a scanned PDF without one yields no text),
  DOCX with ``python-docx`` (paragraphs and table cells). Kinds are told by their bytes (``%PDF-``, a
  ZIP with ``word/document.xml``), not by what the client says they are.

Every function takes a time budget in seconds and raises ``MediaError`` when the content cannot be
read (not decodable, an unknown kind, over the budget): the caller applies its policy's fail-closed
or fail-open rule. Nothing here touches the network.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import time
import zipfile
from dataclasses import dataclass

import docx
import pytesseract
from PIL import Image, UnidentifiedImageError
from pypdf import PdfReader
from pypdf.errors import PdfReadError

MAX_OCR_PIXELS = 12_000_000  # larger images are scaled down before OCR (a 4000×3000 photo fits)
MAX_DOCUMENT_PAGES = 200
OCR_LANGUAGES = "rus+eng"
DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*?);base64,", re.IGNORECASE)


class MediaError(Exception):
    """Content that cannot be read within the policy's rules; ``reason`` is a short code for reports
    (``not_base64``, ``not_an_image``, ``unknown_document``, ``timeout``, ``ocr_unavailable``, ``remote_url``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Blob:
    """Decoded content: its bytes and the media type the client declared ("" = none)."""

    data: bytes
    mime: str


def decode_data_url(url: str) -> Blob:
    """The bytes of a ``data:<mime>;base64,<data>`` URL. Raises ``MediaError`` (``remote_url`` for an
    http(s) URL, which the gateway does not fetch; ``not_base64`` for anything else)."""
    if url.startswith(("http://", "https://")):
        raise MediaError("remote_url", "the image is given by URL; the gateway does not fetch it to check it")
    match = DATA_URL.match(url)
    if match is None:
        raise MediaError("not_base64", "the content is not a base64 data URL")
    return Blob(decode_base64(url[match.end():]), (match.group("mime") or "").lower())


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional. Raises ``MediaError`` ``not_base64``."""
    cleaned = "".join(text.split())
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned)
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("not_base64", "the content is not valid base64") from None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise MediaError("timeout", "the content could not be read within the policy's time budget")
    return left


def image_text(data: bytes, *, budget: float) -> str:
    """The text Tesseract reads in the image ``data`` (PNG, JPEG, WebP, GIF, TIFF, BMP…), Russian
    and English; at most ``budget`` seconds. Raises ``MediaError`` (``not_an_image``, ``timeout``,
    ``ocr_unavailable`` when the tesseract binary or its language data is missing)."""
    deadline = time.monotonic() + budget
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise MediaError("not_an_image", "the image could not be decoded") from None
    if image.width * image.height > MAX_OCR_PIXELS:
        scale = (MAX_OCR_PIXELS / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    try:
        return pytesseract.image_to_string(image, lang=OCR_LANGUAGES, timeout=_remaining(deadline))
    except RuntimeError as exc:  # pytesseract's timeout
        if "timeout" in str(exc).lower():
            raise MediaError("timeout", "the image could not be read within the policy's time budget") from None
        raise MediaError("ocr_unavailable", "OCR failed") from None
    except (pytesseract.TesseractNotFoundError, pytesseract.TesseractError):
        raise MediaError("ocr_unavailable", "OCR (Tesseract with Russian and English data) is not available") from None


def is_pdf(data: bytes) -> bool:
    """Whether ``data`` starts like a PDF file (``%PDF-`` within its first KiB, as readers accept)."""
    return b"%PDF-" in data[:1024]


def is_docx(data: bytes) -> bool:
    """Whether ``data`` is a ZIP package with a Word main part (``word/document.xml``)."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            return "word/document.xml" in package.namelist()
    except zipfile.BadZipFile:
        return False


def document_text(data: bytes, *, budget: float) -> str:
    """The text of a PDF (its text layer, up to ``MAX_DOCUMENT_PAGES`` pages) or a DOCX (paragraphs,
    then table cells), within ``budget`` seconds. Raises ``MediaError`` (``unknown_document``,
    ``unreadable_document``, ``timeout``)."""
    deadline = time.monotonic() + budget
    if is_pdf(data):
        return _pdf_text(data, deadline)
    if is_docx(data):
        return _docx_text(data, deadline)
    raise MediaError("unknown_document", "the document is neither a PDF nor a DOCX file")


def _pdf_text(data: bytes, deadline: float) -> str:
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = []
        for number, page in enumerate(reader.pages):
            if number >= MAX_DOCUMENT_PAGES:
                raise MediaError("too_long", f"the document has more than {MAX_DOCUMENT_PAGES} pages")
            _remaining(deadline)
            pages.append(page.extract_text() or "")
    except (PdfReadError, ValueError, KeyError, TypeError):
        raise MediaError("unreadable_document", "the PDF could not be read") from None
    return "\n".join(pages)


def _docx_text(data: bytes, deadline: float) -> str:
    try:
        document = docx.Document(io.BytesIO(data))
    except (ValueError, KeyError, zipfile.BadZipFile):
        raise MediaError("unreadable_document", "the DOCX file could not be read") from None
    lines = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        _remaining(deadline)
        for row in table.rows:
            lines.append("\t".join(cell.text for cell in row.cells))
    _remaining(deadline)
    return "\n".join(lines)
