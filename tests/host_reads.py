"""A counter of what makes the host wait for the device: the test of "no host reads per step".

On a CPU nothing waits, so the counter looks for what *would* wait on a GPU, at two levels:

- torch's dispatcher, which every operation reaches whatever Python spelled it: an operator
  whose output is data on the host (``_local_scalar_dense``, behind ``item``, ``bool``, ``float``
  and ``tolist`` alike; ``equal``) or whose output shape depends on values (``nonzero``, a mask
  as an index), found by torch's own tags; and copies from a device to the host;
- Python's view of a tensor, for the calls that copy to the host but never reach the dispatcher
  on a CPU (``.numpy()``, ``.cpu()``, ``.tolist()``, ``np.asarray``), and the scalar conversions.
"""

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

Tensor = torch.Tensor
# Calls that hand a tensor's values to Python or copy them to host memory.
_HOST_CALLS = {
    Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.__array__, Tensor.cpu,
    Tensor.__bool__, Tensor.__float__, Tensor.__int__, Tensor.__index__, Tensor.__complex__,
    Tensor.__repr__, Tensor.__format__,
}  # fmt: skip
_SYNCING_TAGS = {torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape}


class HostReads:
    """``with HostReads() as reads: ...`` then ``reads.count`` and ``reads.seen`` (the names)."""

    def __enter__(self) -> "HostReads":
        self.seen: list[str] = []
        self._modes = [_PythonCalls(self.seen), _Operators(self.seen)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @property
    def count(self) -> int:
        return len(self.seen)


class _PythonCalls(TorchFunctionMode):
    def __init__(self, seen: list[str]):
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_CALLS:
            self.seen.append(f"Tensor.{func.__name__}")
        return func(*args, **kwargs)


class _Operators(TorchDispatchMode):
    def __init__(self, seen: list[str]):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs):
            self.seen.append(str(func))
        return func(*args, **kwargs)


def _syncs(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> bool:
    if func is torch.ops.aten.index.Tensor:  # only a mask makes the output's shape wait
        return any(i is not None and i.dtype == torch.bool for i in args[1])
    if _SYNCING_TAGS & set(func.tags):
        return True
    # A copy from a device to the host (on a CPU run there is none to see: see the calls above).
    if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
        source = args[1] if func is torch.ops.aten.copy_.default else args[0]
        target = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device")
        return (
            target is not None
            and torch.device(target).type == "cpu"
            and source.device.type != "cpu"
        )
    return False
