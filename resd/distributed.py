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

Everything here is a no-op in a single process.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


@dataclasses.dataclass
class DistInfo:
    """Where this process stands. ``world == 1`` means single-process (nothing is initialized)."""

    rank: int = 0
    world: int = 1
    mesh: Any = None

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

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_max(self, value: int) -> int:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def all_reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, t.tolist(), strict=True))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed() -> DistInfo:
    """Join the process group started by ``torchrun`` (gloo on CPU, NCCL on GPUs), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank()
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo(rank, dist.get_world_size(), init_device_mesh(device_type, (dist.get_world_size(),)))


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
