"""Sanitising the upstream model card carried below ours: someone else's text published under our name.

Raw HTML is dropped by ``nh3`` (the binding of the Rust ``ammonia`` sanitiser, parsing as a browser does):
the text of ordinary elements is kept, scripts, styles, frames, SVG and MathML are dropped whole, and so
are comments.  What no HTML sanitiser knows is Markdown, so that part is written here: fenced code stays as
it is (renderers show it as text), autolinks become Markdown links, and Markdown links, images and link
definitions may only point to http(s), mailto or relative targets.
"""

from __future__ import annotations

import html
import re

import nh3

SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
_LINE_END = re.compile(r"\r\n|\r|\n")  # CommonMark's line endings, and only those (str.splitlines knows more)
_OPENER = re.compile(r"(`{3,}|~{3,})(.*)")  # a fence opener at the start of a line (not indented: see below)
_CLOSER = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")
# elements whose content is code or another document: dropped whole, not just their tags
_DROPPED = {"script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "noscript", "noembed",
            "template", "textarea", "title", "xmp", "svg", "math", "select", "plaintext"}
# an autolink: <scheme:...> or <address@host>, bounded in length
_AUTOLINK = re.compile(r"<(?P<url>[A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]{0,2000})>"
                       r"|<(?P<email>[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,200}@[A-Za-z0-9.-]{1,200})>")
_BLANK_LINE = re.compile(r"(\n[ \t]*\n)")
# what nh3 escapes in text that Markdown needs as it was; "&lt;" stays: a "<" that opened no tag
_UNESCAPED = (("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"), ("&amp;", "&"))
_SIMPLE_LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\[\]\n]*)\]\(\s*(?P<dest><[^<>\n]*>|[^\s()<>]*"
                          r"(?:\([^\s()]*\)[^\s()<>]*)*)(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^()\n]*\)))?\s*\)")
# a link reference definition, wherever it is (in a quote or list too): ``[label]: target``
_DEFINITION = re.compile(r"\[(?:[^\[\]\\\n]|\\.){1,999}\]:[ \t]*(?:\n[ \t>]*)?(?P<dest><[^>\n]*>|[^\s>]\S*)")


def sanitize_markdown(text: str, *, demote_headings: bool = False) -> str:
    """Markdown from elsewhere made safe to publish: no raw HTML, no script-capable link targets.

    Fenced code blocks are kept verbatim (renderers show them as text).  Only fences opened at the start
    of a line count: an indented one may belong to a list item that ends before the fence does, so its
    lines are sanitised like any other.  An unclosed fence is closed at the end.  With ``demote_headings``
    every heading outside code goes one level down (``#`` becomes ``###``), below the card's own.
    """
    out: list[str] = []
    prose: list[str] = []
    fence: str | None = None
    for line in _LINE_END.split(text):
        if fence is None:
            opener = _OPENER.fullmatch(line)
            if opener and not (opener.group(1)[0] == "`" and "`" in opener.group(2)):
                if prose:
                    out.append(_clean("\n".join(prose), demote_headings))
                    prose = []
                fence = opener.group(1)
                out.append(line)
            else:
                prose.append(line)
            continue
        out.append(line)
        closer = _CLOSER.fullmatch(line)
        if closer and closer.group(1)[0] == fence[0] and len(closer.group(1)) >= len(fence):
            fence = None
    if prose:
        out.append(_clean("\n".join(prose), demote_headings))
    if fence is not None:
        out.append(fence)
    return "\n".join(out)


def safe_url(destination: str) -> bool:
    """Whether a link or image target is harmless: relative, or http(s) / mailto.

    Read the way a browser would: entities decoded, Markdown escapes removed, whitespace and control
    characters (which browsers skip inside a scheme) dropped, case ignored.
    """
    url = destination.strip()
    if url.startswith("<") and url.endswith(">"):
        url = url[1:-1]
    for _ in range(3):
        decoded = html.unescape(url)
        if decoded == url:
            break
        url = decoded
    url = re.sub(r"[\x00-\x20\x7f]+", "", re.sub(r"\\(.)", r"\1", url)).lower()
    scheme = re.match(r"([a-z][a-z0-9+.-]*):", url)
    return scheme is None or scheme.group(1) in SAFE_SCHEMES


def _clean(text: str, demote_headings: bool) -> str:
    for _ in range(5):  # dropping a tag can join text into a link, removing a link into a tag: until stable
        cleaned = _drop_html(_links(text))
        if cleaned == text:
            break
        text = cleaned
    else:  # still changing: nothing that could be HTML or an inline link survives at all
        text = text.replace("<", "&lt;").replace("](", "]\\(")
    if demote_headings:
        text = "\n".join("##" + line if line.startswith("#") else line for line in text.split("\n"))
    return text


def _links(text: str) -> str:
    text = _neutralise_links(_SIMPLE_LINK.sub(_simple_link, text))
    return _DEFINITION.sub(lambda m: m.group(0) if safe_url(m.group("dest")) else "", text)


def _autolinks(text: str) -> str:
    """``<https://x>`` as ``[https://x](https://x)`` (an HTML sanitiser takes it for a tag), ``<a@b.c>`` as a
    mailto link; an autolink to another scheme is shown as text."""
    def link(match: re.Match) -> str:
        if match.group("email"):
            return f"[{match.group('email')}](mailto:{match.group('email')})"
        url = match.group("url")
        return f"[{url}]({url})" if safe_url(url) and "(" not in url and ")" not in url else html.escape(match.group(0))

    return _AUTOLINK.sub(link, text)


def _drop_html(text: str) -> str:
    """Raw HTML out (nh3 with no tag allowed), the Markdown around it as it was.

    Block by block (Markdown ends a paragraph, and most HTML blocks, at a blank line): an unclosed tag or
    element then drops the rest of its own block, not the rest of the card.
    """
    pieces = _BLANK_LINE.split(text)
    for i in range(0, len(pieces), 2):  # the odd pieces are the blank lines between blocks
        cleaned = nh3.clean(_autolinks(pieces[i]), tags=set(), clean_content_tags=_DROPPED, strip_comments=True)
        for escaped, plain in _UNESCAPED:
            cleaned = cleaned.replace(escaped, plain)
        pieces[i] = cleaned
    return "".join(pieces)


def _simple_link(match: re.Match) -> str:
    if safe_url(match.group("dest")):
        return match.group(0)
    return match.group("text")  # the link's text (or the image's alt text), without the target


def _neutralise_links(text: str) -> str:
    """Every inline link target after ``](`` that is not safe is removed (what the simple form missed)."""
    pieces, position = [], 0
    while (found := text.find("](", position)) >= 0:
        start = found + 2
        while start < len(text) and text[start] in " \t\n>":  # ">": a quote's continuation line
            start += 1
        end = start
        if text.startswith("<", start):
            close = text.find(">", start)
            end = close + 1 if close >= 0 and "\n" not in text[start:close] else start + 1
        else:
            depth = 0
            while end < len(text):
                char = text[end]
                if char == "\\":
                    end += 2
                    continue
                if char <= " " or char == "\x7f" or (char == ")" and depth == 0):
                    break
                depth += {"(": 1, ")": -1}.get(char, 0)
                end += 1
            end = min(end, len(text))
        pieces.append(text[position:start] if not safe_url(text[start:end]) else text[position:end])
        position = end if end > found else found + 2
    pieces.append(text[position:])
    return "".join(pieces)
