"""The command line's progress bar: a tqdm bar over tokens, fed by the library's per-step callbacks."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

POSTFIX = {"nmse": "{:.3f}", "l0": "{:.1f}", "dead_frac": "{:.3f}", "training": "{}"}  # shown when present


class ProgressBar:
    """Call it with each step's metrics (``tokens`` so far, and any of :data:`POSTFIX`): tokens/s and ETA.

    The first call sets the starting point (a resumed run starts part-way), so the rate counts
    only the tokens of this session; it may also bring the ``total`` when the caller did not know it.
    """

    def __init__(self, total: int | None = None, desc: str = "train", enabled: bool = True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.bar: Any = None

    def __call__(self, metrics: dict[str, Any]) -> None:
        tokens = int(metrics["tokens"])
        if self.bar is None:
            self.bar = tqdm(total=metrics.get("total", self.total), initial=tokens, unit="tok", unit_scale=True, disable=not self.enabled,
                            dynamic_ncols=True, desc=self.desc)
            return
        self.bar.update(tokens - self.bar.n)
        shown = {k.split("_")[0]: f.format(metrics[k]) for k, f in POSTFIX.items() if k in metrics}
        if shown:
            self.bar.set_postfix(shown, refresh=False)

    def write(self, line: str) -> None:
        """Print a line without breaking the bar."""
        tqdm.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
