"""The report of a run: figures (matplotlib, nilearn surfaces) and one self-contained HTML page.

``build_report(run_dir)`` reads ``tables/``, ``encoding/`` and ``models/`` of a run directory,
writes ``figures/*.png`` and returns the path of ``report.html``.
"""

from __future__ import annotations

from cortexcl.report.html import build_report

__all__ = ["build_report"]
