"""Sanitising the upstream model card carried below ours: someone else's text published under our name.

Raw HTML is dropped (the text of ordinary elements kept; scripts, styles and frames dropped whole), links
and images may only point to http(s), mailto or relative targets, and fenced code stays as it is.
"""

from __future__ import annotations

import html
import re

SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
_LINE_END = re.compile(r"\r\n|\r|\n")  # CommonMark's line endings, and only those (str.splitlines knows more)
_OPENER = re.compile(r"(`{3,}|~{3,})(.*)")  # a fence opener at the start of a line (not indented: see below)
_CLOSER = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")
# elements whose content is code or another document: dropped whole, not just their tags
_DROPPED = "script|style|iframe|frame|frameset|object|embed|applet|noscript|noembed|template|textarea|title|" \
           "xmp|svg|math|select|plaintext"
_WINDOW = 1024  # longest tag or autolink parsed as one; a longer one is escaped and shown as text
_HTML = re.compile(
    r"(?P<comment><!--)"
    r"|<(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{1,31}):(?P<rest>[^\s<>]*)>"  # autolink <scheme:...>
    r"|(?P<email><[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+>)"
    r"|(?P<tag></?(?P<name>[A-Za-z][^\s/>\"']*+)(?:[^>\"']++|\"[^\"]*+\"|'[^']*+')*+>)"
    r"|(?P<other><(?=[A-Za-z/!?]))")
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


def _drop_html(text: str) -> str:
    """Raw HTML out: tags dropped, dangerous elements dropped with their content, any other ``<`` escaped.

    Each construct is matched within a bounded window (a longer "tag" is escaped, not parsed), and the end
    of an element or comment is looked up once per name, so the work stays linear in the text.
    """
    lower = text.lower()
    ends: dict[str, int] = {}  # "</script", "-->", ... -> where it next occurs (-1: nowhere after)
    pieces: list[str] = []
    position = 0

    def next_end(marker: str, after: int) -> int:
        if marker not in ends or 0 <= ends[marker] < after:
            ends[marker] = lower.find(marker, after)
        return ends[marker]

    while (found := text.find("<", position)) >= 0:
        pieces.append(text[position:found])
        match = _HTML.match(text, found, min(len(text), found + _WINDOW))
        if match is None:  # a "<" that starts nothing ("a < b")
            pieces.append("<")
            position = found + 1
            continue
        position = match.end()
        if match.group("comment"):
            end = next_end("-->", position)
            if end < 0:
                pieces.append("&lt;")
                position = found + 1
            else:
                position = end + 3
        elif match.group("scheme"):
            safe = match.group("scheme").lower() in SAFE_SCHEMES and safe_url(match.group(0))
            pieces.append(match.group(0) if safe else html.escape(match.group(0)))  # unsafe: shown as text
        elif match.group("email"):
            pieces.append(match.group(0))
        elif match.group("tag"):
            name = match.group("name").lower()
            if not match.group(0).startswith("</") and re.fullmatch(_DROPPED, name, re.IGNORECASE):
                end = next_end(f"</{name}", position)
                if end >= 0:  # the element and everything in it; unclosed: only its tag
                    close = text.find(">", end)
                    position = len(text) if close < 0 else close + 1
            # any other tag: dropped, the text around it stays
        else:
            pieces.append("&lt;")
            position = found + 1
    pieces.append(text[position:])
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
