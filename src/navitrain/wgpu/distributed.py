"""torch.distributed for the wgpu device: a process-group backend named "navitrain" on top of gloo.

PyTorch's distributed engine (init_process_group, DistributedDataParallel's reducer and buckets, the
collectives' API) does all the work; this module only moves data. A wgpu device has no peer-to-peer
path to another process's GPU, so each collective copies its wgpu tensors to host memory once,
runs the same collective of a gloo process group on those CPU tensors (TCP between processes and
machines), and copies the results back. DDP already hands over bucket-flattened gradients, so a
bucket costs one download and one upload.

    import torch.distributed as dist, navitrain.wgpu.distributed   # registers "navitrain"
    dist.init_process_group("cpu:gloo,wgpu:navitrain")              # or just "navitrain"

"navitrain" also takes CPU tensors (passed straight to its gloo group), so `init_process_group(
"navitrain")` serves both devices. With "cpu:gloo,wgpu:navitrain" the result is the same: PyTorch
lets a process group written in Python stand for the whole group, whatever the device. Plain "gloo"
cannot take wgpu tensors: PyTorch sends each device to the backend mapped to it.

all_reduce (what DDP's reducer calls per gradient bucket) is asynchronous: the call downloads the
bucket (the read-back waits for the GPU work queued so far), hands it to gloo, whose threads send and
sum it, and returns; backward goes on queueing and running the layers before the bucket meanwhile.
The Work's wait() copies the result back on the calling thread; its future completes on gloo's
thread with the host tensors as its value, so the reducer (which reads the future's value, not the
bucket) copies the averaged gradients into the .grad tensors itself, on the training thread, when
backward ends. Nothing here touches the wgpu runtime off the training thread. The other collectives
are synchronous: the call returns after the copy back (the Work it returns is already complete).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import ProcessGroupGloo, _create_work_from_future

# Importing this module runs navitrain.wgpu's __init__ first: the device exists before PyTorch maps a
# backend to it.
from navitrain.wgpu import device as _device
from navitrain.wgpu import dispatch

NAME = "navitrain"


class CollectiveError(RuntimeError):
    """A collective failed: usually another rank died or timed out."""


def _on_wgpu(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "wgpu"


class _StagedWork(dist.Work):
    """An all_reduce whose gloo part runs on host copies while the caller goes on. wait() waits for
    gloo and writes the results into the caller's (wgpu) tensors, once; get_future() follows gloo's
    future, its value the host tensors (DDP's reducer and comm hooks read that value)."""

    def __init__(self, group: "WgpuProcessGroup", what: str, gloo_work, results):
        super().__init__()
        self._group, self._what, self._gloo_work, self._results = group, what, gloo_work, results
        self._copied = False

    def wait(self, timeout=None) -> bool:  # noqa: ARG002 - gloo's own timeout applies
        if not self._copied:
            self._group._wait(self._what, self._gloo_work)
            for device_tensor, host in self._results:
                if device_tensor is not host:
                    device_tensor.copy_(host)
            self._copied = True
        return True

    def get_future(self):
        group, what = self._group, self._what

        def named_failure(done):
            # Runs on gloo's thread: host tensors only. A failure reaches DDP's reducer (which waits on
            # this future when backward ends) as the CollectiveError that wait() would raise.
            try:
                return done.value()
            except Exception as exc:
                raise group._error(what, exc) from exc

        return self._gloo_work.get_future().then(named_failure)

    def is_completed(self) -> bool:
        return self._copied or self._gloo_work.is_completed()

    def is_success(self) -> bool:
        return self._gloo_work.is_success()

    def exception(self):
        return self._gloo_work.exception()


def _done(result) -> "dist.Work":
    fut = torch.futures.Future()
    fut.set_result(result)
    return _create_work_from_future(fut)


class WgpuProcessGroup(dist.ProcessGroup):
    """Stages wgpu tensors through host memory and runs each collective on a gloo group."""

    def __init__(self, store, rank: int, size: int, timeout: timedelta):
        super().__init__(rank, size)
        self._rank, self._size = rank, size
        self._gloo = ProcessGroupGloo(store, rank, size, timeout)

    def getBackendName(self) -> str:  # noqa: N802 - c10d's name
        return NAME

    # -- staging ------------------------------------------------------------------------------------
    def _wait(self, what: str, gloo_work) -> None:
        try:
            gloo_work.wait()
        except Exception as exc:
            raise self._error(what, exc) from exc

    def _error(self, what: str, exc: Exception) -> CollectiveError:
        return CollectiveError(
            f"navitrain/gloo {what} failed on rank {self._rank} of {self._size}: {exc} (another rank "
            f"probably died, or did not reach this collective within the process group's timeout)")

    def _run(self, what: str, call, staged_in: list, results: list[tuple[torch.Tensor, torch.Tensor]]):
        """Run gloo's `call` on host tensors, wait for it, copy `results` (device, host) back."""
        try:
            work = call()
        except Exception as exc:
            raise self._error(what, exc) from exc
        self._wait(what, work)
        for device_tensor, host in results:
            if device_tensor is not host:
                device_tensor.copy_(host)
        return staged_in

    @staticmethod
    def _host(tensor: torch.Tensor) -> torch.Tensor:
        # gloo needs dense contiguous CPU tensors; one copy whatever the wgpu tensor's strides.
        return tensor.detach().to("cpu").contiguous() if _on_wgpu(tensor) else tensor

    def _host_many(self, tensors):
        hosts = [self._host(t) for t in tensors]
        # A non-contiguous CPU tensor (passed through) is made contiguous and copied back as well.
        hosts = [h if h.is_contiguous() else h.contiguous() for h in hosts]
        return hosts, list(zip(tensors, hosts))

    # -- collectives --------------------------------------------------------------------------------
    def _in_place(self, name, tensors, run):
        """A collective that works on its tensors in place: stage them on the host, run gloo's, copy back."""
        hosts, back = self._host_many(tensors)
        self._run(name, lambda: run(hosts), tensors, back)
        return _done(tensors)

    def allreduce(self, tensors, opts):
        hosts, back = self._host_many(tensors)
        try:
            gloo_work = self._gloo.allreduce(hosts, opts)
        except Exception as exc:
            raise self._error("all_reduce", exc) from exc
        return _StagedWork(self, "all_reduce", gloo_work, back)

    def allreduce_coalesced(self, tensors, opts):
        return self._in_place("all_reduce_coalesced", tensors,
                              lambda hosts: self._gloo.allreduce_coalesced(hosts, opts))

    def broadcast(self, tensors, opts):
        return self._in_place("broadcast", tensors, lambda hosts: self._gloo.broadcast(hosts, opts))

    def reduce(self, tensors, opts):
        return self._in_place("reduce", tensors, lambda hosts: self._gloo.reduce(hosts, opts))

    def allgather(self, output_lists, inputs, opts):
        hosts_in, _ = self._host_many(inputs)
        outs = [[torch.empty(o.shape, dtype=o.dtype) for o in lst] for lst in output_lists]
        back = [pair for lst, hl in zip(output_lists, outs) for pair in zip(lst, hl)]
        self._run("all_gather", lambda: self._gloo.allgather(outs, hosts_in, opts), output_lists, back)
        return _done([t for lst in output_lists for t in lst])

    def all_gather_single(self, output, input, opts):  # dist.all_gather_into_tensor
        # Flat on the host: gloo wants the output to be the inputs stacked along dim 0, while PyTorch
        # accepts any output of world * input.numel() elements (SyncBatchNorm passes [1, world * n]).
        host_in = self._host(input).contiguous().view(-1)
        host_out = torch.empty(output.numel(), dtype=output.dtype)
        self._run("all_gather_into_tensor", lambda: self._gloo._allgather_base(host_out, host_in, opts), [output],
                  [(output, host_out.view(output.shape))])
        return _done([output])

    def reduce_scatter(self, outputs, input_lists, opts):
        hosts_out = [torch.empty(o.shape, dtype=o.dtype) for o in outputs]
        hosts_in = [[self._host(t).contiguous() for t in lst] for lst in input_lists]
        self._run("reduce_scatter", lambda: self._gloo.reduce_scatter(hosts_out, hosts_in, opts), outputs,
                  list(zip(outputs, hosts_out)))
        return _done(outputs)

    def reduce_scatter_single(self, output, input, opts):  # dist.reduce_scatter_tensor
        host_in = self._host(input).contiguous()
        host_out = torch.empty(output.shape, dtype=output.dtype)
        self._run("reduce_scatter_tensor", lambda: self._gloo._reduce_scatter_base(host_out, host_in, opts),
                  [output], [(output, host_out)])
        return _done([output])

    def gather(self, output_lists, inputs, opts):
        hosts_in, _ = self._host_many(inputs)
        outs = [[torch.empty(o.shape, dtype=o.dtype) for o in lst] for lst in output_lists]
        back = [pair for lst, hl in zip(output_lists, outs) for pair in zip(lst, hl)]
        self._run("gather", lambda: self._gloo.gather(outs, hosts_in, opts), output_lists, back)
        return _done([t for lst in output_lists for t in lst] or inputs)

    def scatter(self, outputs, input_lists, opts):
        hosts_out = [torch.empty(o.shape, dtype=o.dtype) for o in outputs]
        hosts_in = [[self._host(t).contiguous() for t in lst] for lst in input_lists]
        self._run("scatter", lambda: self._gloo.scatter(hosts_out, hosts_in, opts), outputs,
                  list(zip(outputs, hosts_out)))
        return _done(outputs)

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts):
        host_in = self._host(input).contiguous()
        host_out = torch.empty(output.shape, dtype=output.dtype)
        self._run("all_to_all_single", lambda: self._gloo.alltoall_base(
            host_out, host_in, output_split_sizes, input_split_sizes, opts), [output], [(output, host_out)])
        return _done([output])

    _allgather_base = all_gather_single        # the names older callers use
    _reduce_scatter_base = reduce_scatter_single
    alltoall_base = all_to_all_single

    def send(self, tensors, dst, tag):
        hosts, _ = self._host_many(tensors)
        self._run("send", lambda: self._gloo.send(hosts, dst, tag), tensors, [])
        return _done(tensors)

    def recv(self, tensors, src, tag):
        hosts = [torch.empty(t.shape, dtype=t.dtype) for t in tensors]
        self._run("recv", lambda: self._gloo.recv(hosts, src, tag), tensors, list(zip(tensors, hosts)))
        return _done(tensors)

    def barrier(self, opts):
        self._run("barrier", lambda: self._gloo.barrier(opts), [], [])
        return _done([])


