"""State that replicas of ollamux share through one Redis (``shared_state: {redis: URL}``):
slot leases, the replica registry and the events that keep their views in step."""

from ollamux.backends.shared_state.slots import Held, Place, RedisSlots, score

__all__ = ["Held", "Place", "RedisSlots", "score"]
