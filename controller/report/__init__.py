"""The bench report: ``storage_load_bench.csv``, ``.md`` and ``.png`` in one directory.

The directory keeps every sample it has ever reported in ``storage_load_bench.jsonl``
(merged by sample id), so re-running the report, from the same store or another, adds to
it and loses nothing; the CSV, markdown and plot are rendered from that archive.

The markdown answers the questions the bench exists for, with numbers computed here: did
pre-warm meaningfully reduce cold load time, how big is its overhead against the time it
saves, and is the trade worth it for a service.

- ``statistics``: percentiles, ``Stats``, loads grouped by model, loader, scheduler, mode;
- ``comparison``: pre-warm vs no pre-warm (``Comparison``) and the verdict in sentences;
- ``markdown``: the markdown report and the one-line headline;
- ``plot``: the plot (matplotlib, the 'bench' extra, imported only when plotting);
- ``directory``: the CSV, the archive, and ``write_report`` that renders them all.
"""

from controller.report.directory import CSV_COLUMNS, ReportPaths, filter_samples, write_report
from controller.report.markdown import headline

__all__ = ["CSV_COLUMNS", "ReportPaths", "filter_samples", "headline", "write_report"]
