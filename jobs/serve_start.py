"""`cli.py serve`'s job: check the request, then hand the adapters to vLLM or load the base and
its adapters once and serve them (jobs/openai_api.py) until stopped."""
from __future__ import annotations

from common.errors import UserError
from jobs.answering import named_adapter


def start_serving(model, adapters: list[str], backend: str, host: str, port: int, api_key, queue_size: int,
                  default_max_tokens: int, engine: str, max_lora_rank: int, print_command: bool,
                  adapter_roots: list[str], echo, warn) -> None:
    """Serve the base and each "[NAME=]DIR" adapter (engine twinlora), or start vLLM with them."""
    named = [named_adapter(a) for a in adapters]
    if engine == "vllm":
        from jobs.vllm_handoff import hand_off
        if adapter_roots:
            raise UserError("vLLM's runtime loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING) takes adapters from any "
                            "path, so the roots could not be enforced", where="--allow-adapter-root",
                            fix="drop --allow-adapter-root with --engine vllm, or serve with --engine twinlora")
        return hand_off(model, named, host, port, api_key, max_lora_rank, print_command, echo)
    from jobs.openai_api import serve as run_server
    from jobs.serving import adapter_roots as allowed_roots
    from jobs.serving import host_warning, listen, load_served
    roots = allowed_roots(adapter_roots)
    warning = host_warning(host, api_key)
    if warning:
        warn(warning)
    sock = listen(host, port)
    served = load_served(backend, model, named, lambda m: echo(m, err=True))
    run_server(served, sock, api_key, queue_size, default_max_tokens, echo, roots)
