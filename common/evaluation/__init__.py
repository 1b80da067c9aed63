"""Evaluation arithmetic, framework-free: the metrics and their one registry (`metrics.py`,
`registry.py`: name, options, direction, scale, chart / sweep / study roles), citations, bootstrap
intervals, reports and plots (every PNG), failure listings, forgetting checks, run-to-run
variability and few-shot prompts.

Imports from common/: `errors`, `runs.io` (writing reports), `data` (the example record) and
`models` (model directories for model-based metrics); never a backend, a job or the CLI.
"""