def _create(store, rank: int, size: int, timeout: timedelta) -> WgpuProcessGroup:
    return WgpuProcessGroup(store, rank, size, timeout)


def _refuse_other_process_groups() -> None:
    """A wgpu tensor handed to another backend's collective (plain "gloo") reaches navitrain's
    __torch_dispatch__ as a c10d op; running it as a counted CPU fallback would do the collective on a
    copy. Say which backend to use instead."""
    def refuse(op):
        def handler(*args, **kwargs):
            raise RuntimeError(
                f"{op}: this process group's backend cannot take wgpu tensors; initialise it with "
                f"dist.init_process_group('{NAME}') or 'cpu:gloo,wgpu:{NAME}' (import navitrain.wgpu.distributed "
                f"first)")
        return handler

    for name in torch._C._dispatch_get_all_op_names():
        if name.startswith("c10d::"):
            packet = getattr(torch.ops.c10d, name.split("::", 1)[1])
            for overload in packet.overloads():
                op = getattr(packet, overload)
                dispatch.OPS.setdefault(op, refuse(op))


def register() -> None:
    """Make "navitrain" a torch.distributed backend for the wgpu device (and CPU). Idempotent."""
    if NAME.upper() in dist.Backend._plugins:
        return
    _refuse_other_process_groups()
    dist.Backend.register_backend(NAME, _create, devices=["cpu", "wgpu"])


def local_rank() -> int:
    """This process's rank on its machine (torchrun's LOCAL_RANK), 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device() -> torch.device:
    """wgpu:LOCAL_RANK made this process's device: one adapter per local rank, in wgpu:N order. With
    fewer adapters than ranks (one GPU, or lavapipe in CI) ranks share them round-robin: correct, and
    still a measure of the collectives' cost, but no faster."""
    index = local_rank() % len(_device.adapter_names())
    _device.select(index)
    return torch.device("wgpu", index)


register()
