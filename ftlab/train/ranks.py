"""Which process writes: rank 0 of a torchrun / `accelerate launch` job, or the only process."""

from __future__ import annotations

import os


def barrier() -> None:
    from accelerate import PartialState  # lazy: accelerate takes 3.7 s

    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()


def is_main() -> bool:
    # torchrun / `accelerate launch` always set RANK; asked before the trainer set up the process
    # group, PartialState sometimes answered True on rank 1 too, and both ranks wrote the folder.
    rank = os.environ.get("RANK")
    if rank is not None:
        return int(rank) == 0
    from accelerate import PartialState  # lazy: accelerate takes 3.7 s

    return PartialState().is_main_process
