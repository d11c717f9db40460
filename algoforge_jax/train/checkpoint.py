"""Training-state checkpoints: `DIR/<step>/` holding a state pytree and the data iterator's position.

The state is any pytree of arrays: one `TrainState` for SFT, or e.g. `{"planner": TrainState, "coder": TrainState}`
for a stage that trains both agents.

Orbax's `CheckpointManager` keeps the last N steps and writes asynchronously: `save` returns once the arrays are
copied to host memory, so the next (donating) train step may reuse the device buffers while files are written.
Restore targets are the abstract state for the *current* mesh, so a run resumes onto any device count.

The iterator is anything with `get_state() -> JSON-able dict` and `set_state(dict)` (grain's iterators have
exactly these), saved as a JSON item beside the arrays: resuming restores the data order too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import orbax.checkpoint as ocp

from algoforge_jax.errors import UserError


class Resumable(Protocol):
    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


class StateCheckpoints:
    """Save and restore (state pytree, iterator position) under one directory; a context manager that waits for
    pending writes on exit."""

    def __init__(self, directory, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data: Resumable, *, force: bool = False) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data.get_state()))
        self.manager.save(step, args=args, force=force)

    def restore(self, abstract, data: Resumable, step: int | None = None):
        """The saved state at `step` (default: latest) laid out like `abstract`; `data` is moved to its position."""
        step = self.latest_step() if step is None else step
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
        try:
            restored = self.manager.restore(step, args=args)
        except (ValueError, KeyError) as e:
            raise UserError(f"{self.manager.directory / str(step)}: does not match this config's model and "
                            f"optimizer: {e}") from None
        data.set_state(restored.data)
        return restored.state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.manager.wait_until_finished()
        self.manager.close()
