"""The run configuration: the config record and its loading and checks (`schema.py`), the names of
its keys and sections (`names.py`), a strict YAML loader that refuses duplicate keys
(`yaml_strict.py`), and what may change between a checkpoint's config and a resumed run's
(`resume.py`).

Imports from common/: `errors`, `models.quantize` (the scheme names a config may give) and
`runs.tracking` (the trackers `report_to` may name); never a backend, a job or the CLI.
"""
