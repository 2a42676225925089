"""When is a batch due? Count and age thresholds over the examples not yet batched.

`immediate` mode batches each file as it is read (the daemon does that at
ingestion); `batched` waits for `batch.max_examples` examples or for the
oldest to be `batch.max_age_minutes` old. `force` (memzd --once) batches
whatever is waiting. A batch holds one user's examples (or shared ones), so
that each trains its own lineage.
"""

from __future__ import annotations

import time

from .config import Config
from .store import Store


def due_batches(store: Store, config: Config, force: bool = False, now: float | None = None) -> list[int]:
    """Create the batches that are due now, each of one user's examples (or shared ones);
    returns their ids."""
    now = time.time() if now is None else now
    limit = config.batch.max_examples
    created = []
    for user in store.waiting_users():
        while True:
            count, oldest = store.unbatched(user)
            if count == 0:
                break
            full = count >= limit
            old = oldest is not None and now - oldest >= config.batch.max_age_minutes * 60
            if not (force or full or old or config.update_mode == "immediate"):
                break
            batch_id = store.create_batch(limit=limit, user=user)
            if batch_id is None:
                break
            created.append(batch_id)
    return created
