"""A tiny, safe Markdown renderer for model cards: headings, paragraphs, lists, tables, code, bold, italics.

Every character of the source is HTML-escaped first; only the tags this module writes reach the page (no raw
HTML passes through, no links or images are made: a link's text and its address are shown as text).
"""

from __future__ import annotations

import re

from markupsafe import Markup, escape

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]*)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
MAX_SOURCE_CHARS = 200_000


def _inline(text: str) -> str:
    """Escape, then mark up code, bold and italics (applied to escaped text, so no source markup survives)."""
    html = str(escape(text))
    html = _LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})", html)
    parts = _CODE.split(html)  # odd indices are code spans: no emphasis inside them
    for index, part in enumerate(parts):
        if index % 2:
            parts[index] = f"<code>{part}</code>"
        else:
            part = _BOLD.sub(r"<strong>\1</strong>", part)
            parts[index] = _ITALIC.sub(r"<em>\1</em>", part)
    return "".join(parts)


def _cells(line: str) -> list[str]:
    stripped = line.strip()
    if stripped.startswith("|"):
        stripped = stripped[1:]
    if stripped.endswith("|"):
        stripped = stripped[:-1]
    return [cell.strip() for cell in stripped.split("|")]


def render_markdown(source: str) -> Markup:
    """Safe HTML of ``source`` (cut at :data:`MAX_SOURCE_CHARS`)."""
    lines = source[:MAX_SOURCE_CHARS].replace("\r\n", "\n").replace("\x00", "\ufffd").split("\n")
    out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    index = 0

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
            items.clear()

    while index < len(lines):
        line = lines[index]
        if line.strip().startswith("```"):
            flush()
            block: list[str] = []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith("```"):
                block.append(lines[index])
                index += 1
            out.append(f"<pre><code>{escape(chr(10).join(block))}</code></pre>")
            index += 1
            continue
        if "|" in line and index + 1 < len(lines) and _TABLE_RULE.match(lines[index + 1]):
            flush()
            header = _cells(line)
            index += 2
            body: list[list[str]] = []
            while index < len(lines) and "|" in lines[index] and lines[index].strip():
                body.append(_cells(lines[index]))
                index += 1
            head_html = "".join(f'<th scope="col">{_inline(cell)}</th>' for cell in header)
            rows_html = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
            out.append(f"<table><thead><tr>{head_html}</tr></thead><tbody>{rows_html}</tbody></table>")
            continue
        heading = _HEADING.match(line)
        item = _LIST_ITEM.match(line)
        if heading:
            flush()
            level = min(len(heading.group(1)) + 2, 6)  # the page's own h1/h2 stay above the card's headings
            out.append(f"<h{level}>{_inline(heading.group(2).strip())}</h{level}>")
        elif item:
            if paragraph:
                flush()
            items.append(item.group(1))
        elif not line.strip():
            flush()
        else:
            if items:
                flush()
            paragraph.append(line.strip())
        index += 1
    flush()
    return Markup("\n".join(out))  # built only from escaped text and this module's own tags
