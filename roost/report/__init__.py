"""`roost report`: a self-contained HTML page and PNG figures describing a roost output
(lengths, scores, dedup similarity, rejects, iterations, sample rows), and a markdown section
of the same numbers for a dataset card."""
from roost.report.html import write_report
from roost.report.markdown import card_markdown
from roost.report.plots import figures
from roost.report.summary import Histogram, Summary, summarize

__all__ = ["Histogram", "Summary", "card_markdown", "figures", "summarize", "write_report"]
