"""tritonclient's methods for the Triton extensions loadonce does not offer, each with the
start of its refusal; the same for ``tritonclient.http`` and ``tritonclient.grpc``, whose
methods have the same names and arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A call of one method: (client, a served model's name).
UnsupportedCall = Callable[[Any, str], object]

_TRACES = "trace settings are not supported by this server (loadonce)"
_LOGS = "log settings are not supported by this server (loadonce)"
_SYSTEM = "system shared memory is not supported by this server (loadonce)"
_CUDA = "CUDA shared memory is not supported by this server (loadonce)"

UNSUPPORTED_CALLS: list[tuple[str, UnsupportedCall, str]] = [
    ("get_trace_settings", lambda c, m: c.get_trace_settings(), _TRACES),
    ("get_model_trace_settings", lambda c, m: c.get_trace_settings(m), _TRACES),
    (
        "update_trace_settings",
        lambda c, m: c.update_trace_settings(None, {"trace_rate": "1"}),
        _TRACES,
    ),
    ("update_model_trace_settings", lambda c, m: c.update_trace_settings(m, {}), _TRACES),
    ("get_log_settings", lambda c, m: c.get_log_settings(), _LOGS),
    ("update_log_settings", lambda c, m: c.update_log_settings({"log_verbose_level": 1}), _LOGS),
    ("system_status", lambda c, m: c.get_system_shared_memory_status(), _SYSTEM),
    ("system_region_status", lambda c, m: c.get_system_shared_memory_status("r"), _SYSTEM),
    ("system_register", lambda c, m: c.register_system_shared_memory("r", "/key", 64), _SYSTEM),
    ("system_unregister_all", lambda c, m: c.unregister_system_shared_memory(), _SYSTEM),
    ("system_unregister", lambda c, m: c.unregister_system_shared_memory("r"), _SYSTEM),
    ("cuda_status", lambda c, m: c.get_cuda_shared_memory_status(), _CUDA),
    ("cuda_region_status", lambda c, m: c.get_cuda_shared_memory_status("r"), _CUDA),
    ("cuda_register", lambda c, m: c.register_cuda_shared_memory("r", b"\0" * 64, 0, 64), _CUDA),
    ("cuda_unregister_all", lambda c, m: c.unregister_cuda_shared_memory(), _CUDA),
    ("cuda_unregister", lambda c, m: c.unregister_cuda_shared_memory("r"), _CUDA),
]
