"""MLX on a Linux CPU: Debian's OpenBLAS (libopenblas0-pthread), preloaded, makes mlx's CPU matmul several times
faster (docs/export.md). The one place that names it, for the processes that run MLX and the hint eval prints.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")


def openblas_unused(env: dict[str, str] | None = None) -> bool:
    """True on Linux where OpenBLAS is installed but not preloaded in ``env`` (default: this process's)."""
    env = os.environ if env is None else env
    return sys.platform.startswith("linux") and OPENBLAS.exists() and str(OPENBLAS) not in env.get("LD_PRELOAD", "")


def mlx_cpu_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that runs MLX: OpenBLAS preloaded when installed (Linux only), offline Hub."""
    env = dict(os.environ if env is None else env, HF_HUB_OFFLINE="1")
    if openblas_unused(env):
        env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), str(OPENBLAS)]))
    return env
