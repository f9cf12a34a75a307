"""The model card: upstream card text is sanitised before it is published under our name, and the
upstream metadata cannot blow up (YAML aliases) or smuggle a non-license into ours."""

from __future__ import annotations

import logging
import re
import time
from html.parser import HTMLParser

import pytest
import yaml

from workers.package.card import card_license, render_card, split_front_matter
from workers.validate.report import Report
from workers.package.sanitize import safe_url, sanitize_markdown

ATTACKS = """\
# Hello

<script>alert("script")</script>
<img src=x onerror="alert('img')">
<IMG SRC=x OnError=alert(1)>
<iframe src="https://evil.example/frame"></iframe>
<div style="color:red" onclick="alert(2)">kept text</div>
<a href="javascript:alert(3)">anchor text</a>
<svg><script>alert(4)</script></svg>
<!-- <script>alert(5)</script> -->
<style>body{display:none}</style>
<details><summary>More</summary>detail text</details>

[plain link](javascript:alert(6))
[cased](JaVaScRiPt:alert(7))
[spaced](  javascript:alert(8) "title")
[entity](&#106;avascript:alert(9))
[tabbed](java&#x09;script:alert(10))
[pointy](<javascript:alert(11)>)
[vb](vbscript:msgbox(12))
![image](data:text/html;base64,PHNjcmlwdD5hbGVydCgxMyk8L3NjcmlwdD4=)
[![nested](https://ok.example/i.png)](javascript:alert(14))
<javascript:alert(15)>
[ref link][evil] [quoted ref][evil2] [wrapped]

[evil]: javascript:alert(16)
> [evil2]:
> javascript:alert(19)
> [wrapped](
> javascript:alert(20))
<[img](#) src=x onerror=alert(17)>
<[img](javascript:0) src=x onerror=alert(17)>
<a title="</script>" href="javascript:alert(18)">quoted</a>

Keep **bold**, `code`, [a good link](https://huggingface.co/docs) and ![a good image](images/sample.png).
<https://huggingface.co> stays a link.
"""


def _render(markdown: str) -> str:
    """HTML as a CommonMark renderer that lets raw HTML and every link through would make it."""
    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("commonmark", {"html": True})
    md.validateLink = lambda url: True  # see what the Hub's own filtering would have to catch
    return md.render(markdown)


def _dangerous(rendered: str) -> list[str]:
    """The elements, event handlers and script-capable targets a browser would see in ``rendered``."""
    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag in ("script", "iframe", "svg", "style", "object", "embed", "frame", "math"):
                found.append(tag)
            for name, value in attrs:
                target = re.sub(r"[\x00-\x20]", "", value or "").lower()
                if name.startswith("on") or (name in ("href", "src") and target.startswith(
                        ("javascript:", "vbscript:", "data:"))):
                    found.append(f"{tag} {name}={value}")

    Parser().feed(rendered)
    return found


def test_upstream_html_and_script_links_are_dropped_and_markdown_kept() -> None:
    assert _dangerous(_render(ATTACKS)), "the attack text must be dangerous as it is"
    clean = sanitize_markdown(ATTACKS)
    rendered = _render(clean)
    assert _dangerous(rendered) == []
    assert "javascript:" not in rendered.lower().replace("&lt;javascript:alert(15)&gt;", "")
    assert re.findall(r"alert\((\d+)", clean) == ["15", "17"]  # the rest: script bodies and targets gone
    for kept in ("kept text", "anchor text", "detail text", "plain link", "cased", "entity", "image"):
        assert kept in clean, kept
    assert '<a href="https://huggingface.co/docs">a good link</a>' in rendered
    assert '<img src="images/sample.png" alt="a good image" />' in rendered
    assert '<a href="https://huggingface.co">https://huggingface.co</a>' in rendered
    assert "<strong>bold</strong>" in rendered and "<code>code</code>" in rendered


@pytest.mark.parametrize("attack", [
    '<a href="JaVaScRiPt:alert(1)">mixed case</a>',
    '<a href="&#x6A;&#x61;&#x76;&#x61;script:alert(1)">entities</a>',
    '<a href="&#0000106avascript:alert(1)">padded entity</a>',
    '<a href="java\tscript:alert(1)">tab inside</a>',
    "<svg onload=alert(1)>",
    "<svg/onload=alert(1)>",
    "<img src=x onerror=alert(1)",  # unclosed
    "<img src=x onerror=alert(1)//",
    "<scr<script>ipt>alert(1)</script>",  # a tag inside a tag's name
    "<img src=x <!-- x --> onerror=alert(1)>",  # a comment inside a tag
    "<!--><img src=x onerror=alert(1)>-->",
    "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">data</a>",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[entity md](&#x6A;avascript:alert(1))",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\">",
    "<iframe srcdoc=\"<script>alert(1)</script>\">",
    "<object data=\"javascript:alert(1)\">",
    "<body onload=alert(1)>",
    "<<script>script>alert(1)<</script>/script>",
])
def test_classic_bypasses_are_neutralised(attack: str) -> None:
    clean = sanitize_markdown(f"before\n\n{attack}\n\nafter")
    rendered = _render(clean)
    assert _dangerous(rendered) == [], (clean, rendered)
    assert "before" in clean and "after" in clean


