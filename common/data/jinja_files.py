"""Reading and rendering Jinja files: the one reader of every Jinja file twinlora reads (a
data.template chat template, a recipe's prompt files) and the one sandboxed environment for the
ones it renders itself. Here, in data/, because recipes render their prompts while preparing data,
and training's templates read chat templates through it (training → data, never back).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError


def jinja_env():
    """The one Jinja environment for templates twinlora renders itself (recipe prompt files):
    sandboxed and immutable, as transformers renders chat templates, so a template file can read
    its variables but not reach Python (no `__class__.__mro__`, no calling arbitrary methods)."""
    global _ENV
    if _ENV is None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        _ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                             keep_trailing_newline=False)
    return _ENV


_ENV = None


@dataclass(frozen=True)
class TemplateFile:
    """A Jinja file read once: `text` for a chat template (transformers renders it, in its own
    sandbox), `render` for a prompt template twinlora renders in `jinja_env`."""
    path: Path
    text: str

    def render(self, variables: dict) -> str:
        """The template's output, stripped; a bad template is a ConfigError naming the file."""
        import jinja2
        try:
            return _compiled(self.path, self.text).render(**variables).strip()
        except jinja2.UndefinedError as exc:
            raise ConfigError(f"template uses an undefined variable ({exc.message})", where=str(self.path),
                              fix=f"available variables: {', '.join(sorted(variables))}") from exc
        except jinja2.exceptions.SecurityError as exc:
            raise ConfigError(f"template tried an operation the sandbox refuses ({exc})", where=str(self.path),
                              fix="a prompt template may only use its variables and Jinja filters") from exc


@functools.lru_cache(maxsize=32)  # slds renders each record several times while fitting it
def _compiled(path: Path, text: str):
    import jinja2
    try:
        return jinja_env().from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"Jinja syntax error: {exc.message}", where=f"{path}:{exc.lineno}",
                          fix="repair the template") from exc


def load_template(path: str | Path, where: str | None = None,
                  fix: str = "give the path of a Jinja template", check: bool = False) -> TemplateFile:
    """The one reader of Jinja files (chat templates and recipe prompts). `check`: compile it
    syntax now, so a broken prompt file fails before any record is read."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("template file not found", where=where or str(p), fix=fix)
    loaded = TemplateFile(p, p.read_text(encoding="utf-8"))
    if check:
        _compiled(loaded.path, loaded.text)
    return loaded
