"""DIR/index.html: the run's story top to bottom, static (no script, no CDN, no font to
fetch), readable offline; every picture and artifact linked relative to the page."""

from __future__ import annotations

import datetime as _dt
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .story import Stage

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:30px;margin:0 0 4px}h2{font-size:21px;margin:0 0 6px}
.sub{color:#5b6475;margin:0 0 18px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(165px,1fr));gap:10px;margin:14px 0 18px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:21px;color:#174ea6}.card span{color:#5b6475;font-size:13px}
.flow{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 20px;padding:0;list-style:none}
.flow li a{display:block;background:#174ea6;color:#fff;border-radius:14px;padding:3px 12px;
 text-decoration:none;font-size:13px}
section{background:#fff;border:1px solid #dde1e8;border-radius:10px;padding:18px 22px;margin:0 0 18px}
.lead{margin:0 0 12px;color:#333b4a}.took{color:#5b6475;font-size:13px;font-weight:normal}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13.5px}
th,td{border-bottom:1px solid #e4e7ec;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f5}
table.figures td:first-child{color:#5b6475;white-space:nowrap}
figure{margin:10px 0 16px}figure img{max-width:100%;border:1px solid #dde1e8;border-radius:6px}
figcaption{color:#5b6475;font-size:13px}
pre{background:#f3f4f7;border-radius:6px;padding:10px;overflow-x:auto;font-size:12px;line-height:1.35}
details summary{cursor:pointer;color:#174ea6;margin:4px 0}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 10px;margin:6px 0;font-size:13.5px}
ul.links{columns:2;font-size:13.5px;padding-left:18px}
a{color:#174ea6}
"""


def href(path: str) -> str:
    return escape(quote(path))


def render(stages: list[Stage], headline: list[tuple[str, str]], about: dict[str, Any]) -> str:
    """The whole page. ``headline``: (value, what) cards at the top; ``about``: the run."""
    flow = "".join(f'<li><a href="#{s.key}">{escape(s.title.split(". ", 1)[-1])}</a></li>'
                   for s in stages)  # fmt: skip
    cards = "".join(f'<div class="card"><b>{escape(v)}</b><span>{escape(w)}</span></div>'
                    for v, w in headline)  # fmt: skip
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = (
        f"The whole job on scikit-learn's digits, {escape(about['mode'])}: "
        f"{about['seconds']:.0f} s on {escape(about['machine'])}, {when}. "
        f"nimbleml {escape(about['version'])}."
    )
    body = "\n".join(section(s) for s in stages)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nimbleml demo: train → distil → optimize → sign → serve → monitor → profile → cost → deploy</title>
<style>{STYLE}</style></head>
<body><main>
<h1>nimbleml demo</h1>
<p class="sub">{sub}</p>
<div class="cards">{cards}</div>
<ul class="flow">{flow}</ul>
{body}
<p class="sub">Every figure on this page was measured by this run on this machine; the
files linked are the run's own (<a href="demo.json">demo.json</a> holds the figures).</p>
</main></body></html>
"""


def section(s: Stage) -> str:
    parts = [
        f'<section id="{escape(s.key)}"><h2>{escape(s.title)} '
        f'<span class="took">{s.seconds:.1f} s</span></h2>'
    ]
    if s.lead:
        parts.append(f'<p class="lead">{escape(s.lead)}</p>')
    if s.figures:
        rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in s.figures)
        parts.append(f'<table class="figures">{rows}</table>')
    for t in s.tables:
        head = "".join(f"<th>{escape(h)}</th>" for h in t.header)
        rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>"
                       for r in t.rows)  # fmt: skip
        parts.append(f"<table><caption style='text-align:left;color:#5b6475'>{escape(t.caption)}"
                     f"</caption><tr>{head}</tr>{rows}</table>")  # fmt: skip
    for path, caption in s.images:
        parts.append(
            f'<figure><a href="{href(path)}"><img src="{href(path)}" '
            f'alt="{escape(caption)}"></a><figcaption>{escape(caption)}</figcaption></figure>'
        )
    for caption, text in s.texts:
        parts.append(
            f"<details><summary>{escape(caption)}</summary><pre>{escape(text)}</pre></details>"
        )
    for note in s.notes:
        parts.append(f'<p class="note">{escape(note)}</p>')
    if s.links:
        items = "".join(f'<li><a href="{href(p)}">{escape(p)}</a>: {escape(w)}</li>'
                        for p, w in s.links)  # fmt: skip
        parts.append(
            f'<details open><summary>files</summary><ul class="links">{items}</ul></details>'
        )
    parts.append("</section>")
    return "\n".join(parts)


def write(out: Path, stages: list[Stage], headline: list[tuple[str, str]],
          about: dict[str, Any]) -> Path:  # fmt: skip
    path = out / "index.html"
    path.write_text(render(stages, headline, about))
    return path
