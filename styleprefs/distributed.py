"""Which process this is, on accelerate's process model (``accelerate launch`` or ``torchrun``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    wait: Callable[[], None]  # barrier across all processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def processes() -> Processes:
    """One process unless started by a launcher (WORLD_SIZE > 1); then accelerate's PartialState (gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(0, 1, lambda: None)
    import torch  # deferred: a one-process build needs neither
    from accelerate import PartialState

    # Without cpu=True accelerate ignores torchrun's environment on a machine with no GPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes, state.wait_for_everyone)
