"""The option types and the options several `cli.py` commands share, each declared once with its
one default: click only (no framework, no job), imported by cli.py alone."""
from __future__ import annotations

import click

from backends import NAMES as BACKEND_NAMES  # the backend names; no framework
from jobs.defaults import MAX_NEW_TOKENS     # per-command answer lengths; no imports

DEFAULT_BACKEND = "torch"


class BackendChoice(click.Choice):
    """--backend: an unknown name is a one-line UserError (with the fix), like every other bad input."""

    def convert(self, value, param, ctx):
        from backends import canonical
        canonical(value)  # BackendError naming --backend and the valid names
        return super().convert(value, param, ctx)


BACKENDS = BackendChoice(list(BACKEND_NAMES))


class Finite(click.FloatRange):
    """A float range that also refuses nan and inf: click's FloatRange lets nan through every bound."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if rv != rv or rv in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


# The numeric option types, declared with each option (tests/test_numeric_options.py feeds them all
# -1, 0, 10**12, nan, inf and text).
COUNT = click.IntRange(min=1)                  # steps, tokens, items: at least one
SEED = click.IntRange(0, 2 ** 32 - 1)          # what numpy, torch and mlx all accept
POSITIVE = Finite(min=0.0, min_open=True)      # tolerances, GiB, minutes


def output_option(help: str | None = None, *, required: bool = False, default: str | None = None,
                  directory: bool = False):
    """`--output/-o`: where a command writes (a directory, or parity's file)."""
    return click.option("--output", "-o", required=required, default=default, show_default=default is not None,
                        type=click.Path(file_okay=False) if directory else click.Path(), help=help)


def backend_option(help: str | None = None):
    """`--backend/-b`: the one backend a command runs on (torch unless told)."""
    return click.option("--backend", "-b", type=BACKENDS, default=DEFAULT_BACKEND, show_default=True, help=help)


def base_model_option(first_adapter: bool = False, more: str = ""):
    """`--model`: the base; left out, jobs.session.base_for takes the one the adapter records."""
    which = "the first --adapter" if first_adapter else "the adapter"
    return click.option("--model", help=f"Base model (default: the base {which} records, else embedded){more}.")


def adapter_option(help: str, *, required: bool = False):
    """`--adapter`: one adapter directory."""
    return click.option("--adapter", required=required, type=click.Path(), help=help)


def metrics_help(defaults: dict[str, tuple[str, ...]] | None = None, lead: str = "Comma list of") -> str:
    """--metrics help read from the metric registry: the names, and each kind of records' defaults."""
    from common.evaluation.registry import METRICS, RECORD_KINDS
    text = f"{lead} {','.join(METRICS)}"
    if defaults is None:
        return text
    by_kind = "; ".join(f"{RECORD_KINDS[kind]}: {','.join(names)}" for kind, names in defaults.items())
    return f"{text} (default, by what the records carry: {by_kind})."


def max_new_tokens_option(command: str, help: str | None = None):
    """`--max-new-tokens` with `command`'s default from jobs.defaults.MAX_NEW_TOKENS."""
    return click.option("--max-new-tokens", default=MAX_NEW_TOKENS[command], show_default=True, type=COUNT,
                        help=help)
