"""FSDP2 for the trainer (``--fsdp``): the plugin accelerate receives, sharding on CPU processes, and the full
weights gathered for saving a diffusers folder.

Each of the denoiser's blocks (the family's ``fsdp_blocks``) is one shard unit, resharded after its forward; the
policy's parameters, gradients and optimizer state live in shards across the processes, and so does the frozen
reference. accelerate turns FSDP on for accelerator devices only; torch's FSDP2 itself runs on CPU processes over
gloo, so there styleprefs sets accelerate's distributed type itself (the same prepare, clipping and state-dict code
then runs), which is how the tests check FSDP against DDP on CPU.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from styleprefs.errors import StyleprefsError
from styleprefs.trainer.families import Family


def fsdp_plugin(family: Family) -> FullyShardedDataParallelPlugin:
    """FSDP2, one shard unit per block of ``family``'s denoiser, sharded checkpoints (each process saves its part)."""
    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          transformer_cls_names_to_wrap=list(family.fsdp_blocks),
                                          reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT")


def shard_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Make ``accelerator`` (CPU processes in one gloo group) prepare models with FSDP2."""
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise StyleprefsError("--fsdp needs several processes: start the run with torchrun --nproc_per_node N or "
                              "accelerate launch --num_processes N")
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def shard_frozen(model: torch.nn.Module, family: Family) -> torch.nn.Module:
    """Shard a frozen ``model`` (the reference) by the same blocks, with torch's ``fully_shard`` directly: accelerate
    would also save it in every checkpoint, though it never changes."""
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__ in family.fsdp_blocks:
            fully_shard(module)
    return fully_shard(model)


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def full_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full weights of a sharded ``model`` on the main process (gathered from every process: call on all of
    them); None when the model is not sharded (each process holds it whole)."""
    if not is_sharded(accelerator):
        return None
    state = accelerator.get_state_dict(model)
    return state if accelerator.is_main_process else None
