"""Data-parallel training over processes with ``torch.distributed``, as started by ``torchrun``.

Every process is a *replica*: it holds the whole VAE and the whole dataset, and each step takes
its shard of the global batch. What makes the replicas one training run:

- ``--batch-size`` is the global batch. Every replica draws the epoch's order of indices from the
  same seed, cuts it into batches as a single process would, and takes the ``rank``-th of
  ``world_size`` contiguous pieces of each batch.
- Each replica backpropagates the −ELBO summed over its shard. One all-reduce (a sum) of all the
  gradients, with the shard's loss riding along, leaves on every replica the gradient of the
  global batch's summed loss: the gradient one process takes (as ``SVI.step`` does). The same Adam
  step on the same gradient keeps the replicas identical, and the ELBO per data point means what
  it means in one process.
- The noise of a replica's step (its samples of z, a dynamic binarization) is drawn from a seed
  derived from (seed, epoch, step, rank). It depends on nothing the replica did before, so a
  resumed run continues exactly as an uninterrupted one would, and another number of processes
  can take a run over (with other, equally valid, noise).

One process (``WORLD_SIZE`` unset or 1) is the plain single-process path, unchanged.
"""

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pyro_vae.core.devices import resolve_device
from pyro_vae.core.errors import UserInputError

log = logging.getLogger(__name__)

# Separate streams of derived seeds, so that no step's noise repeats another's.
TRAINING_STREAM = 0
VALIDATION_STREAM = 1
ORDER_STREAM = 2


def derived_seed(seed: int, *counters: int) -> int:
    """A 63-bit seed for ``torch.manual_seed`` from the run's seed and counters, well mixed
    (NumPy's SeedSequence), so that neighbouring counters give unrelated streams."""
    state = np.random.SeedSequence([seed % 2**63, *counters]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@dataclass(frozen=True)
class Replicas:
    """This process's place among the replicas of a data-parallel run: ``rank`` of ``world_size``,
    ``local_rank`` on its machine. ``Replicas()`` is the single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Replicas":
        """The place that torchrun gives this process: RANK, WORLD_SIZE and LOCAL_RANK."""
        values = {name: os.environ.get(name) for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        try:
            world_size = int(values["WORLD_SIZE"] or "1")
            rank, local_rank = int(values["RANK"] or "0"), int(values["LOCAL_RANK"] or "0")
        except ValueError:
            raise UserInputError(
                f"the environment says WORLD_SIZE={values['WORLD_SIZE']}, RANK={values['RANK']}"
                ", which are not numbers of processes: unset them (torchrun sets them itself)"
            ) from None
        if world_size == 1:
            return cls()
        missing = [
            name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ
        ]
        if missing or not 0 <= rank < world_size:
            raise UserInputError(
                f"WORLD_SIZE={world_size} is set, but {', '.join(missing) or 'RANK'} "
                f"{'is' if len(missing) < 2 else 'are'} not{' right' if not missing else ''}: "
                "this is not a torchrun launch; unset WORLD_SIZE, or start the command with "
                "torchrun"
            )
        return cls(rank, world_size, local_rank)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one replica that writes files and reports progress."""
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device ``--device name`` means for this replica: a process's own GPU is the one of
        its ``LOCAL_RANK`` (torchrun's convention), so ``cuda:N`` names no replica's GPU."""
        if not self.distributed:
            return resolve_device(name)
        device = resolve_device(name)
        if device.type != "cuda":
            return device
        if device.index is not None:
            raise UserInputError(
                f"`device` {name} under torchrun: each process uses the GPU of its LOCAL_RANK, "
                "so pass `device` cuda (or auto)"
            )
        if self.local_rank >= torch.cuda.device_count():
            raise UserInputError(
                f"process {self.local_rank} on this machine has no GPU of its own (there are "
                f"{torch.cuda.device_count()}): start at most that many with --nproc_per_node"
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def connect(self, device: torch.device) -> None:
        """Join the process group that torchrun's rendezvous describes (MASTER_ADDR and so on):
        NCCL between GPUs, gloo between CPUs. Idempotent; a single process does nothing."""
        if not self.distributed or dist.is_initialized():
            return
        log.warning(  # it waits until every process has started: say so rather than hang mute
            "joining %d processes at %s:%s (waits until every one has started)",
            self.world_size, os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"),
        )  # fmt: skip
        # The rendezvous waits inside torch's C++ code, where a Python signal handler (the run's
        # "save and stop after this step") never gets to run: if another process fails before
        # it joins, torchrun's SIGTERM must end this one at once, not 30 s later by SIGKILL.
        # (Python may set a handler in its main thread only; None is one that C code set.)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main_thread else None
        try:
            if device.type == "cuda":
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This replica's contiguous piece of ``rows`` (pieces differ in length by at most one)."""
        if not self.distributed:
            return rows
        return rows.tensor_split(self.world_size)[self.rank]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the replicas, in place."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def sum_gradients(self, parameters: list[torch.Tensor], riders: torch.Tensor) -> torch.Tensor:
        """Sum the parameters' gradients over the replicas in one all-reduce, with ``riders`` (a
        few numbers, such as the shard's loss) summed along; returns the summed riders.

        A parameter with no gradient on this replica (its shard was empty) adds zero. One flat
        buffer means one collective a step, whatever the number of parameter tensors.
        """
        if not self.distributed:
            return riders
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads] + [riders.reshape(-1)])
        dist.all_reduce(flat)
        offset = 0
        for p in parameters:
            p.grad = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        return flat[offset:]

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is set on any replica: a decision all of them then take together."""
        if not self.distributed:
            return flag
        return bool(self.sum(torch.tensor(float(flag), device=device)) > 0)

    def broadcast(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's, so that every replica starts from one model."""
        if self.distributed:
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others (a download, say), which then reuse its work."""
        if self.distributed and not self.is_main:
            dist.barrier()
        yield
        if self.distributed and self.is_main:
            dist.barrier()


SINGLE_PROCESS = Replicas()


def disconnect(together: bool = True) -> None:
    """Leave the process group, if this process joined one. ``together`` waits first for every
    process to get here, so that none tears its connections down while another still works (the
    end of a run); after an error there is no waiting, as the others may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
