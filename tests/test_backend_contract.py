"""`backends/base.py` is the real contract: both implementations have every method of the
`Backend` protocol with the same parameters (names, kinds, defaults), the attributes it names,
and the capabilities `backends/capabilities.py` declares for them; every protocol method is one
the jobs call."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from backends import get_backend, process_group
from backends.base import Backend, BatchGenerator, ProcessGroup
from backends.capabilities import DECLARED, capabilities

ROOT = Path(__file__).resolve().parents[1]


def _methods(proto) -> dict:
    own = {k: v for k, v in vars(proto).items() if inspect.isfunction(v)}
    return {k: v for k, v in own.items() if not k.startswith("_") or k == "__init__"}


def _params(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_implementation_has_the_protocol_methods_and_signatures(name):
    cls = get_backend(name)
    for method, proto_fn in _methods(Backend).items():
        assert hasattr(cls, method), f"{name} lacks {method}"
        assert _params(getattr(cls, method)) == _params(proto_fn), f"{name}.{method} differs from the protocol"


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_process_group_has_the_protocol_functions(name):
    """backends/<name>/distributed.py: the ProcessGroup functions (the protocol's methods without self)."""
    group = process_group(name)
    for fn, proto_fn in _methods(ProcessGroup).items():
        if fn == "__init__":   # a module has none
            continue
        assert inspect.isfunction(getattr(group, fn, None)), f"{name} process group lacks {fn}"
        assert _params(getattr(group, fn)) == _params(proto_fn)[1:], f"{name}.{fn} differs from the protocol"


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_rank_environments_and_single_process(name, tmp_path, monkeypatch):
    """Each rank's environment names its rank as env_rank reads it back; with no launcher
    environment a process joins no group (and checks nothing)."""
    group = process_group(name)
    envs = group.rank_envs(3, tmp_path, [29501, 29502, 29503])
    for r, env in enumerate(envs):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert group.env_rank() == str(r)
    for var in ("WORLD_SIZE", "RANK", "MLX_RANK", "MLX_HOSTFILE", "MLX_IBV_DEVICES", "MLX_JACCL_COORDINATOR",
                "OMPI_COMM_WORLD_SIZE", "NCCL_HOST_IP"):
        monkeypatch.delenv(var, raising=False)
    assert group.env_rank() is None
    assert group.join(lambda world: pytest.fail(f"checked a world of {world}")) is None


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_capabilities_match_the_implementation(name):
    cls = get_backend(name)
    caps = capabilities(name)
    assert cls.capabilities is caps is DECLARED[name] and caps.name == name
    assert caps.batched_generation == hasattr(cls, "generate_batch")
    if caps.batched_generation:
        assert _params(cls.generate_batch) == _params(BatchGenerator.generate_batch)


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_instance_has_the_protocol_attributes(name, tiny_model):
    be = get_backend(name)(tiny_model)
    for attr in Backend.__annotations__:
        assert hasattr(be, attr), f"{name} backend has no {attr}"
    assert be.sharded is False and isinstance(be.notes, list)


def test_every_protocol_method_is_called_by_a_job():
    """The protocol is trimmed to what the jobs (and the CLI, the benchmarks) call."""
    sources = [ROOT / "cli.py", *(ROOT / "jobs").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    text = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    unused = [m for proto in (Backend, ProcessGroup) for m in _methods(proto)
              if m != "__init__" and not re.search(rf"\.{m}\(", text)]
    assert not unused


def test_a_missing_capability_is_refused_in_one_line():
    from common.config.schema import Config
    from common.errors import BackendError
    cfg = Config()
    cfg.training.parallel = "fsdp"
    capabilities("torch").check_training(cfg.training)
    with pytest.raises(BackendError) as e:
        capabilities("mlx").check_training(cfg.training)
    assert str(e.value) == ("training.parallel: fsdp (sharded training) is implemented on the torch backend only"
                            " — fix: use training.parallel: ddp with --backend mlx (every process holds the model)")
