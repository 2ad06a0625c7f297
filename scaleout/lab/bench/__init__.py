"""`make bench`: wrk runs (`wrk`), pairing and ratios (`pairing`), peers (`peers/`), the orchestration
(`run`), typed results (`results`) and the outputs (`output`)."""

from scaleout.lab.bench.output import write
from scaleout.lab.bench.run import MODES, QUICK_MODES, run

__all__ = ["MODES", "QUICK_MODES", "run", "write"]
