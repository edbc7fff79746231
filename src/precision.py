"""Which float type training and inference compute in, per device: bfloat16 where the CPU or GPU has it,
float16 on GPUs with fast float16 but no bfloat16 (P100, V100, T4), float32 elsewhere.

Weights stay float32 (Keras "mixed" policies), so a run trained anywhere predicts anywhere, in any precision.
On a CPU without bfloat16 instructions (no AMX or AVX512-BF16) bfloat16 is emulated and ~3x slower, so auto
keeps float32 there; on an AMD EPYC with AVX512-BF16 the kit trains the slim model 1.5x as fast in it.
"""

from __future__ import annotations

from src.errors import DigitsError

CHOICES = ("auto", "float32", "bfloat16", "float16")


def choose(gpu_capability: tuple[int, int] | None, cpu_flags: set[str]) -> str:
    """The fastest safe precision for a GPU of this CUDA compute capability, else for a CPU with these flags."""
    if gpu_capability is not None:
        if gpu_capability >= (8, 0):  # Ampere and later
            return "bfloat16"
        return "float16" if gpu_capability >= (6, 0) else "float32"
    return "bfloat16" if {"amx_bf16", "avx512_bf16"} & cpu_flags else "float32"


def cpuinfo(field: str) -> str | None:
    """The value of `field` ("flags", "model name") of the first CPU in /proc/cpuinfo; None where there is none."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    return set((cpuinfo("flags") or "").split())


def gpu_capability() -> tuple[int, int] | None:
    """The first GPU's CUDA compute capability, or None without one."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    return tuple(capability) if capability else None


def resolve(choice: str) -> str:
    """`--precision` as given, or for auto what this machine computes fastest in."""
    if choice not in CHOICES:
        raise DigitsError(f"--precision {choice}: choose one of {', '.join(CHOICES)}")
    return choose(gpu_capability(), cpu_flags()) if choice == "auto" else choice
