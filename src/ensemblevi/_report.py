"""The run report: one self-contained HTML file (figures embedded, no external assets)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.reading{background:#f6f9ff;border-left:4px solid #4a7bd0;padding:.6em 1em}
.meta{color:#666;font-size:.85em}
"""


def _table(frame: pd.DataFrame, max_rows: int = 30, index: bool = False) -> str:
    table = frame.head(max_rows).to_html(
        index=index, float_format=lambda v: f"{v:.3g}", border=0, escape=True
    )
    return f"<div style='overflow-x:auto'>{table}</div>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_report(
    path: str | os.PathLike,
    title: str,
    reading: list[str],
    sections: list[tuple[str, list]],
    meta: dict,
) -> Path:
    """Write the report atomically.

    ``sections`` is a list of ``(heading, items)``; an item is a DataFrame (a table), a
    ``Path`` to a PNG (embedded), or a string (a paragraph, escaped).
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{html.escape(meta.get('summary', ''))}</p>",
        "<h2>What the results say</h2><div class='reading'><ul>",
        *(f"<li>{html.escape(line)}</li>" for line in reading),
        "</ul></div>",
    ]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, pd.DataFrame):
                parts.append(_table(item))
            elif isinstance(item, Path):
                parts.append(_image(item, item.stem))
            else:
                parts.append(f"<p>{html.escape(str(item))}</p>")
    rows = pd.DataFrame(
        [(k, v) for k, v in meta.items() if k != "summary"], columns=["setting", "value"]
    )
    parts += ["<h2>Configuration, versions, seeds, timings</h2>", _table(rows, 200)]
    parts.append("</body></html>")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path
