"""Contact sheets: stand-alone HTML pages of image thumbnails, for ``--html`` of similar and dupes.

A page is one file a person opens in a browser, mailed or archived as is: thumbnails are
embedded as ``data:`` URIs (made with Pillow), there is no script and nothing is fetched.
Every URL and text taken from the cache goes through :func:`html.escape`, because image
URLs come from crawled pages, and only ``http``, ``https`` and ``file`` URLs become links:
any other (``data:``, ``javascript:`` recorded by an older version...) is shown as text.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..hashing import DEFAULT_MAX_PIXELS
from ..imaging import thumbnail

THUMBNAIL_SIZE = 240
MAX_URLS_SHOWN = 10
#: the URLs a sheet links to: the scheme is read from the first character on, as browsers do
LINKABLE = re.compile(r"(?:https?|file):", re.IGNORECASE)

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; padding: .6em; background: #fff; border: 1px solid #ddd; border-radius: 6px;
         width: 260px; overflow-wrap: anywhere; }
figure.query { border: 2px solid #1a73e8; }
figure img { display: block; max-width: 240px; max-height: 240px; margin: 0 auto .4em; }
.noimg { height: 120px; display: flex; align-items: center; justify-content: center;
         background: #eee; color: #777; margin-bottom: .4em; }
figcaption b { font-size: 1.1em; } figcaption ul { margin: .3em 0 0; padding-left: 1.1em; }
code { font-size: .9em; }
"""


@dataclass
class Card:
    """One image on a sheet: a title (the distance, say), detail lines, source URLs."""

    data: bytes | None
    title: str
    lines: Sequence[str] = ()
    urls: Sequence[str] = ()
    query: bool = False
    missing: str = "image bytes not available"


@dataclass
class Section:
    heading: str
    cards: list[Card] = field(default_factory=list)


def thumbnail_uri(data: bytes, size: int = THUMBNAIL_SIZE) -> str | None:
    """A small JPEG (PNG when transparent) of the image as a ``data:`` URI; None if unreadable."""
    made = thumbnail(data, size, DEFAULT_MAX_PIXELS)
    if made is None:
        return None
    picture, mime = made
    return f"data:{mime};base64,{base64.b64encode(picture).decode('ascii')}"


def render_card(card: Card) -> str:
    uri = thumbnail_uri(card.data) if card.data is not None else None
    e = html.escape
    if uri is not None:
        picture = f'<img src="{uri}" alt="{e(card.title)}">'
    else:
        picture = f'<div class="noimg">{e(card.missing)}</div>'
    lines = "".join(f"<br>{e(line)}" for line in card.lines)
    links = "".join(f"<li>{url_html(url)}</li>" for url in card.urls[:MAX_URLS_SHOWN])
    if len(card.urls) > MAX_URLS_SHOWN:
        links += f"<li>and {len(card.urls) - MAX_URLS_SHOWN} more</li>"
    cls = ' class="query"' if card.query else ""
    return (
        f"<figure{cls}>{picture}<figcaption><b>{e(card.title)}</b>{lines}"
        f"{f'<ul>{links}</ul>' if links else ''}</figcaption></figure>"
    )


def url_html(url: str) -> str:
    """A link to ``url`` when it is a web or file URL; otherwise its text."""
    if LINKABLE.match(url):
        return f'<a href="{html.escape(url)}">{html.escape(url)}</a>'
    return f'<span class="url">{html.escape(url)}</span>'


def render_page(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"] + [f"<p>{e(line)}</p>" for line in intro]
    for section in sections:
        body.append(f"<h2>{e(section.heading)}</h2>")
        body.append('<div class="row">' + "".join(render_card(c) for c in section.cards) + "</div>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_page(path: str, title: str, intro: Sequence[str], sections: Sequence[Section]) -> None:
    Path(path).write_text(render_page(title, intro, sections), encoding="utf-8")
