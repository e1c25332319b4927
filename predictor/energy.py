"""Energy per inference from cumulative hardware counters, idle power subtracted.

NVML's total-energy counter on NVIDIA GPUs (`nvidia-ml-py`), RAPL under
`/sys/class/powercap` on CPUs where readable; otherwise no meter and a note saying why.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from predictor.errors import first_line as _first_line

ENERGY_SECONDS = 1.0  # length of the idle and the busy energy window
# Quiet time before the idle window and run time before the busy window, so that each
# window sees power at its steady level: board power sensors average over up to a second,
# so a window that starts right after a change counts part of the other level.
ENERGY_SETTLE_SECONDS = 0.5

class EnergyMeter(ABC):
    """A cumulative hardware energy counter: `read()` snapshots, `delta_mj` between two."""

    name: str = "energy"

    @abstractmethod
    def read(self) -> tuple[float, ...]:
        """Raw counter values now."""

    @abstractmethod
    def delta_mj(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        """Energy used between two snapshots, in mJ."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the counter's library handle, if any."""


class NvmlEnergyMeter(EnergyMeter):
    """GPU board energy since driver load (`nvmlDeviceGetTotalEnergyConsumption`, Volta+)."""

    name = "NVML"

    def __init__(self, index: int = 0) -> None:
        import pynvml  # nvidia-ml-py; ImportError tells the opener it is missing

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.read()  # NVMLError_NotSupported on GPUs without the counter

    def read(self) -> tuple[float, ...]:
        return (float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)),)

    def delta_mj(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        return end[0] - start[0]  # the counter is in mJ

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class RaplEnergyMeter(EnergyMeter):
    """CPU package energy from Linux powercap (`intel-rapl:N/energy_uj`, also on AMD)."""

    name = "RAPL"

    def __init__(self, root: Path | str = "/sys/class/powercap") -> None:
        root = Path(root)
        if not root.is_dir():
            raise OSError(f"{root} missing")
        zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
        if not zones:  # sub-zones (intel-rapl:0:0, cores) are part of their package
            raise OSError(f"no intel-rapl:N package zone in {root}")
        self._files = [zone / "energy_uj" for zone in zones]
        self._ranges = [int((zone / "max_energy_range_uj").read_text()) for zone in zones]
        self.read()  # PermissionError where only root may read the counters

    def read(self) -> tuple[float, ...]:
        return tuple(float(int(f.read_text())) for f in self._files)

    def delta_mj(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        total_uj = 0.0
        for a, b, wrap in zip(start, end, self._ranges, strict=True):
            total_uj += b - a if b >= a else b + wrap - a  # the counter wrapped once
        return total_uj / 1000.0


def open_energy_meter(device: str = "cpu", *, rapl_root: Path | str = "/sys/class/powercap",
                      ) -> tuple[EnergyMeter | None, str | None]:
    """The meter for `device` (NVML for cuda, RAPL for cpu), or None and why not."""
    if device == "cuda":
        try:
            return NvmlEnergyMeter(), None
        except ImportError:
            why = "pynvml not installed (pip install nvidia-ml-py)"
        except Exception as exc:  # pynvml.NVMLError_* (no driver, no GPU, not supported)
            why = f"NVML energy counter unavailable ({_first_line(exc)})"
        return None, f"no GPU energy: {why}"
    try:
        return RaplEnergyMeter(rapl_root), None
    except PermissionError as exc:
        why = f"permission denied on {exc.filename} (needs root or a udev rule)"
    except (OSError, ValueError) as exc:
        why = str(exc)
    return None, f"RAPL not readable: {why}; CPU energy needs RAPL (NVML measures GPUs only)"


def measure_energy(meter: EnergyMeter, run: Callable[[], object], *,
                   seconds: float = ENERGY_SECONDS,
                   settle: float = ENERGY_SETTLE_SECONDS) -> tuple[float | None, str]:
    """Energy per call of `run` above idle, in mJ, and a note on how it was measured.

    Waits `settle` seconds, reads the counter over `seconds` of idle, runs `run` for
    `settle` seconds unmeasured, then reads it over a loop of `run` lasting at least
    `seconds`, and subtracts the idle power for the loop's duration. Returns None when the
    difference is not positive (the model draws too little power to tell from idle).
    """
    time.sleep(settle)
    t0, e0 = time.perf_counter(), meter.read()
    time.sleep(seconds)
    e1, idle_s = meter.read(), time.perf_counter() - t0
    idle_mw = meter.delta_mj(e0, e1) / idle_s
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < settle:
        run()
    runs, t0, e0 = 0, time.perf_counter(), meter.read()
    while True:
        run()
        runs += 1
        if time.perf_counter() - t0 >= seconds:
            break
    e1, busy_s = meter.read(), time.perf_counter() - t0
    above_idle = meter.delta_mj(e0, e1) - idle_mw * busy_s
    note = (f"{meter.name}: {runs} runs in {busy_s:.2f} s, idle {idle_mw / 1000:.1f} W "
            "subtracted")
    if above_idle <= 0:
        return None, note + "; energy above idle not measurable (<= 0)"
    return above_idle / runs, note