def test_fenced_code_is_kept_verbatim_but_only_when_it_really_is_code() -> None:
    text = "```html\n<script>alert(1)</script>\n```\n\n1. item\n\n   ```\n   x\n<script>alert(2)</script>\n   ```\n"
    clean = sanitize_markdown(text)
    assert clean.startswith("```html\n<script>alert(1)</script>\n```")  # shown as code, harmless
    assert "alert(2)" not in clean  # an indented fence may end with its list item: sanitised
    assert _dangerous(_render(clean)) == []
    # a fence the renderer would not see (a line break it does not count) does not protect HTML
    assert _dangerous(_render(sanitize_markdown("text\u2028```\n<script>alert(3)</script>\n"))) == []
    # an unclosed fence is closed, so it cannot swallow what follows
    assert sanitize_markdown("~~~~\n<b>x</b>").endswith("~~~~\n<b>x</b>\n~~~~")


def test_headings_are_demoted_outside_code() -> None:
    clean = sanitize_markdown("# Title\n```\n# comment\n```\n## Sub", demote_headings=True)
    assert clean == "### Title\n```\n# comment\n```\n#### Sub"


@pytest.mark.parametrize(("url", "safe"), [
    ("https://x.example", True), ("http://x", True), ("mailto:a@b.c", True), ("relative/path.png", True),
    ("#anchor", True), ("javascript:alert(1)", False), (" JAVASCRIPT:x", False), ("java\tscript:x", False),
    ("&#106;avascript:x", False), ("data:text/html,x", False), ("vbscript:x", False), ("<javascript:x>", False),
    ("file:///etc/passwd", False),
])
def test_link_targets(url: str, safe: bool) -> None:
    assert safe_url(url) is safe


def test_sanitising_a_hostile_card_stays_fast() -> None:
    hostile = "<a \"" * 20_000 + "<!--" * 20_000 + "<script>" * 20_000 + "[x](" * 20_000 + "[a" * 20_000
    started = time.monotonic()
    clean = sanitize_markdown(hostile)
    assert time.monotonic() - started < 5
    assert _dangerous(_render(clean[:20_000])) == []


BOMB = """---
license: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
---

# Bomb card
"""


def test_yaml_aliases_are_refused_and_the_license_becomes_unknown(caplog: pytest.LogCaptureFixture) -> None:
    assert len(yaml.safe_load(BOMB.split("---")[1])["h"]) == 9  # a plain SafeLoader takes it: str() was 9**8 x
    caplog.set_level(logging.WARNING, logger="workers.package.card")
    meta, body = split_front_matter(BOMB)
    assert meta == {} and body.startswith("# Bomb card")
    assert "aliases are not allowed" in caplog.text
    assert card_license(BOMB) is None
    assert card_license("---\nlicense: apache-2.0\n---\nx") == "apache-2.0"
    assert card_license("---\nlicense: [mit, apache-2.0]\n---\nx") is None
    assert card_license("---\nlicense: " + "x" * 500 + "\n---\nx") is None
    assert split_front_matter("---\na: " + "[" * 5000 + "\n---\nbody") == ({}, "body")  # too deep: ignored


def _report(license_: object) -> Report:
    return Report.from_dict({
        "source": {"id": "org/model", "repo_id": "org/model", "sha": "a" * 40, "license": license_},
        "options": {"bits": None, "group_size": 0, "deployment_target": "iOS17", "batch_size": 1},
        "toolchain": {"converter": "c 1", "coremltools": "8", "torch": "2", "diffusers": "0", "transformers": "4"},
        "geometry": {"context_dim": 1024, "latent_height": 64, "latent_width": 64, "vae_scale_factor": 8},
        "packages": [], "repos": {"float16": "coreml-model", "palettized": "coreml-model-palettized"},
    })


def test_the_published_card_is_sanitised_and_its_license_is_a_short_id(caplog: pytest.LogCaptureFixture) -> None:
    kwargs = dict(kind="float16", repo_id="studio/coreml-model", sibling_id="studio/coreml-model-palettized",
                  variants=["original"], compiled=False)
    card = render_card(_report("openrail++"), upstream=BOMB + ATTACKS, **kwargs)
    meta, body = split_front_matter(card)
    assert meta["license"] == "openrail++"
    assert "## Original model card" in body and "### Hello" in body and "kept text" in body
    assert _dangerous(_render(body)) == []
    caplog.set_level(logging.WARNING, logger="workers.package.card")
    huge = render_card(_report({"nested": ["x"] * 1000}), **kwargs)
    assert split_front_matter(huge)[0]["license"] == "unknown" and "license" in caplog.text
    assert split_front_matter(render_card(_report(None), **kwargs))[0]["license"] == "other"


def test_a_card_without_a_sibling_mentions_none() -> None:
    kwargs = dict(kind="float16", repo_id="studio/coreml-model", variants=["original"], compiled=False)
    assert "The palettized version is [studio/coreml-model-palettized](/studio/coreml-model-palettized)." in \
        render_card(_report("mit"), sibling_id="studio/coreml-model-palettized", **kwargs)
    card = render_card(_report("mit"), sibling_id=None, **kwargs)
    assert "palettized" not in card.lower() and "version is" not in card
