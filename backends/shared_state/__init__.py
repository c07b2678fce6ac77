"""State that replicas of ollamux share through one Redis (``shared_state: {redis: URL}``):
slot leases, the replica registry and the events that keep their views in step."""

from ollamux.backends.shared_state.slots import Held, RedisSlots

__all__ = ["Held", "RedisSlots"]
