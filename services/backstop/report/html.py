"""A self-contained HTML report: the summary table and the charts, embedded (no external files or scripts)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from backstop.entrypoints.whatif import RunMetrics
from backstop.report.charts import charts


def write_report(path: Path, title: str, runs: Sequence[tuple[str, RunMetrics]], facts: Sequence[tuple[str, str]],
                 table: str) -> dict[str, Path]:
    """Writes `path` (HTML) and the charts as PNG files beside it; returns the PNG paths by chart name."""
    images = charts(runs)
    pngs = {}
    for name, data in images.items():
        png = path.with_name(f"{path.stem}-{name}.png")
        png.write_bytes(data)
        pngs[name] = png
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    figures = "".join(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                      f'{base64.b64encode(data).decode()}"></figure>' for name, data in images.items())
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}th,td{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}
pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1><table>{rows}</table><pre>{html.escape(table)}</pre>{figures}</body></html>
""", encoding="utf-8")
    return pngs
