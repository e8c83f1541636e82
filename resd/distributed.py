"""Multi-process training on PyTorch's own engine: ``torchrun`` + ``torch.distributed`` + FSDP2.

Launch with ``torchrun --nproc_per_node N -m resd.cli train ...``. Each rank:

- generates and scores its contiguous share of the batch's prompts (every sequence has its own
  sampling seed, so the samples are those a single process would draw), then all ranks exchange
  the samples, so teacher contexts, demonstrations and RESD's playbook are computed identically
  everywhere;
- trains on its share of the samples with the student and teacher sharded by FSDP2 (each decoder
  layer, then the root), gradients summed across ranks, so one optimizer step equals the
  single-process step on the whole batch;
- generates with an unsharded replica of the student that receives the new weights after every
  optimizer step (the same contract a colocated vLLM engine has).

Every rank must call the same collectives in the same order with matching arguments. The helpers
of :class:`DistInfo` keep that promise even where ranks hold different data (``all_reduce_sum``
agrees on the keys first), and a collective that does not complete within ``dist.timeout_s`` fails
with a :class:`CollectiveError` naming the step instead of hanging.

Everything here is a no-op in a single process.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist


DEFAULT_TIMEOUT_S = 1800.0  # torch's own default for gloo and NCCL
T = TypeVar("T")


class CollectiveError(RuntimeError):
    """A collective failed or timed out: the ranks' calls no longer line up, or a rank died or hangs."""


def is_collective_failure(error: BaseException) -> bool:
    """Whether an exception comes from a failed or timed-out collective (gloo, NCCL or the c10d store)."""
    if isinstance(error, CollectiveError) or isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("Timed out waiting", "gloo", "NCCL", "Connection closed by peer", "Connection reset"))


@dataclasses.dataclass
class DistInfo:
    """Where this process stands. ``world == 1`` means single-process (nothing is initialized).

    ``where`` says what the process is doing ("training step 3", ...); a failed collective names it.
    """

    rank: int = 0
    world: int = 1
    mesh: Any = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    where: str = "start-up"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (the first ranks get one more when uneven)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def collective_error(self, what: str, error: BaseException) -> CollectiveError:
        """The error to raise when collective ``what`` failed: it names the step, the rank and the limit."""
        return CollectiveError(
            f"{self.where}: collective {what} failed on rank {self.rank} of {self.world} (limit dist.timeout_s="
            f"{self.timeout_s:g} s): the ranks' collectives no longer line up, or another rank died or hangs: {error}")

    def _collective(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except CollectiveError:
            raise
        except Exception as e:  # gloo raises RuntimeError on a timeout, NCCL DistBackendError
            raise self.collective_error(what, e) from e

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        self._collective("all_gather", lambda: dist.all_gather_object(out, obj))
        return out

    def all_reduce_max(self, value: int) -> int:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.long)
        self._collective("all_reduce(max)", lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
        return int(t.item())

    def all_reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sums of ``values`` over the ranks. The ranks first agree on the keys (a key missing on a rank
        counts 0 there), so every rank makes the same calls even when one has nothing to report."""
        if not self.enabled:
            return values
        keys = sorted({k for part in self.all_gather(sorted(values)) for k in part})
        if not keys:
            return {}
        t = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64)
        self._collective("all_reduce(sum)", lambda: dist.all_reduce(t, op=dist.ReduceOp.SUM))
        return dict(zip(keys, t.tolist(), strict=True))

    def barrier(self) -> None:
        if self.enabled:
            self._collective("barrier", dist.barrier)


def init_distributed(timeout_s: float | None = None) -> DistInfo:
    """Join the process group started by ``torchrun`` (gloo on CPU, NCCL on GPUs), if any.

    ``timeout_s`` (config key ``dist.timeout_s``) bounds every collective: one that does not complete
    in time fails (gloo raises, NCCL's watchdog aborts the process) instead of hanging.
    """
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(timeout_s=timeout_s)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    rank = dist.get_rank()
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo(rank, dist.get_world_size(), init_device_mesh(device_type, (dist.get_world_size(),)), timeout_s)


def shard_model(model: torch.nn.Module, info: DistInfo, param_dtype: torch.dtype | None = None,
                offload: bool = False) -> torch.nn.Module:
    """FSDP2: shard every decoder layer, then the root (whose embedding and head stay gathered
    between forward and backward, because the loss applies the head itself, chunk by chunk).
    ``offload`` keeps the shards in CPU memory (FSDP2's CPU offload policy)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise NotImplementedError("FSDP sharding needs a decoder with a `layers` list (Llama/Qwen-style models)")
    placement = CPUOffloadPolicy() if offload and info.mesh.device_type != "cpu" else OffloadPolicy()
    for layer in layers:
        fully_shard(layer, mesh=info.mesh, mp_policy=policy, offload_policy=placement)
    fully_shard(model, mesh=info.mesh, mp_policy=policy, reshard_after_forward=False, offload_policy=placement)
    return model


def full_state_dict(model: torch.nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """Full (unsharded) parameters by name on every rank, on the CPU."""
    if not info.enabled:
        return {n: p.detach().cpu() for n, p in model.named_parameters()}
    out = {}
    for name, param in model.named_parameters():
        value = param.detach()
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        out[name] = value.cpu()
    return out


@torch.no_grad()
def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full parameters into a (possibly sharded) model: each rank keeps its own shard."""
    for name, param in model.named_parameters():
        value = state[name]
        if hasattr(param, "device_mesh"):  # a DTensor shard: take this rank's slice of the full tensor
            from torch.distributed.tensor import distribute_tensor

            local = distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements).to_local()
            param.to_local().copy_(local)
        else:
            param.copy_(value.to(param.dtype))


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """``auto``: this rank's GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def reshard(module: torch.nn.Module) -> None:
    """Free a sharded module's gathered parameters (after forwards that have no backward)."""
    fn = getattr(module, "reshard", None)
    if callable(fn):
        fn()


def pad_count(local: int, info: DistInfo) -> int:
    """The number of micro-batches every rank must run so that FSDP's collectives line up."""
    return info.all_reduce_max(local)


def even_split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous pieces whose sizes differ by at most one."""
    size = math.ceil(len(items) / max(1, parts)) if items else 0
    return [list(items[i * size : (i + 1) * size]) for i in range(parts)]
