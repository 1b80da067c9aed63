"""`serve --engine vllm`: check the adapters against vLLM's LoRA limits here, in seconds, before
vLLM loads the base on a GPU box and refuses them there; then start vLLM's OpenAI server with
them (`vllm serve --enable-lora --lora-modules NAME=DIR ...`), or print that command."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from common.errors import AdapterError, BackendError, UserError

# vLLM's accepted --max-lora-rank values (vllm.config.lora, MaxLoRARanks).
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The decoder linears vLLM's LoRA layers wrap (it packs q/k/v into qkv_proj and gate/up into
# gate_up_proj); embeddings, the LM head and norms are not served as LoRA modules.
VLLM_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


def preflight(adapters: list[tuple[str, str]], model: str, model_dir: Path | None, max_lora_rank: int) -> list[str]:
    """Every reason vLLM would refuse these adapters (PEFTHelper.validate_legal and its LoRA
    layers), one short phrase each, all at once; [] when it can serve them."""
    from common.adapters.format import CONFIG, detect_format
    problems = [] if max_lora_rank in VLLM_RANKS else [
        f"--max-lora-rank {max_lora_rank} is not one vLLM accepts ({', '.join(map(str, VLLM_RANKS))})"]
    for name, path in adapters:
        if detect_format(Path(path)) != "common":
            problems.append(f"{name}: in mlx-lm's layout, and vLLM reads PEFT adapters "
                            f"(cli.py convert {path} OUT --to common)")
            continue
        cfg = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
        if int(cfg.get("r", 0)) > max_lora_rank:
            problems.append(f"{name}: rank {cfg['r']} > --max-lora-rank {max_lora_rank}")
        if cfg.get("use_dora"):
            problems.append(f"{name}: DoRA (use_dora), which vLLM does not serve (cli.py merge folds it into the base)")
        if cfg.get("bias", "none") != "none" or cfg.get("modules_to_save"):
            problems.append(f"{name}: bias or modules_to_save, which vLLM does not serve")
        targets = {t.rsplit(".", 1)[-1] for t in cfg.get("target_modules") or []}
        if targets - VLLM_TARGETS:
            problems.append(f"{name}: target modules {', '.join(sorted(targets - VLLM_TARGETS))} "
                            f"(vLLM serves LoRA on {', '.join(sorted(VLLM_TARGETS))})")
        other = _other_base(path, model, model_dir)
        if other:
            problems.append(f"{name}: {other}")
    return problems


def _other_base(adapter: str, model: str, model_dir: Path | None) -> str | None:
    """Why the adapter is not for this base (weights hash when the base is here, else names)."""
    from common.adapters.base import check_base, recorded
    if model_dir is not None:
        try:
            check_base(adapter, model_dir, model, warn=lambda m: None)
        except AdapterError as exc:
            return exc.what
        return None
    names = recorded(adapter)["names"]
    return None if not names or model in names else f"trained on base {names[0]}, not {model}"


def vllm_command(model: str, adapters: list[tuple[str, str]], host: str, port: int, api_key: str | None,
                 max_lora_rank: int) -> list[str]:
    cmd = ["vllm", "serve", model]
    if adapters:
        cmd += ["--enable-lora", "--lora-modules", *[f"{n}={Path(p).resolve()}" for n, p in adapters],
                "--max-lora-rank", str(max_lora_rank), "--max-loras", str(len(adapters))]
    cmd += ["--host", host, "--port", str(port)]
    return cmd + (["--api-key", api_key] if api_key else [])


def hand_off(model: str | None, adapters: list[tuple[str, str]], host: str, port: int, api_key: str | None,
             max_lora_rank: int, print_command: bool, echo) -> None:
    """Check, then exec vLLM (or print its command); the one line error lists every problem."""
    from common.errors import ModelError
    from common.models.resolve import EMBEDDED, resolve_model
    from jobs.serving import check_names
    from jobs.session import base_for
    model = base_for(model, adapters[0][1] if adapters else None, lambda m: echo(m, err=True))
    check_names(adapters, model)
    try:
        model_dir = resolve_model(model)
    except ModelError:
        if model in EMBEDDED or Path(model).expanduser().exists():
            raise
        model_dir = None  # a hub id not downloaded here: vLLM fetches it; the base is checked by name
    problems = preflight(adapters, model, model_dir, max_lora_rank)
    if problems:
        raise UserError("vLLM cannot serve this: " + "; ".join(problems), where="--engine vllm",
                        fix="fix those adapters as said, or serve them with --engine twinlora (any rank, DoRA, targets)")
    local = model_dir is not None and (model in EMBEDDED or Path(model).expanduser().exists())
    cmd = vllm_command(str(model_dir) if local else model, adapters, host, port, api_key, max_lora_rank)
    if print_command:
        echo(shlex.join(cmd))
        return
    if shutil.which("vllm") is None:
        raise BackendError("vLLM is not installed in this environment", where="--engine vllm",
                           fix="install it where it runs (pip install vllm, best in its own environment) and run "
                               "the command that --print-command shows, or serve with --engine twinlora")
    import os
    os.execvp(cmd[0], cmd)
