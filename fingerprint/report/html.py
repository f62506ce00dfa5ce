"""The report's text layer: sections kept as HTML and Markdown side by side, and the two documents.

The HTML is one self-contained file (inline CSS, images as base64 data URIs,
in-page navigation, no external resources), so it opens offline; the
Markdown carries the same tables and notes, with figures referenced by
caption.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any, Sequence

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;
padding:0 18px 40px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin:22px 0 4px}
h2{font-size:1.25em;margin:30px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:1.05em;margin:18px 0 6px}
nav{font-size:.9em;margin:8px 0 14px}nav a{margin-right:12px;color:#0b57d0;text-decoration:none}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}
th,td{border:1px solid #d8d8d8;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
td small{color:#666}.best{background:#e7f4e4;font-weight:600}
.note{background:#fff6dc;border-left:4px solid #e0b100;padding:6px 10px;font-size:.9em}
figure{margin:10px 0}figcaption{font-size:.85em;color:#555}img{max-width:100%;height:auto}
.muted{color:#666;font-size:.9em}
"""


@dataclass
class Section:
    """One report section, kept as HTML and Markdown side by side."""

    id: str
    title: str
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def para(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(text)

    def note(self, text: str) -> None:
        """A visible note (a missing optional part, a caveat)."""
        self.notes.append(text)
        self.html.append(f'<p class="note">{html.escape(text)}</p>')
        self.md.append(f"> Note: {text}")

    def heading(self, text: str) -> None:
        self.html.append(f"<h3>{html.escape(text)}</h3>")
        self.md.append(f"### {text}")

    def table(
        self, header: Sequence[str], rows: Sequence[Sequence[str]], *, best_rows: Sequence[int] = (), md_rows=None
    ) -> None:
        """A table; cells are plain text (a `(value, ci)` pair renders the interval small)."""

        def hcell(c: Any) -> str:
            if isinstance(c, tuple):
                return f"{html.escape(c[0])} <small>{html.escape(c[1])}</small>" if c[1] else html.escape(c[0])
            return html.escape(str(c))

        def mcell(c: Any) -> str:
            return (f"{c[0]} {c[1]}".strip() if isinstance(c, tuple) else str(c)).replace("|", "\\|")

        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        best = ' class="best"'
        body = "".join(
            f"<tr{best if i in best_rows else ''}>" + "".join(f"<td>{hcell(c)}</td>" for c in r) + "</tr>"
            for i, r in enumerate(rows)
        )
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        md_rows = rows if md_rows is None else md_rows
        self.md.append(
            "\n".join(
                [
                    "| " + " | ".join(header) + " |",
                    "|" + "---|" * len(header),
                    *("| " + " | ".join(mcell(c) for c in r) + " |" for r in md_rows),
                ]
            )
        )

    def figure(self, png: bytes, caption: str, alt: str | None = None) -> None:
        """An embedded PNG (base64 data URI) with a caption."""
        data = base64.b64encode(png).decode("ascii")
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt or caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.md.append(f"*Figure (in report.html): {caption}*")


def fmt(v: Any, digits: int = 3) -> str:
    """A number for a table: n/a for None, integers without decimals."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.{digits}f}"
    return str(v)


def metric_cell(d: dict | None) -> tuple[str, str]:
    """(value, "[ci_low, ci_high]") of an evaluate entry, for Section.table."""
    if not d or d.get("value") is None:
        return ("n/a", "")
    ci = (
        f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
        if d.get("ci_low") is not None and d.get("ci_high") is not None
        else ""
    )
    return (f"{d['value']:.3f}", ci)


def render_html(title: str, sections: Sequence[Section]) -> str:
    """One HTML document: inline CSS, in-page navigation, no external resources."""
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{"".join(s.html)}</section>' for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n<nav>{nav}</nav>\n{body}\n</body>\n</html>\n"
    )


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """The Markdown summary: the same sections, figures by caption."""
    parts = [f"# {title}", ""]
    for s in sections:
        parts += [f"## {s.title}", ""]
        for block in s.md:
            parts += [block, ""]
    return "\n".join(parts).rstrip() + "\n"
