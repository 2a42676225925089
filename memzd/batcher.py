"""When is a batch due? Count and age thresholds over the examples not yet batched.

`immediate` mode batches each file as it is read (the daemon does that at
ingestion); `batched` waits for `batch.max_examples` examples or for the
oldest to be `batch.max_age_minutes` old. `force` (memzd --once) batches
whatever is waiting. A batch holds one user's examples (or shared ones), so
that each trains its own lineage, and at most what one adapter holds
(`lora.shard_size`): more waiting become several batches, trained one after
another, each into its own adapter (one batch of 60 facts learned 0.42 of
them in its 40 steps; batches of 20 learn them all).
"""

from __future__ import annotations

import time

from .config import Config
from .store import Store


def batch_limit(config: Config) -> int:
    """The most examples one batch holds: `batch.max_examples`, and with shards (routing on)
    no more than one adapter holds."""
    shard = config.lora.shard_size if config.routing.enabled else 0
    return min(config.batch.max_examples, shard) if shard else config.batch.max_examples


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
            take = limit if full else count  # when full, batch.max_examples of them: the rest may wait
            per = batch_limit(config)
            made = [store.create_batch(limit=min(per, take - start), user=user) for start in range(0, take, per)]
            created += [b for b in made if b is not None]
            if None in made:
                break
    return created
