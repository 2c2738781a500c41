"""What the launcher's environment asks for, checked against the run config before any work.

Both training loops read only the ``torch.distributed`` variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and build their own DeepSpeed config from
``train.distributed``. What the launchers set (read from their sources:
torch 2.13, deepspeed 0.19.8, accelerate 1.15):

* ``torchrun`` / ``python -m torch.distributed.run``: the variables above.
* ``deepspeed``: the same per process (plus a ``--local_rank=N`` argument); with
  ``--hostfile`` one per-node launcher per host (over pdsh/ssh).
* ``accelerate launch``, by ``distributed_type`` of its config file:

  - ``MULTI_GPU`` (also with ``use_cpu: true``, which is how one machine's CPU runs
    several processes): runs ``torch.distributed.run`` in-process, so the torchrun
    variables; multi-node through ``num_machines`` / ``machine_rank`` /
    ``main_process_ip`` (c10d rendezvous). It adds ACCELERATE_MIXED_PRECISION
    (no / fp16 / bf16 / fp8) and ACCELERATE_DYNAMO_* (torch.compile backend, mode...).
  - ``DEEPSPEED``: the same torchrun route (one node, or ``deepspeed_multinode_launcher:
    standard``), or ``deepspeed --hostfile ... --no_local_rank`` for the pdsh /
    openmpi / mvapich / nossh multi-node launchers; it does *not* hand the script a
    DeepSpeed config but variables: ACCELERATE_USE_DEEPSPEED, ACCELERATE_DEEPSPEED_ZERO_STAGE,
    ACCELERATE_GRADIENT_ACCUMULATION_STEPS, ACCELERATE_GRADIENT_CLIPPING,
    ACCELERATE_DEEPSPEED_OFFLOAD_{OPTIMIZER,PARAM}_DEVICE, ACCELERATE_DEEPSPEED_ZERO3_INIT,
    ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL, ACCELERATE_DEEPSPEED_CONFIG_FILE,
    ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES, ACCELERATE_MIXED_PRECISION.
  - ``MULTI_CPU`` or ``--cpu``: starts ONE ``python train.py`` with ACCELERATE_USE_CPU and,
    for num_processes > 1, MASTER_ADDR/PORT but no RANK/WORLD_SIZE (accelerate expects
    ``mpirun`` around it, whose OMPI_*/PMI_* variables these loops do not read).
  - ``FSDP`` / ``MEGATRON_LM`` / parallelism configs: torchrun plus ACCELERATE_USE_FSDP,
    ACCELERATE_USE_MEGATRON_LM, ACCELERATE_USE_PARALLELISM_CONFIG.

Policy: the run config is the one source of truth for how to train (ZeRO stage,
precision, accumulation, clipping, offload, compile); the accelerate file only chooses
processes and machines. Every training setting the accelerate environment carries must
equal the run config's, else ``check_launch_env`` raises one ConfigError listing each
difference with both fixes; what the loops cannot do (FSDP, Megatron, fp8, a user
DeepSpeed JSON, zero.Init, 16-bit ZeRO-3 saving, MoE layers, multi-process CPU without
RANK/WORLD_SIZE) is refused the same way. ``mixed_precision: no`` counts as asking
for fp32 (accelerate cannot tell a default from a choice), so a bf16 run needs
``mixed_precision: bf16`` in the file or ``--mixed_precision bf16``. Not read:
ACCELERATE_DEBUG_MODE, ACCELERATE_CPU_AFFINITY, KMP_* (they change nothing here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..config_utils import ConfigError

#: accelerate's mixed_precision -> train.distributed.precision (the DeepSpeed loop)
_DS_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
#: accelerate's mixed_precision -> train.dtype (the single-process loop)
_DTYPE = {"no": "float32", "bf16": "bfloat16"}
#: offload device -> whether the run config offloads
_OFFLOAD = {"none": False, "cpu": True}

_FIX = "change the accelerate config (or its command-line flag) or the run config"


def _flag(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def accelerate_launched(env: Mapping[str, str]) -> bool:
    """Whether ``accelerate launch`` started this process (it always sets the precision)."""
    return "ACCELERATE_MIXED_PRECISION" in env


def launch_problems(cfg: Any, distributed: bool, env: Mapping[str, str] | None = None) -> list[str]:
    """Each way the launcher's environment contradicts or exceeds the run config ``cfg``
    (a RunConfig), for the DeepSpeed loop (``distributed``) or the single-process one."""
    env = os.environ if env is None else env
    if not accelerate_launched(env):
        return []
    tc, dc = cfg.train, cfg.train.distributed
    out: list[str] = []

    def differs(what: str, accel: Any, key: str, ours: Any, fix: str) -> None:
        out.append(f"{what}: accelerate asks for {accel!r} but {key} is {ours!r} ({fix})")

    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM"),
                      ("ACCELERATE_USE_PARALLELISM_CONFIG", "a parallelism_config")):
        if _flag(env.get(var)):
            out.append(f"the accelerate config asks for {name}; train.py trains with DeepSpeed ZeRO only "
                       "(use distributed_type MULTI_GPU or DEEPSPEED, see configs/accelerate/)")

    # multi-process CPU: accelerate started one process without RANK/WORLD_SIZE
    mpi_size = next((int(env[v]) for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE") if v in env), 1)
    if "WORLD_SIZE" not in env and (mpi_size > 1 or (_flag(env.get("ACCELERATE_USE_CPU")) and "MASTER_ADDR" in env)):
        out.append(
            "accelerate's MULTI_CPU / --cpu mode with several processes starts one process without RANK and "
            "WORLD_SIZE (it expects mpirun, whose variables train.py does not read); use "
            "configs/accelerate/cpu_2proc.yaml (distributed_type MULTI_GPU with use_cpu: true, which runs torchrun) "
            "or torchrun --nproc_per_node N"
        )

    precision = env["ACCELERATE_MIXED_PRECISION"].lower()
    table, key, current, loop, supported = (
        (_DS_PRECISION, "train.distributed.precision", dc.precision, "the DeepSpeed loop", "fp32 'no', bf16, fp16")
        if distributed
        else (_DTYPE, "train.dtype", tc.dtype, "the single-process trainer", "fp32 'no', bf16")
    )
    ours = table.get(precision)
    if ours is None:
        out.append(f"mixed_precision: accelerate asks for {precision!r}, which {loop} does not support ({supported})")
    elif ours != current:
        differs("mixed_precision", precision, key, current,
                f"set mixed_precision: {next(k for k, v in table.items() if v == current)} in the "
                f"accelerate config, or {key}={ours}")

    backend = env.get("ACCELERATE_DYNAMO_BACKEND")
    if backend is not None:
        backend = backend.upper()
        compile_on = dc.compile if distributed else False
        if backend not in ("NO", "INDUCTOR"):
            out.append(f"dynamo_backend: accelerate asks for {backend}; train.distributed.compile uses "
                       "torch.compile's default (inductor) only")
        elif (backend == "INDUCTOR") != compile_on:
            key = "train.distributed.compile" if distributed else "the single-process trainer (never compiles)"
            differs("dynamo_backend", backend, key, compile_on, _FIX)
        if backend == "INDUCTOR" and (env.get("ACCELERATE_DYNAMO_MODE", "default") != "default"
                                      or _flag(env.get("ACCELERATE_DYNAMO_USE_FULLGRAPH"))
                                      or _flag(env.get("ACCELERATE_DYNAMO_USE_DYNAMIC"))
                                      or _flag(env.get("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION"))):
            out.append("dynamo_config: mode / fullgraph / dynamic / regional compilation are not supported; "
                       "train.distributed.compile compiles each block with torch.compile's defaults")

    if _flag(env.get("ACCELERATE_USE_DEEPSPEED")):
        if not distributed:
            out.append("the accelerate config asks for DeepSpeed but this process runs the single-process trainer "
                       "(WORLD_SIZE 1): set train.distributed.enabled=true to run the DeepSpeed loop in one process")
        else:
            _deepspeed_problems(env, cfg, differs, out)
    return out


def _deepspeed_problems(env: Mapping[str, str], cfg: Any, differs, out: list[str]) -> None:
    tc, dc = cfg.train, cfg.train.distributed
    if "ACCELERATE_DEEPSPEED_ZERO_STAGE" in env and int(env["ACCELERATE_DEEPSPEED_ZERO_STAGE"]) != dc.zero_stage:
        stage = int(env["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
        differs("zero_stage", stage, "train.distributed.zero_stage", dc.zero_stage,
                f"set zero_stage: {dc.zero_stage} in the accelerate config, or train.distributed.zero_stage={stage}")
    if "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" in env:
        accum = int(env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"])
        if accum != dc.grad_accum:
            differs("gradient_accumulation_steps", accum, "train.distributed.grad_accum", dc.grad_accum,
                    f"set gradient_accumulation_steps: {dc.grad_accum} in the accelerate config, or "
                    f"train.distributed.grad_accum={accum}")
    if "ACCELERATE_GRADIENT_CLIPPING" in env and env["ACCELERATE_GRADIENT_CLIPPING"].lower() != "none":
        clip = float(env["ACCELERATE_GRADIENT_CLIPPING"])
        ours = dc.grad_clip if dc.grad_clip is not None else tc.grad_clip
        if clip != (ours or 0.0):
            differs("gradient_clipping", clip, "the run's clip (train.distributed.grad_clip, else train.grad_clip)",
                    ours, f"set gradient_clipping: {ours or 0.0} in the accelerate config, or "
                    f"train.distributed.grad_clip={clip}")
    for var, key, ours in (("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_optimizer", dc.offload_optimizer),
                           ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "offload_params", dc.offload_params)):
        if var in env:
            device = env[var].lower()
            if device not in _OFFLOAD:
                out.append(f"{var[len('ACCELERATE_DEEPSPEED_'):].lower()}: accelerate asks for {device!r}; "
                           "train.py offloads to cpu only (none / cpu)")
            elif _OFFLOAD[device] != ours:
                differs(var[len("ACCELERATE_DEEPSPEED_"):].lower(), device, f"train.distributed.{key}", ours,
                        f"set it to {'cpu' if ours else 'none'} in the accelerate config, or "
                        f"train.distributed.{key}={str(_OFFLOAD[device]).lower()}")
    unsupported = (
        ("ACCELERATE_DEEPSPEED_CONFIG_FILE", "deepspeed_config_file: train.py builds the DeepSpeed JSON from "
         "train.distributed; put the settings there and remove deepspeed_config_file"),
        ("ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES", "deepspeed_moe_layer_cls_names: the models have no MoE layers"),
    )
    for var, message in unsupported:
        if env.get(var):
            out.append(message)
    if _flag(env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT")):
        out.append("zero3_init_flag: true is not supported (each rank builds the whole model before ZeRO-3 "
                   "partitions it); set zero3_init_flag: false")
    if _flag(env.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL")):
        out.append("zero3_save_16bit_model: true is not supported; checkpoints are ZeRO shards, consolidate them "
                   "with tools/zero_to_model.py; set zero3_save_16bit_model: false")


def check_launch_env(cfg: Any, distributed: bool = True, env: Mapping[str, str] | None = None) -> None:
    """Raise one ConfigError naming every problem of ``launch_problems`` (nothing when there is none)."""
    problems = launch_problems(cfg, distributed, env)
    if problems:
        raise ConfigError(
            "the accelerate launch settings do not match the run config (the run config decides how to train; "
            "the accelerate file only chooses processes and machines, see configs/accelerate/):\n  - "
            + "\n  - ".join(problems)
        )


def preflight(cfg: Any, distributed: bool = True, env: Mapping[str, str] | None = None) -> None:
    """Everything a run can refuse before doing any work, on every rank: launcher
    settings (``check_launch_env``) and a ``train.wandb_project`` without wandb."""
    check_launch_env(cfg, distributed, env)
    if cfg.train.wandb_project is not None:
        from .monitor import import_wandb

        import_wandb()


__all__ = ["accelerate_launched", "check_launch_env", "launch_problems", "preflight"]
