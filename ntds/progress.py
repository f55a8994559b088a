"""Progress on long work, on a terminal only: one helper (tqdm) for every command.

Under systemd, in a pipe or in a test the output is silent, so logs and
captured stderr hold only what matters; on a terminal the operator sees that
a long build or replay is moving and how fast.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """A tqdm bar on stderr when it is a terminal (or `enabled`), nothing otherwise.

    `status=True` makes it a one-line status (the text given to `note`) instead of a counter.
    """

    def __init__(
        self,
        desc: str = "",
        *,
        total: int | None = None,
        unit: str = "it",
        unit_scale: bool = False,
        enabled: bool | None = None,
        status: bool = False,
    ) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._done = 0
        self.status = status
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=unit_scale,
            file=sys.stderr,
            disable=not self.enabled,
            leave=True,
            dynamic_ncols=True,
            mininterval=0.5,
            bar_format="{desc}" if status else None,
        )

    def update(self, n: int = 1) -> None:
        self._done += n
        self.bar.update(n)

    def to(self, done: int) -> None:
        """Move to an absolute count (bytes read so far, say)."""
        if done > self._done:
            self.update(done - self._done)

    def note(self, text: str) -> None:
        """The status line (status=True), or text after the counter."""
        if self.status:
            self.bar.set_description_str(text, refresh=True)
        else:
            self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        self.bar.close()
