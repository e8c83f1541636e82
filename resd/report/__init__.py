"""Self-contained HTML reports of training runs (``resd report``)."""

from resd.report.build import add_report_parser, choose_metrics, write_report
from resd.report.loading import RunData, load_run

__all__ = ["RunData", "add_report_parser", "choose_metrics", "load_run", "write_report"]
