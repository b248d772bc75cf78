"""Starting vLLM and running requests on it: one engine in this process or one per slice of the GPUs in spawned
processes, vLLM's output sent to a log, and any failure turned into one line that names that log.

vllm_runtime.py builds the requests; this module knows nothing of prompts or scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from fraudq.errors import BadInput

INSTALL_HINT = "pip install 'fraudq[vllm]' (see .ci/vllm for the CPU build's recipe)"


class VllmFailed(BadInput):
    """vLLM started and failed; the message names its log, which is kept."""

@dataclasses.dataclass
class Engine:
    """How to start one vLLM engine; plain data so a data-parallel shard can receive it in a spawned process."""

    model: str
    dtype: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    distributed_executor_backend: str | None
    kv_cache_gib: float | None
    enforce_eager: bool
    log_file: str
    max_model_len: int | None = None

def import_vllm():
    try:
        import vllm
    except ImportError:
        raise BadInput(f"the vLLM runtime needs vLLM, which is not installed: {INSTALL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything at import; report its first line
        raise BadInput(f"vLLM is installed but does not import ({_first_line(exc)}); on CPU, remove torchvision, "
                       f"torchaudio and torchcodec, which are built against CUDA torch: {INSTALL_HINT}") from None
    return vllm

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__

def _log_path(log_file) -> str:
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        return str(log_file)
    handle, path = tempfile.mkstemp(prefix="fraudq-vllm-", suffix=".log")
    os.close(handle)
    return path

def visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]

@contextlib.contextmanager
def _output_to(log_file: str):
    """vLLM's own logging and its spawned processes write to file descriptors 1 and 2: send both to the log."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(1), os.dup(2)
    # vLLM's logger keeps the sys.stdout of the moment vLLM was first imported, perhaps by another library under
    # a test runner's capture that has closed since: point its handlers at the log for the run.
    handlers = [h for h in logging.getLogger("vllm").handlers if isinstance(h, logging.StreamHandler)]
    with open(log_file, "a", encoding="utf-8") as sink:
        streams = [h.setStream(sink) for h in handlers]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            # Back to where they wrote, or to stderr when that stream is closed by now.
            for handler, stream in zip(handlers, streams):
                handler.setStream(stream if stream is not None and not getattr(stream, "closed", False)
                                  else sys.__stderr__)

