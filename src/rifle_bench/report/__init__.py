"""Tables of the RIFLE paper built from the files that training runs leave behind.

The report reads run directories only (see ``records``), so it works on any mix of finished, failed and
still running sweeps, and on several sweeps at once. Modules: ``records`` (run directories), ``stats``
(means over seeds, Welch's test), ``selection`` (which variant a table reports), ``tables`` (the paper's
tables and their grids), ``labels`` (names and order), ``render`` (Markdown, LaTeX), ``writer``
(``write_report``), ``cli`` (``rifle-bench-report``).
"""

from rifle_bench.report.cli import main
from rifle_bench.report.records import COMPLETE, FAILED, INCOMPLETE, RunRecord, collect_runs, variant_label
from rifle_bench.report.tables import RESULT_COLUMNS, TABLES
from rifle_bench.report.writer import ReportInputError, ReportSummary, write_report

__all__ = ["COMPLETE", "FAILED", "INCOMPLETE", "RESULT_COLUMNS", "TABLES", "ReportInputError", "ReportSummary",
           "RunRecord", "collect_runs", "main", "variant_label", "write_report"]
