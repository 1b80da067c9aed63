"""Which base an adapter was trained on, read alike from every layout it comes in, and the one
check that a base about to be loaded has those weights: an adapter on other weights loads, runs
and answers wrong without any error, so every layout (common, the run's mlx/ folder, a plain PEFT
or `mlx_lm lora` adapter) goes through `check_base`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common.adapters.format import CONFIG, META, MLX_WEIGHTS
from common.errors import AdapterError, UserError
from common.runs.io import sha256_file
from common.models.quantize import SCHEMES, recorded_scheme


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}  # load_adapter reports a damaged file


def _run_meta(adapter: Path) -> dict:
    """twinlora.json of the adapter, else that of the folder above when this is a run's mlx/ folder
    (mlx-lm's own layout, written beside ours) and that twinlora.json lists these very weights."""
    own = _read(adapter / META)
    if own:
        return own
    above = _read(adapter.parent / META)
    files = above.get("files") if isinstance(above.get("files"), dict) else {}
    listed = files.get("mlx/" + MLX_WEIGHTS)
    if listed and (adapter / MLX_WEIGHTS).is_file() and listed == sha256_file(adapter / MLX_WEIGHTS):
        return above
    return {}


def recorded(adapter: str | Path) -> dict:
    """What the adapter's files say of its base: "names" (most precise first: twinlora.json's name
    and directory, PEFT's base_model_name_or_path, our mlx config's base, mlx-lm's `model`) and
    "sha256" of its weights (None when no file records it)."""
    adapter = Path(adapter)
    meta, cfg = _run_meta(adapter), _read(adapter / CONFIG)
    base = meta.get("base_model") if isinstance(meta.get("base_model"), dict) else {}
    ours = cfg.get("twinlora") if isinstance(cfg.get("twinlora"), dict) else {}
    names = [base.get("name"), base.get("path"), cfg.get("base_model_name_or_path"), ours.get("base_model"),
             cfg.get("model")]
    sha = base.get("sha256") or ours.get("base_sha256")
    return {"names": list(dict.fromkeys(n for n in names if isinstance(n, str) and n)),
            "sha256": sha if isinstance(sha, str) and sha else None}


def trained_scheme(adapter: str | Path) -> str | None:
    """The quantization scheme the adapter was trained on (twinlora.json's `quantize_scheme`; older
    adapters: what their model.quantize meant then); None: a float base, or nothing recorded."""
    meta = _run_meta(Path(adapter))
    return recorded_scheme(meta, meta.get("backend")) if meta else None


def check_adapter_scheme(adapter: str | Path, scheme: str | None, asked: str, merging: bool) -> None:
    """An adapter trained on one quantized base continues (`--init-adapter`, E223) or merges
    (`merge --quantize`, E224) on that base only; to or from a float base stays allowed (the usual
    QLoRA merge)."""
    trained = trained_scheme(adapter)
    if not trained or not scheme or trained == scheme or trained not in SCHEMES:
        return
    other = SCHEMES[trained].backend
    if merging:
        what, fix = "the merge would fold it into", (f"merge with --backend {other} --quantize {trained} (its base), "
                                                     "or without --quantize into the float base")
    else:
        what, fix = "training would continue it on", (f"set model.quantize: {trained} with --backend {other} (its "
                                                      "base), or unset model.quantize to continue on the float base")
    raise AdapterError(f"the adapter was trained on a base quantized with {trained}, and {asked} means {scheme}: "
                       f"{what} other base weights", where=str(adapter), fix=fix)


def local_dir(name: str) -> Path | None:
    """The local model directory `name` stands for, without downloading anything (a hub id only
    when it is already in the Hugging Face cache); None when it is not here."""
    from common.models.resolve import EMBEDDED, is_hub_id, resolve_model
    try:
        if name in EMBEDDED or Path(name).expanduser().is_dir():
            return resolve_model(name)
        if is_hub_id(name):
            from huggingface_hub import snapshot_download
            return resolve_model(snapshot_download(name, local_files_only=True))
    except (UserError, OSError, ValueError):  # damaged, or (huggingface_hub) not in the cache
        return None
    return None


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


MISMATCH_FIX = ("pass the base model the adapter was trained on (--model); to merge it anyway when you know the "
                "weights are compatible: merge --allow-base-mismatch")


def check_base(adapter: str | Path, model_dir: Path, model: str, allow_mismatch: bool = False, warn=_warn,
               where: str | None = None, fix: str = MISMATCH_FIX) -> None:
    """Refuse `adapter` on `model` (resolved to `model_dir`) unless its weights are the recorded
    base's: by the recorded weight hash, else by hashing the recorded base when it is here. When
    nothing recorded can be found here, say in one line that nothing was checked. `where`/`fix`:
    how the refusal names the adapter and the way out (train --init-adapter has no --model)."""
    from common.models.resolve import weights_hash
    if allow_mismatch:
        return
    rec = recorded(adapter)
    names, want = rec["names"], rec["sha256"]
    trained_on = names[0] if names else "?"
    if want is None:
        for name in names:
            d = local_dir(name)
            if d is not None:
                if d.resolve() == Path(model_dir).resolve():
                    return
                want = weights_hash(d)
                break
        else:
            what = (f"was trained on base {trained_on!r}, which is not here" if names else
                    "records neither its base nor the base's weight hash")
            warn(f"[twinlora] warning: {adapter}: the adapter {what}, so nothing checks that {model} is that base "
                 "(on other weights it loads and answers wrong)")
            return
    have = weights_hash(model_dir)
    if want != have:
        raise AdapterError(f"adapter was trained on base {trained_on} (weights sha256 {want[:12]}…), not on {model} "
                           f"(sha256 {have[:12]}…)", where=where or str(adapter), fix=fix)
