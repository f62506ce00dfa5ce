"""The report's text layer: escaped HTML and Markdown side by side, one offline document."""

from fingerprint.report.html import Section, fmt, metric_cell, render_html, render_markdown


def test_sections_render_to_html_and_markdown():
    s = Section("x", "A & B")
    s.para("1 < 2")
    s.note("missing part")
    s.table(["name", "value"], [["a|b", ("0.500", "[0.4, 0.6]")]], best_rows=[0])
    s.figure(b"\x89PNG", "a figure")
    html = render_html("Report <1>", [s])
    assert "Report &lt;1&gt;" in html and "1 &lt; 2" in html and 'class="note"' in html and 'class="best"' in html
    assert "0.500 <small>[0.4, 0.6]</small>" in html and "data:image/png;base64," in html and 'href="#x"' in html
    assert "http" not in html
    md = render_markdown("Report", [s])
    assert (
        "## A & B" in md
        and "> Note: missing part" in md
        and "a\\|b" in md
        and "*Figure (in report.html): a figure*" in md
    )


def test_number_formats():
    assert fmt(None) == "n/a" and fmt(3.0) == "3" and fmt(0.12345) == "0.123" and fmt(2.5, 1) == "2.5"
    assert metric_cell({"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}) == ("0.500", "[0.400, 0.600]")
    assert metric_cell({"value": None}) == ("n/a", "") and metric_cell(None) == ("n/a", "")
