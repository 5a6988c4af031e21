"""NVIDIA GPUs through pynvml (from nvidia-ml-py). No driver or no GPU: empty lists, no error.

NVML is initialised once, lazily; a failed init is remembered so that a node without GPUs pays
for the attempt only once.
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger("zriver.runner")
_state: dict[str, Any] = {"ready": None}


def _nvml():
    if _state["ready"] is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _state["ready"], _state["nvml"] = True, pynvml
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
            _state["ready"] = False
            log.info("gpus.none", reason=type(exc).__name__)
    return _state["nvml"] if _state["ready"] else None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def inventory() -> list[dict[str, Any]]:
    """Index, uuid, name and total memory of each GPU."""
    nvml = _nvml()
    if nvml is None:
        return []
    result = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            result.append({
                "index": index,
                "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                "name": _text(nvml.nvmlDeviceGetName(handle)),
                "memory": int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
            })
    except Exception as exc:
        log.warning("gpus.inventory_failed", error=str(exc))
    return result


def usage() -> list[dict[str, Any]]:
    """Index, uuid, utilisation, memory used, temperature and power of each GPU, best
    effort (the uuids tell the host whether the GPU set changed)."""
    nvml = _nvml()
    if nvml is None:
        return []
    result = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            entry = {"index": index, "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                     "utilization": util.gpu,
                     "memory_used": int(nvml.nvmlDeviceGetMemoryInfo(handle).used)}
            try:
                entry["temperature"] = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                entry["power_watts"] = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except Exception:
                pass
            result.append(entry)
    except Exception as exc:
        log.warning("gpus.usage_failed", error=str(exc))
    return result
