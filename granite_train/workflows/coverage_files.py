"""A coverage report's files: ``coverage.md`` and ``coverage.json`` (``granite-train coverage`` and
``add-language``'s ``report`` step write the same two)."""

from __future__ import annotations

import json
from pathlib import Path

from granite_train.text.coverage import CoverageReport


def write_coverage_report(report: CoverageReport, folder: str | Path) -> tuple[Path, Path]:
    """Write ``report`` as ``coverage.md`` and ``coverage.json`` (UTF-8) in ``folder``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    markdown, data = folder / "coverage.md", folder / "coverage.json"
    markdown.write_text(report.to_markdown(), encoding="utf-8")
    data.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return markdown, data


__all__ = ["write_coverage_report"]
