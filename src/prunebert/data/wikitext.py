"""Plain text from MediaWiki XML dumps: page iteration and a small, regex-based wiki-markup stripper."""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

__all__ = ["iter_wiki_pages", "strip_wiki_markup"]

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_REF_SELF = re.compile(r"<ref\b[^>]*/\s*>", re.IGNORECASE)
_DROPPED_TAGS = "ref|math|gallery|timeline|score|syntaxhighlight|source|nowiki|templatestyles"
_PAIRED = re.compile(rf"<({_DROPPED_TAGS})\b[^>]*(?<!/)>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][^<>]*?/?>")
_NS_LINK = re.compile(r"\[\[\s*:?\s*(?:file|image|category|media)\s*:", re.IGNORECASE)
_INTERWIKI = re.compile(r"\[\[[a-z]{2,3}(?:-[a-z]+)*:[^\[\]|]*\]\]")
_PIPED_LINK = re.compile(r"\[\[[^\[\]|]*\|([^\[\]]*)\]\]")
_LINK = re.compile(r"\[\[([^\[\]|]*)\]\]")
_EXT_LINK_LABEL = re.compile(r"\[(?:[a-z][a-z+.-]*:)?//[^\s\[\]]+\s+([^\[\]]*)\]", re.IGNORECASE)
_EXT_LINK_BARE = re.compile(r"\[(?:[a-z][a-z+.-]*:)?//[^\s\[\]]*\]", re.IGNORECASE)
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^[ \t]*=+.*?=+[ \t]*$", re.MULTILINE)
_LIST_MARK = re.compile(r"^[ \t]*[*#:;]+[ \t]*", re.MULTILINE)
_MAGIC = re.compile(r"__[A-Z]+__")
# removed pronunciation/language templates leave "(; , Akhilleus, )" or "()" behind
_PAREN_HEAD = re.compile(r"\((?:\s*[,;:])+\s*")
_PAREN_TAIL = re.compile(r"(?:\s*[,;:])+\s*\)")
_EMPTY_PARENS = re.compile(r"[ \t]*\(\s*\)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def _remove_balanced(text: str, opener: str, closer: str) -> str:
    """Remove every (nested) ``opener ... closer`` span; an unclosed span runs to the end."""
    tokens = re.compile(f"{re.escape(opener)}|{re.escape(closer)}")
    out, depth, last = [], 0, 0
    for m in tokens.finditer(text):
        if m.group() == opener:
            if depth == 0:
                out.append(text[last : m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                last = m.end()
    if depth == 0:
        out.append(text[last:])
    return "".join(out)


def _remove_ns_links(text: str) -> str:
    """Remove ``[[File:...]]``, ``[[Image:...]]``, ``[[Category:...]]`` links, nested ``[[...]]`` included."""
    while (m := _NS_LINK.search(text)) is not None:
        depth, i = 0, m.start()
        while i < len(text):
            if text.startswith("[[", i):
                depth, i = depth + 1, i + 2
            elif text.startswith("]]", i):
                depth, i = depth - 1, i + 2
                if depth == 0:
                    break
            else:
                i += 1
        text = text[: m.start()] + text[i:]
    return text


def _links_to_text(text: str) -> str:
    """``[[a|b]]`` -> b, ``[[a]]`` -> a, ``[http://x label]`` -> label, bare ``[http://x]`` -> nothing."""
    text = _INTERWIKI.sub("", text)
    text = _PIPED_LINK.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK_LABEL.sub(r"\1", text)
    return _EXT_LINK_BARE.sub("", text)


def _paragraphs(text: str) -> str:
    """Collapse whitespace inside paragraphs; keep paragraphs apart with one blank line."""
    paras = (" ".join(p.split()) for p in _PARAGRAPH.split(text))
    return "\n\n".join(p for p in paras if p)


def strip_wiki_markup(text: str) -> str:
    """Plain text of a wikitext page: no comments, refs, templates, tables, file links, tags or headings."""
    text = _COMMENT.sub("", text)
    text = _REF_SELF.sub("", text)
    text = _PAIRED.sub("", text)
    text = _remove_balanced(text, "{{", "}}")
    text = _remove_balanced(text, "{|", "|}")
    text = _remove_ns_links(text)
    text = _links_to_text(text)
    text = _BREAK.sub(" ", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub("", text)
    text = _LIST_MARK.sub("", text)
    text = _MAGIC.sub("", text)
    text = _EMPTY_PARENS.sub("", _PAREN_TAIL.sub(")", _PAREN_HEAD.sub("(", text)))
    text = html.unescape(text).replace("\xa0", " ")
    return _paragraphs(text)


def _local(tag: str) -> str:
    """An XML tag without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1]


def iter_wiki_pages(path: Path) -> Iterator[tuple[str, str]]:
    """(title, raw wikitext) of each article page (namespace 0, not a redirect) of a (.bz2) XML dump."""
    with bz2.open(path, "rb") if path.suffix == ".bz2" else path.open("rb") as fh:
        for _, elem in ET.iterparse(fh, events=("end",)):
            if _local(elem.tag) != "page":
                continue
            fields = {_local(child.tag): child.text or "" for child in elem}
            text = elem.find(".//{*}revision/{*}text")
            is_article = fields.get("ns", "0").strip() == "0" and "redirect" not in fields
            if is_article and text is not None and text.text:
                yield fields.get("title", ""), text.text
            elem.clear()  # keep memory flat on big dumps
