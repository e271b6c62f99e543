"""The system panel (`m`): the machine under the run, from its newest `SystemSampled` event.

One line per GPU (utilisation, memory, temperature, power, its name last so a narrow terminal cuts that first), then
one line per rank's process (CPU, RAM, DataLoader workers); many GPUs, or a narrow screen, pack them tighter
(`system_text`). Shown by default when the samples have GPUs; where there
is no NVML the panel starts hidden and `m` shows the CPU lines. Renders the state only: no clock, no sampling here.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tuitune.engine.events import GpuSample, ProcessSample, SystemSampled
from tuitune.ui.state import DashboardState

BAR = 10  # cells of a utilisation or memory bar
FULL_LINES = 2  # GPUs (and ranks) that get a line each on a wide screen
FULL, EMPTY = "█", "░"


def bar(fraction: float, style: str, width: int = BAR) -> Text:
    filled = round(width * min(max(fraction, 0.0), 1.0))
    return Text.assemble((FULL * filled, style), (EMPTY * (width - filled), "dim"))


def _level(fraction: float, warn: float, bad: float) -> str:
    return "bold red" if fraction >= bad else "yellow" if fraction >= warn else "green"


def gpu_line(g: GpuSample, ranks: int) -> Text:
    """`GPU0 ██████████ 97%  mem ███████░░░ 61.2/79.6 GB  71°C  512/700 W  NVIDIA H100 80GB HBM3`"""
    label = f"GPU{g.index}" + (f" r{g.rank}" if ranks > 1 else "")
    mem = g.mem_used_gb / g.mem_total_gb if g.mem_total_gb else 0.0
    line = Text.assemble(
        (f"{label:<5}", "bold"),
        " ",
        bar(g.util_pct / 100, "green"),
        f" {g.util_pct:3.0f}%  mem ",
        bar(mem, _level(mem, 0.85, 0.95)),
        f" {g.mem_used_gb:.1f}/{g.mem_total_gb:.1f} GB",
    )
    if g.temp_c is not None:
        line.append(f"  {g.temp_c:.0f}°C", "bold red" if g.temp_c >= 85 else "")
    if g.power_w is not None:
        limit = f"/{g.power_limit_w:.0f}" if g.power_limit_w else ""
        line.append(f"  {g.power_w:.0f}{limit} W")
    line.append(f"  {g.name}", "dim")
    return line


def gpu_cell(g: GpuSample) -> Text:
    """`GPU3 97% 61/86G 71°C 512W`: one GPU in a quarter of a wide line (many GPUs, or a narrow terminal)."""
    mem = g.mem_used_gb / g.mem_total_gb if g.mem_total_gb else 0.0
    cell = Text.assemble(
        (f"GPU{g.index} ", "bold"),
        (f"{g.util_pct:3.0f}%", "green"),
        (f" {g.mem_used_gb:.0f}/{g.mem_total_gb:.0f}G", _level(mem, 0.85, 0.95)),
    )
    if g.temp_c is not None:
        cell.append(f" {g.temp_c:.0f}°C", "bold red" if g.temp_c >= 85 else "")
    if g.power_w is not None:
        cell.append(f" {g.power_w:.0f}W")
    return cell


def _cells(cells: list[Text], per_line: int) -> list[Text]:
    return [Text("  ").join(cells[i : i + per_line]) for i in range(0, len(cells), per_line)]


def process_line(label: str, ps: tuple[ProcessSample, ...], sample: SystemSampled) -> Text:
    """`CPU  ███░░░░░░░ 180% of 16 cores  RAM 3.1/128.0 GB  workers 8: 640% CPU, 9.1 GB`, for one rank or the sum
    of several (`label`: "CPU", "r1" or "2 ranks")."""
    cores = max(sample.cpus, 1)
    cpu, ram = sum(p.cpu_pct for p in ps), sum(p.ram_gb for p in ps)
    workers, w_cpu, w_ram = (
        sum(p.workers for p in ps),
        sum(p.workers_cpu_pct for p in ps),
        sum(p.workers_ram_gb for p in ps),
    )
    line = Text.assemble(
        (f"{label:<5}", "bold"),
        " ",
        bar(cpu / (100 * cores), "cyan"),
        f" {cpu:3.0f}% of {cores} core{'s' if cores != 1 else ''}",
        f"  RAM {ram:.1f}/{sample.ram_total_gb:.1f} GB",
    )
    if workers:
        line.append(f"  workers {workers}: {w_cpu:.0f}% CPU, {w_ram:.1f} GB")
    else:
        line.append("  no workers", "dim")
    return line


def system_text(sample: SystemSampled, narrow: bool = False) -> Text:
    """A line per GPU (its name last, cut first) and per rank's process; on a narrow screen (80x24) or past
    `FULL_LINES` GPUs, the GPUs packed several to a line and the ranks' processes summed in one, so the panel
    takes two or three lines where it can."""
    gpus, procs = sample.gpus, sample.processes
    ranks = len({g.rank for g in gpus} | {p.rank for p in procs})
    if len(gpus) <= (1 if narrow else FULL_LINES):
        lines = [gpu_line(g, ranks) for g in gpus]
    else:
        lines = _cells([gpu_cell(g) for g in gpus], 3 if narrow else 4)
    if len(procs) == 1:
        lines.append(process_line("CPU", procs, sample))
    elif narrow or len(procs) > FULL_LINES:
        lines.append(process_line(f"{len(procs)} ranks", procs, sample))
    else:
        lines += [process_line(f"r{p.rank}", (p,), sample) for p in procs]
    return Text("\n").join(lines)


def shown_by_default(state: DashboardState) -> bool:
    """On where the samples have GPUs; hidden where there is no NVML (and before the first sample)."""
    return state.system is not None and bool(state.system.gpus)


class SystemPanel(Static):
    """The panel; `show` updates it only when its sample (or the screen's width class) changed."""

    DEFAULT_CSS = """
    SystemPanel { height: auto; max-height: 9; padding: 0 1; background: $boost; text-wrap: nowrap;
                  text-overflow: ellipsis; display: none; }
    """

    def __init__(self) -> None:
        super().__init__(id="system-panel")
        self._shown: tuple[SystemSampled | None, bool] = (None, False)

    def show(self, state: DashboardState, visible: bool, narrow: bool = False) -> None:
        visible = visible and state.system is not None
        if self.display != visible:
            self.display = visible
        if visible and (state.system, narrow) != self._shown:
            self._shown = (state.system, narrow)
            assert state.system is not None
            self.update(system_text(state.system, narrow))
