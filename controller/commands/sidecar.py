"""pagewarm sidecar: pre-warm, gate vLLM's start, time its loads, serve metrics."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from functools import partial

import structlog

from controller.commands import common, flags
from controller.commands.prewarm import add_prewarm_options, options_from
from controller.sampling import SIDECAR_THRESHOLDS
from controller.sidecar.app import Sidecar
from controller.sidecar.gate import GATE_EXAMPLES, GatePolicy
from controller.sidecar.settings import SidecarConfig, SidecarSettings
from exporter.models import ModelSpec

log = structlog.get_logger("pagewarm")

DESCRIPTION = f"""\
Run next to vLLM in its pod (a native sidecar: an init container with restartPolicy:
Always, whose startupProbe holds vLLM back). One process, one port:

  1. pre-warms MODEL_PATH (the same engine and memory guard as `pagewarm prewarm`);
  2. gates vLLM: GET /startup answers 503 (JSON: why) until the gate opens, then 200.
       --gate full        once the warm finished: weights resident, or the memory budget
                          reached (what fits is resident; the rest loads from storage)
       --gate ratio:0.8   once 80% of the weight set (in load order) is covered
       --gate none        at once: the warm overlaps vLLM's imports and CUDA init, which
                          hides storage latency without delaying the start
     Whatever the policy, the gate opens after --gate-timeout seconds and says so (in
     /startup, the log and pagewarm_sidecar_gate_timed_out): a slow disk must never keep
     the pod from starting. A warm that fails also opens it.
  3. times every vLLM start until --vllm-url answers 200 and records a load sample
     (source "sidecar") in the sample store, labelled by the residency at vLLM's start:
       cold          at most {SIDECAR_THRESHOLDS.cold_max:.0%} resident, and no pre-warm
       warm          at least {SIDECAR_THRESHOLDS.warm_min:.0%} resident without this sidecar's warm
       prewarm_cold  this sidecar's warm brought the weights in
       prewarm_warm  they were already resident when the warm started
       partial       anything else (the ratio is in the sample), or residency unknown
     With shareProcessNamespace: true on the pod, vLLM's process is found in /proc
     (--vllm-process-pattern) and each start is timed from its creation: a crash loop
     gives one sample per start (failed when it exits before /health answers 200).
     Without it, the first start is timed from the gate's opening and restarts are only
     counted. A load past --load-timeout is recorded as timed_out.
     --vllm-log FILE reads vLLM's "Model loading took X GiB and Y seconds" (or "Loading
     weights took Y seconds") to split weight loading from the rest of the start.
  4. --keep-warm: re-reads only the ranges of the weights that were evicted (cachestat;
     rate-limited, within the memory budget, backing off when the host thrashes). Page
     cache is no promise: memory pressure, and DAMON pageout schemes that page out file
     cache left untouched for a minute (as on these VMs), evict a model vLLM serves from
     GPU memory; keep-warm puts it back before a restart needs it.
     --mlock: locks the weights in memory instead (needs CAP_IPC_LOCK, or RLIMIT_MEMLOCK
     of the model's size, and a memory limit that holds the model; otherwise it says why
     in the log and /status and runs on without).
  5. --startup-profile PATH: replays vLLM's start-up profile (its libraries, shared
     objects and configuration, recorded by `pagewarm profile record` or by this sidecar)
     through /proc/<vLLM's pid>/root once vLLM's process is seen, at --io-depth reads in
     flight, so that vLLM's imports do not queue behind the weights: with --gate none
     before the weights, otherwise once vLLM starts. When the replay found the libraries
     cold (--gate none), the weights follow at the same depth until vLLM opens them, then
     at full speed. None for the key (--engine-image and
     the model)? vLLM's first start is recorded and written there. Needs
     shareProcessNamespace: true and ptrace read access to vLLM (its user, or
     CAP_SYS_PTRACE); stale entries are skipped and counted.
  6. serves /metrics (the exporter's metrics for this model plus pagewarm_sidecar_*),
     /healthz (liveness), /startup and /status (JSON: gate, warm, vLLM, keep-warm).

MODEL_PATH missing, unreadable or without weight files: exits at once with status 2 and
the reason in its log. A gate that can never open would only hold the pod in startup
until the probe gives up; a failing container shows the reason in `kubectl logs` and
its CrashLoopBackOff.

SIGTERM: cancels the warm (its sample says partial), stops timing (a load still in
progress is not recorded), lets sample appends finish (never half a sample), exits 0.

exit status: 0 stopped by SIGTERM/SIGINT, 1 cannot listen on the port, 2 bad input.

examples:
  pagewarm sidecar /models/llama-3-8b
  pagewarm sidecar /models/llama-3-8b --gate ratio:0.8 --gate-timeout 300
  pagewarm sidecar /models/llama-3-8b --gate none --keep-warm --vllm-log /logs/vllm.log
  MODEL_PATH=/models/llama-3-8b PAGEWARM_GATE=full pagewarm sidecar --mlock
  pagewarm sidecar /models/llama-3-8b --vllm-url none --gate none --keep-warm   # no vLLM
  curl -s localhost:9741/status | jq .gate

settings (environment): MODEL_PATH, PAGEWARM_GATE, PAGEWARM_GATE_TIMEOUT_SECONDS,
PAGEWARM_VLLM_HEALTH_URL, PAGEWARM_PORT, PAGEWARM_HOST, PAGEWARM_KEEP_WARM,
PAGEWARM_KEEP_WARM_INTERVAL_SECONDS, PAGEWARM_KEEP_WARM_RATE_LIMIT_BYTES, PAGEWARM_MLOCK,
PAGEWARM_SAMPLES, PAGEWARM_VLLM_LOG, PAGEWARM_VLLM_PROCESS_PATTERN,
PAGEWARM_LOAD_TIMEOUT_SECONDS, PAGEWARM_HEALTH_POLL_INTERVAL_SECONDS,
PAGEWARM_PREWARM_ENABLED, PAGEWARM_MODEL_NAME, PAGEWARM_STARTUP_PROFILE,
PAGEWARM_ENGINE_IMAGE, PAGEWARM_STARTUP_PROFILE_RECORD, PAGEWARM_STARTUP_PROFILE_IO_DEPTH
and the PAGEWARM_PREWARM_* engine settings.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help="pre-warm, gate vLLM's start, time its loads, serve metrics (Kubernetes sidecar)",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(parser)
    gate = parser.add_argument_group("gate")
    flag = partial(flags.setting_flag, gate, settings=SidecarSettings)
    switch = partial(flags.setting_switch, settings=SidecarSettings)
    flag("--gate", setting="gate", metavar="POLICY", help=GATE_EXAMPLES)
    flag(
        "--gate-timeout",
        setting="gate_timeout_seconds",
        metavar="SECONDS",
        help="open the gate after this long anyway",
    )
    switch(
        gate,
        "--no-prewarm",
        setting="prewarm_enabled",
        value=False,
        help="do not pre-warm: only time vLLM and serve metrics (the gate opens at once)",
    )
    vllm = parser.add_argument_group("vLLM")
    flag = partial(flags.setting_flag, vllm, settings=SidecarSettings)
    flag(
        "--vllm-url",
        setting="vllm_health_url",
        metavar="URL",
        help="vLLM's health URL (http or https); 'none': no vLLM to time (keep-warm or "
        "metrics only)",
    )
    flag("--vllm-log", setting="vllm_log", metavar="FILE", help="vLLM's log file (optional)")
    flag(
        "--vllm-process-pattern",
        setting="vllm_process_pattern",
        metavar="REGEX",
        help="finds vLLM's process by its command line; '' to not look",
    )
    flag(
        "--load-timeout",
        setting="load_timeout_seconds",
        metavar="SECONDS",
        help="a vLLM start not healthy after this long is recorded as timed_out",
    )
    flag(
        "--poll-interval",
        setting="health_poll_interval_seconds",
        metavar="SECONDS",
        help="how often /health and /proc are polled while vLLM loads (at most 5)",
    )
    flag(
        "--model-name",
        setting="model_name",
        metavar="NAME",
        default="from the path",
        help="the model label",
    )
    keep = parser.add_argument_group("keep-warm")
    switch(keep, "--keep-warm", setting="keep_warm", help="re-warm evicted ranges while running")
    flags.setting_flag(
        keep,
        "--keep-warm-interval",
        settings=SidecarSettings,
        setting="keep_warm_interval_seconds",
        metavar="SECONDS",
        help="seconds between two keep-warm passes",
    )
    switch(keep, "--mlock", setting="mlock", help="lock the weights in memory")
    startup = parser.add_argument_group("start-up profile")
    flag = partial(flags.setting_flag, startup, settings=SidecarSettings)
    flag(
        "--startup-profile",
        setting="startup_profile",
        metavar="PATH",
        help="replay this start-up profile ahead of vLLM (a file, or a directory holding "
        "one per key); recorded there on the first start when missing",
    )
    flag(
        "--engine-image",
        setting="engine_image",
        metavar="NAME",
        help="the engine part of the profile's key: vLLM's image",
    )
    switch(
        startup,
        "--startup-profile-record",
        setting="startup_profile_record",
        help="record vLLM's start when no profile exists for the key",
    )
    flag(
        "--io-depth",
        setting="startup_profile_io_depth",
        metavar="N",
        help="reads in flight while replaying the profile (and, after a cold one, reading "
        "the weights until vLLM opens them), 1 to 64",
    )
    server = parser.add_argument_group("server")
    common.add_server_options(server, "/startup, /healthz, /metrics, /status")
    add_prewarm_options(parser)
    parser.set_defaults(func=run, settings_class=SidecarSettings)


def run(args: argparse.Namespace, settings: SidecarSettings) -> int:
    # Fail fast on an unusable MODEL_PATH (ModelPathError, UsageError: exit status 2).
    weight_set = common.weight_set(args, settings)
    options, guard = options_from(args, settings)
    model = ModelSpec(weight_set.root, settings.model_name).label
    config = SidecarConfig(
        weight_set=weight_set,
        model=model,
        settings=settings,
        policy=GatePolicy.parse(settings.gate),
        options=options,
        reserve_bytes=guard.reserve_bytes,
        memory_guard=guard.enabled,
    )
    log.info(
        "sidecar starting",
        model=model,
        model_path=str(weight_set.root),
        size_bytes=weight_set.total_bytes,
        files=len(weight_set.files),
        gate=settings.gate,
        gate_timeout_seconds=settings.gate_timeout_seconds,
        vllm_health_url=settings.vllm_health_url,
        prewarm=settings.prewarm_enabled,
        keep_warm=settings.keep_warm,
        mlock=settings.mlock,
        startup_profile=str(settings.startup_profile) if settings.startup_profile else None,
        samples=str(settings.samples),
        port=settings.port,
    )
    sidecar = Sidecar(config)
    status = asyncio.run(sidecar.run())
    if sidecar.stuck_threads:
        # A read stuck in the kernel (a hung network filesystem) would hold the interpreter's
        # exit forever; everything worth keeping (samples) is on disk already.
        sys.stderr.flush()
        os._exit(status)
    return status
