"""Figures of the evaluations beyond single-subject encoding, each drawn when its tables exist."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cortexcl.report.figures import ReportFigure, RunResults, timed
from cortexcl.report.transfer_figures import cross_subject_heatmaps, pooled_vs_cross_scatter

Drawer = Callable[[RunResults, Path], ReportFigure | None]
DRAWERS: tuple[Drawer, ...] = (cross_subject_heatmaps, pooled_vs_cross_scatter)


def evaluation_figures(results: RunResults) -> list[ReportFigure]:
    """Draw the figure of every evaluation the run holds tables for, in report order."""
    out_dir = results.path("figures")
    figures = (timed(lambda draw=draw: draw(results, out_dir)) for draw in DRAWERS)
    return [figure for figure in figures if figure is not None]
