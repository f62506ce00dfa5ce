"""The self-contained HTML and Markdown report of a run folder (`report.build.run_report`).

May import: the packages below it (`core` ... `analysis`).
"""
