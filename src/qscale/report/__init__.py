"""qscale.report: fits, Markdown summaries, JSON and PNG plots of finished studies."""

from qscale.report.qid import MethodFit, Report, ReportConfig, fit_method, predict_qid, tokens_for_qid, write_qid_report

__all__ = ["MethodFit", "Report", "ReportConfig", "fit_method", "predict_qid", "tokens_for_qid", "write_qid_report"]