@contextlib.contextmanager
def vllm_output_log(log_file):
    """vLLM's output (its imports included) goes to the log for the whole call. A temporary log is removed
    afterwards unless a failure's message names it."""
    path = _log_path(log_file)
    keep = log_file is not None
    try:
        with _output_to(path):
            yield path
    except VllmFailed:
        keep = True
        raise
    finally:
        if not keep:
            for leftover in Path(path).parent.glob(Path(path).name + "*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

def _failure(exc: BaseException, engine: Engine) -> VllmFailed:
    """One line for any vLLM failure: the root cause vLLM logged (its own exception often just says to look
    there), and where the whole log is."""
    cause = _first_line(exc)
    with contextlib.suppress(OSError):
        errors = re.findall(r"^(?:\(\S+ pid=\d+\) )?(?:ERROR \S+ \S+ \[\S+\] +)?(\w+(?:Error|Exception): .+)$",
                            Path(engine.log_file).read_text(encoding="utf-8", errors="replace"), flags=re.MULTILINE)
        meaningful = [e for e in errors if "See root cause" not in e and "stack trace" not in e]
        if meaningful:
            cause = meaningful[0][:300]
    return VllmFailed(f"vLLM failed on {engine.model}: {cause} (vLLM's log: {engine.log_file})")

def _run(engine: Engine, requests: list, params: list, warmup: tuple | None) -> tuple[list, dict]:
    """Starts vLLM, runs `warmup` (one request and its params) off the clock, then every request; any failure
    becomes one BadInput line."""
    started = time.perf_counter()
    try:
        vllm = import_vllm()
        kwargs = {"kv_cache_memory_bytes": int(engine.kv_cache_gib * (1 << 30))} if engine.kv_cache_gib else {}
        if engine.distributed_executor_backend:
            kwargs["distributed_executor_backend"] = engine.distributed_executor_backend
        llm = vllm.LLM(model=engine.model, tokenizer=engine.model, trust_remote_code=False, dtype=engine.dtype,
                       tensor_parallel_size=engine.tensor_parallel_size,
                       pipeline_parallel_size=engine.pipeline_parallel_size, enforce_eager=engine.enforce_eager,
                       max_model_len=engine.max_model_len,
                       seed=0, disable_log_stats=True,
                       # Stop where fraudq's own runtime stops (the tokenizer's end token) and take no
                       # sampling defaults from generation_config.json.
                       generation_config="vllm", **kwargs)
    except Exception as exc:  # noqa: BLE001 - every vLLM start-up failure becomes one line
        raise _failure(exc, engine) from None
    try:
        load_s = time.perf_counter() - started
        # First use of each kernel costs seconds on CPU (20 s for the tiny test model); like fraudq's own
        # runtime, that is reported as warmup_s, not charged to the rate.
        started = time.perf_counter()
        if warmup is not None:
            llm.generate([warmup[0]], warmup[1], use_tqdm=False)
        warmup_s = time.perf_counter() - started
        started = time.perf_counter()
        outputs = llm.generate(requests, params, use_tqdm=False)
        wall_s = time.perf_counter() - started
        version = vllm.__version__
    except Exception as exc:  # noqa: BLE001 - as above, for failures while serving
        raise _failure(exc, engine) from None
    finally:
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
    return outputs, {"load_s": round(load_s, 3), "warmup_s": round(warmup_s, 3), "wall_s": round(wall_s, 3),
                     "vllm_version": version}

def _shard_main(engine: Engine, devices: str, kind: str, requests: list, params, warmup, conn) -> None:
    """One data-parallel shard, in its own spawned process: its GPUs only, its slice of the rows."""
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        with _output_to(engine.log_file):
            outputs, timing = _run(engine, requests, params, warmup)
        conn.send(("ok", _extract(kind, outputs), timing))
    except VllmFailed as exc:
        conn.send(("error", str(exc), None))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it as one line
        conn.send(("error", f"vLLM failed on {engine.model}: {_first_line(exc)}", None))
    finally:
        conn.close()

def serve(engine: Engine, data_parallel_size: int, kind: str, requests: list, params: list, warmup) -> tuple:
    """Runs the requests on one engine, or on `data_parallel_size` engines with disjoint GPUs and row slices."""
    if data_parallel_size == 1:
        outputs, timing = _run(engine, requests, params, warmup)
        return _extract(kind, outputs), timing
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    devices = visible_gpus()
    per_engine = engine.tensor_parallel_size * engine.pipeline_parallel_size
    bounds = [len(requests) * rank // data_parallel_size for rank in range(data_parallel_size + 1)]
    shards = []
    for rank in range(data_parallel_size):
        receive, send = context.Pipe(duplex=False)
        shard = dataclasses.replace(engine, log_file=f"{engine.log_file}.dp{rank}")
        lo, hi = bounds[rank], bounds[rank + 1]
        gpus = ",".join(devices[rank * per_engine:(rank + 1) * per_engine])
        process = context.Process(target=_shard_main,
                                  args=(shard, gpus, kind, requests[lo:hi], params[lo:hi], warmup, send))
        process.start()
        send.close()
        shards.append((process, receive))
    values, timings, errors = [], [], []
    for process, receive in shards:
        try:
            status, payload, timing = receive.recv()
        except EOFError:
            status, payload, timing = "error", f"a vLLM data-parallel shard died (exit code {process.exitcode})", None
        process.join()
        if status == "ok":
            values.extend(payload)
            timings.append(timing)
        else:
            errors.append(payload)
    if errors:
        raise VllmFailed(errors[0])
    # The shards run side by side: the slowest one sets the pace.
    timing = {key: max(t[key] for t in timings) for key in ("load_s", "warmup_s", "wall_s")}
    return values, {**timing, "vllm_version": timings[0]["vllm_version"]}

def _extract(kind: str, outputs: list) -> list:
    """Plain values from vLLM's outputs, in request order (vLLM returns them in that order)."""
    if kind == "text":
        return [out.outputs[0].text for out in outputs]
    if kind == "next":
        return [{tid: lp.logprob for tid, lp in out.outputs[0].logprobs[0].items()} for out in outputs]
    return [[{tid: lp.logprob for tid, lp in pos.items()} if pos else None for pos in out.prompt_logprobs]
            for out in outputs]
