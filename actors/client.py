"""One typed client over a plain class, in process or as a Ray actor made from that class.

A client subclass declares each method once, naming the plain class's own function
(`self._call(ShardCore.put, ...)`); `_call` picks the transport. A renamed or removed method fails
at import, and the local and Ray paths can't drift apart, since there is only one of each method.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from memoray.logs import current_request_id, task_name

T = TypeVar("T")
R = TypeVar("R")


def traced(method: Any, qualname: str) -> Any:
    """An actor method that carries this request's id (memoray.logs) as its Ray task name, so
    the actor's log lines name the request; the method itself when there is no request."""
    name = task_name(qualname, current_request_id())
    return method if name is None else method.options(name=name)


def is_actor_handle(target: Any) -> bool:
    return type(target).__module__.startswith("ray.") and hasattr(target, "_actor_id")


class ActorClient(Generic[T]):
    """`target` is an instance of the plain class, or a Ray ActorHandle of `ray.remote(cls)`."""

    def __init__(self, target: Any):
        self.target = target
        self.remote = is_actor_handle(target)

    async def _call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        if self.remote:
            return await traced(getattr(self.target, fn.__name__), fn.__qualname__).remote(
                *args, **kwargs)
        out = fn(self.target, *args, **kwargs)
        if inspect.isawaitable(out):
            out = await out
        return out

    def __reduce__(self):  # a client crosses Ray as its target (an actor handle pickles)
        return (type(self), (self.target,))
