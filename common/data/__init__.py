"""Data layer: input shapes → one record type, recipes for the seed use cases, splits, manifests,
and the one reader of Jinja files (`jinja_files.py`: recipes render their prompts with it, training's
templates read chat templates through it). Imports from common/ only `errors` and `runs` (io,
ownership); never `training` or anything above.
"""
