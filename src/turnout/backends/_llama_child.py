"""Entry point of a llama.cpp server child: ``python -m turnout.backends._llama_child ARGS``.

It runs ``llama_cpp.server`` with the same arguments, after one fix that the
server's own flags cannot express: on CPUs with Intel AMX, ggml's AMX matrix
kernels (an "extra buffer type") crashed the process with a segmentation fault
on the first decode (seen here in a VM on a Sapphire Rapids host, with
llama-cpp-python 0.3.36 built natively). Model loading then turns extra buffer
types off (``use_extra_bufts = False``), which keeps the plain CPU kernels.

``TURNOUT_LLAMA_EXTRA_BUFTS`` overrides the detection: ``0`` turns them off on
any CPU, ``1`` keeps them on even with AMX. Nothing happens at import time: the
patch is applied by :func:`main` only.
"""

from __future__ import annotations

import os
from pathlib import Path

_AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether this CPU advertises Intel AMX (``/proc/cpuinfo`` flags; False where that file is absent)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(f in flags for f in _AMX_FLAGS)
    return False


def extra_bufts_wanted(env: dict[str, str] | None = None, cpuinfo: str | None = None) -> bool:
    """True to keep ggml's extra buffer types (repacking, AMX); see the module docstring."""
    value = (env if env is not None else os.environ).get("TURNOUT_LLAMA_EXTRA_BUFTS", "").strip()
    if value in ("0", "1"):
        return value == "1"
    return not cpu_has_amx(cpuinfo)


def _disable_extra_bufts() -> None:
    import llama_cpp.llama_cpp as capi

    original = capi.llama_model_default_params

    def params():  # type: ignore[no-untyped-def]
        p = original()
        p.use_extra_bufts = False
        return p

    # llama_cpp.llama reads the function off this module at call time, so one patch covers it
    capi.llama_model_default_params = params


def main() -> None:
    if not extra_bufts_wanted():
        _disable_extra_bufts()
    from llama_cpp.server.__main__ import main as server_main

    server_main()  # type: ignore[no-untyped-call]  # llama_cpp's server entry point is not annotated


if __name__ == "__main__":
    main()
