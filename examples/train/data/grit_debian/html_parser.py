"""An `html.parser` reader for documentation pages: heading -> paragraphs, and Sphinx `dl` API entries."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from .text import clean_chars, indent, norm_ws

_BLOCK = {
    "p",
    "div",
    "li",
    "dt",
    "dd",
    "pre",
    "table",
    "tr",
    "ul",
    "ol",
    "dl",
    "blockquote",
    "section",
    "article",
    "figure",
    "caption",
    "hr",
    "td",
    "th",
    "main",
    "aside",
    "center",
    "form",
    "body",
    "tbody",
    "thead",
}
_VOID = {"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed", "param", "source", "track", "wbr"}
_SKIP_TAGS = {"script", "style", "nav", "footer", "noscript", "svg", "button", "select", "textarea", "map"}
_SKIP_CLASSES = {
    "navheader",
    "navfooter",
    "related",
    "sphinxsidebar",
    "headerlink",
    "footer",
    "toc",
    "breadcrumbs",
    "toctree-wrapper",
    "docnav",
    "sidebar",
    "menu",
    "nosearch",
    "navigation",
    "mobile-hamburger",
    "section-toc",
    "list-of-tables",
    "list-of-figures",
    "list-of-examples",
    "index",
    "genindex",
    "copyright",
    "legalnotice",
    "contents",
    "topic",
    "navbar",
    "search",
    "pagenav",
    "top",
    "glossary",
    "admonition-title",
}
_SKIP_IDS = {
    "quickview",
    "page-header",
    "footer",
    "path",
    "sidebar",
    "toc",
    "navigation",
    "searchbox",
    "header",
    "nav",
    "topmenu",
    "menu",
}
_API_TYPES = {
    "function",
    "method",
    "class",
    "exception",
    "attribute",
    "data",
    "classmethod",
    "staticmethod",
    "decorator",
    "decoratormethod",
    "property",
    "macro",
    "type",
    "member",
    "var",
    "opcode",
    "pdbcommand",
    "describe",
    "object",
    "cmdoption",
    "envvar",
}


class DocHTML(HTMLParser):
    """Sections (heading -> paragraphs) of an HTML manual page; Sphinx `dl` API entries separately."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self._in_title = False
        self._skip_tag, self._skip_n = None, 0
        self.sections = [{"level": 0, "heading": "", "paras": []}]
        self.buf: list[str] = []
        self._pre = 0
        self._heading: list[str] | None = None
        self._hlevel = 0
        self.api: list[dict] = []
        self._dl_stack: list[dict | None] = []
        self._sig: list[str] | None = None

    # routing of finished paragraphs
    def _top_api(self) -> dict | None:
        for e in reversed(self._dl_stack):
            if e is not None:
                return e
        return None

    def _emit(self, text: str) -> None:
        api = self._top_api()
        if api is not None:
            if api["stage"] == "dd" and api["active"]:
                api["paras"].append(text)
            return
        self.sections[-1]["paras"].append(text)

    def _flush(self) -> None:
        if not self.buf:
            return
        raw = "".join(self.buf)
        self.buf = []
        if self._pre:
            lines = [ln.rstrip() for ln in raw.split("\n")]
            while lines and not lines[0].strip():
                lines.pop(0)
            while lines and not lines[-1].strip():
                lines.pop()
            if not lines:
                return
            ind = min(indent(x) for x in lines if x.strip())
            text = "\n".join(x[ind:] if len(x) >= ind else x.strip() for x in lines)
        else:
            text = norm_ws(raw)
        text = clean_chars(text).strip()
        if text:
            self._emit(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_n += 1
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if tag in _SKIP_TAGS or classes & _SKIP_CLASSES or (a.get("id") or "") in _SKIP_IDS:
            if tag not in _VOID:
                self._skip_tag, self._skip_n = tag, 1
            return
        if tag == "title":
            self._in_title = True
            return
        if re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._heading, self._hlevel = [], int(tag[1])
            return
        if tag == "dl":
            self._flush()
            kind = classes & _API_TYPES
            if kind and (classes & {"py", "c", "cpp", "std"}):
                parent = self._top_api()
                if parent is not None:
                    parent["active"] = False
                entry = {"type": sorted(kind)[0], "id": "", "sig": "", "paras": [], "stage": "pre", "active": True}
                self._dl_stack.append(entry)
            else:
                self._dl_stack.append(None)
            return
        top = self._dl_stack[-1] if self._dl_stack else None
        if tag == "dt" and top is not None and top["stage"] == "pre":
            self._flush()
            top["id"] = a.get("id") or ""
            self._sig = []
            return
        if tag == "dd" and top is not None and top["stage"] in ("pre", "sig"):
            self._flush()
            top["stage"] = "dd"
            return
        if tag == "pre":
            self._flush()
            self._pre += 1
            return
        if tag == "br":
            self.buf.append("\n" if self._pre else " ")
            return
        if tag in _BLOCK:
            self._flush()
        if tag in ("td", "th"):
            self.buf.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_n -= 1
                if self._skip_n == 0:
                    self._skip_tag = None
            return
        if tag == "title":
            self._in_title = False
            return
        if re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            heading = clean_chars(norm_ws("".join(self._heading))).strip(" \u00b6#")
            self._heading = None
            if self._top_api() is None and heading:
                self.sections.append({"level": self._hlevel, "heading": heading, "paras": []})
            return
        if tag == "dt" and self._sig is not None:
            top = self._dl_stack[-1] if self._dl_stack else None
            if top is not None and not top["sig"]:
                top["sig"] = clean_chars(norm_ws("".join(self._sig))).strip(" \u00b6")
                top["stage"] = "sig"
            self._sig = None
            return
        if tag == "dl":
            self._flush()
            if self._dl_stack:
                entry = self._dl_stack.pop()
                if entry is not None and entry["sig"]:
                    self.api.append({k: entry[k] for k in ("type", "id", "sig", "paras")})
            return
        if tag == "pre":
            self._flush()
            self._pre = max(0, self._pre - 1)
            return
        if tag in _BLOCK:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip_tag is not None:
            return
        if self._in_title:
            self.title += data
            return
        if self._heading is not None:
            self._heading.append(data)
            return
        if self._sig is not None:
            self._sig.append(data)
            return
        self.buf.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def parse_html_file(args: tuple[str, str]) -> dict:
    """Parse one page (path, path relative to the manual) into title, sections and API entries."""
    path, rel = args
    p = DocHTML()
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    p.feed(text)
    p.close()
    title = clean_chars(norm_ws(p.title))
    title = re.sub(r"\s+[-\u2014|]\s+(Apache HTTP Server.*|Python 3\.11.*documentation|PostgreSQL.*)$", "", title)
    sections = [s for s in p.sections if s["heading"] or s["paras"]]
    return {"rel": rel, "title": title, "sections": sections, "api": p.api}
