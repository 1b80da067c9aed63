"""`cli.py parity`'s job: check the inputs, compare both backends (or, with --quantize, the QLoRA
comparison of jobs/qparity.py), print the report and write parity.json. Returns whether it passed;
the caller exits 1 when it did not."""
from __future__ import annotations

from pathlib import Path

from backends.capabilities import PARITY_PAIR
from common.errors import UserError


def check_parity(adapter, model, prompts: list[str], max_new_tokens: int, tol_logit, tol_kl, runs, output,
                 quantize, dequantized_from: str, echo, warn) -> bool:
    """Both backends on the same base + adapter: max |Δlogit|, mean KL, both greedy texts."""
    from common.runs.ownership import check_output_file, is_parity_report
    from common.runs.run_dir import RunDir
    from jobs.parity import MAX_ABS_LOGIT_TOL, MEAN_KL_TOL, PROMPTS, run_parity
    from jobs.session import base_for, open_model
    if output:
        check_output_file(output, "--output", inputs=[adapter, model], ours=is_parity_report)
    model = base_for(model, adapter, warn)
    for d in runs or ():
        if not RunDir(d).read_log():  # a missing or empty run would compare nothing and PASS
            raise UserError("no training log here (log.jsonl with train steps)", where=f"--runs {d}",
                            fix="pass two run directories written by `cli.py train`")
    tols = (tol_logit if tol_logit is not None else MAX_ABS_LOGIT_TOL, tol_kl if tol_kl is not None else MEAN_KL_TOL)
    if dequantized_from != "both" and not quantize:
        raise UserError("only applies to QLoRA parity", where="--dequantized-from",
                        fix="add --quantize 4bit, or drop --dequantized-from")
    if quantize:
        return check_qlora_parity(adapter, model, prompts or PROMPTS, max_new_tokens, tols, dequantized_from,
                                  output, runs, echo)
    sessions = {b: open_model(b, model, adapter=adapter) for b in PARITY_PAIR}
    rep = run_parity(sessions, prompts or PROMPTS, max_new_tokens, *tols)
    if rep["family"].get("warning"):
        warn(f"warning: {rep['family']['warning']}")
    _print_prompts(rep, echo)
    echo(f"max |Δlogit| = {rep['max_abs_logit_diff']:.3e} (tolerance {rep['tolerance']['max_abs_logit_diff']:.0e}); "
         f"mean KL = {rep['mean_kl']:.3e} (tolerance {rep['tolerance']['mean_kl']:.0e}); "
         f"same greedy text: {rep['same_greedy_text']}")
    return _finish(rep, runs, output, echo)


def _print_prompts(rep: dict, echo) -> None:
    """Each prompt's gap and both greedy texts, then the long probe's gap."""
    for r in rep["prompts"]:
        echo(f"prompt: {r['prompt'][:70]!r}\n  max|Δlogit| {r['max_abs_logit_diff']:.2e}  KL {r['mean_kl']:.2e}  "
             f"same text: {r['same_text']}\n  mlx:   {r['mlx_text'][:100]!r}\n  torch: {r['torch_text'][:100]!r}")
    if rep["long_probe"]:
        lp = rep["long_probe"]
        echo(f"long probe: {lp['tokens']} positions ({', '.join(lp['why'])})\n  max|Δlogit| "
             f"{lp['max_abs_logit_diff']:.2e}  KL {lp['mean_kl']:.2e}")


def _finish(rep: dict, runs, output, echo) -> bool:
    """The two runs' loss-curve gap (QLoRA runs differ by what the two quantizers do to the base),
    parity.json, and the verdict line."""
    from common.runs.io import write_json
    if runs:
        from common.runs.run_dir import RunDir
        from jobs.parity import loss_curve_gap
        rep["loss_curves"] = lc = loss_curve_gap(RunDir(runs[0]).read_log(), RunDir(runs[1]).read_log())
        echo(f"loss curves: {lc.get('steps')} steps, max |Δloss| = {lc.get('max_abs_loss_gap', float('nan')):.3e}")
    if output:
        write_json(Path(output), rep)
    echo("PARITY: PASS" if rep["pass"] else "PARITY: FAIL")
    return bool(rep["pass"])


def check_qlora_parity(adapter, model, prompts, max_new_tokens, tols, sources, output, runs, echo) -> bool:
    """`parity --quantize 4bit` (jobs/qparity.py): quantization error per backend, then adapter
    parity over the same de-quantized weights."""
    from jobs.qparity import BACKENDS, qlora_parity
    rep = qlora_parity(model, adapter, prompts, max_new_tokens, *tols,
                       sources=BACKENDS if sources == "both" else (sources,))
    q = rep["quantization"]
    for b in BACKENDS:
        echo(f"quantization error, {b} ({q[b]['quantizer']}) against its {q[b]['against']}: "
             f"max |Δlogit| {q[b]['max_abs_logit_diff']:.3g}, mean KL {q[b]['mean_kl']:.3g}, "
             f"same argmax {100 * q[b]['argmax_agree']:.1f}%")
    for name, d in rep["schemes"].items():
        echo(f"base damage, {d['backend']} {name}: mean KL {d['mean_kl']:.3g}, same argmax "
             f"{100 * d['argmax_agree']:.1f}% ({d['positions']} positions), base weights "
             f"{d['base_weight_bytes'] / 2**20:.1f} MiB")
    x = q["mlx_4bit_vs_torch_nf4"]
    echo(f"mlx 4-bit vs torch NF4 (different quantizers, not expected to agree): max |Δlogit| "
         f"{x['max_abs_logit_diff']:.3g}, mean KL {x['mean_kl']:.3g}, same argmax {100 * x['argmax_agree']:.1f}%")
    for src, r in rep["same_weights"].items():
        echo(f"same weights (the {src} 4-bit base, de-quantized) on mlx and torch: max |Δlogit| "
             f"{r['max_abs_logit_diff']:.3e} (tolerance {r['tolerance']['max_abs_logit_diff']:.0e}); mean KL "
             f"{r['mean_kl']:.3e}; same greedy text: {r['same_greedy_text']} -> {'PASS' if r['pass'] else 'FAIL'}")
    return _finish(rep, runs, output, echo)
