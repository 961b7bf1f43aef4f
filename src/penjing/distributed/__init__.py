"""Parallel training on torch.distributed: data parallel (DDP), a parameter server, pipeline
model parallelism and Deep Gradient Compression.

Everything runs in real processes joined by ``torch.distributed`` (gloo on CPU, NCCL on GPU),
started by ``torchrun`` (one machine or many) or by :func:`spawn` for one machine.
"""

from penjing.distributed.data_parallel import fit_ddp
from penjing.distributed.dgc import DGCConfig, DGCState, dgc_hook
from penjing.distributed.env import DistributedSetupError, init, is_main, rank, spawn, world_size
from penjing.distributed.param_server import ParameterServerResult, train_parameter_server
from penjing.distributed.pipeline import PipelineRunner

__all__ = [
    "DGCConfig",
    "DGCState",
    "DistributedSetupError",
    "ParameterServerResult",
    "PipelineRunner",
    "dgc_hook",
    "fit_ddp",
    "init",
    "is_main",
    "rank",
    "spawn",
    "train_parameter_server",
    "world_size",
]
