"""The model servers behind the bridge: one `Backend` per server.

Each backend has what must not be shared between servers: its own HTTP client and circuit breaker
(a dead server does not slow calls to the others), its own per-model queues (in the catalog) and
its own learned `ServerCapabilities`. LMSTUDIO_BACKENDS lists them as JSON,
`[{"name": "laptop", "url": "http://localhost:1234"}, {"name": "gpu", "url": "http://10.0.0.5:1234",
"api_key": "...", "max_concurrency": 2}]`; unset, the one server of LMSTUDIO_BASE_URL (or
LMSTUDIO_HOST / LMSTUDIO_PORT, with LMSTUDIO_API_KEY) is the backend named `lmstudio`.

Which backend serves a call is the catalog's decision (`llm.models`); `with_failover` gives a
call a second chance on another server that has the same model when the first cannot be reached.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from config import Settings
from llm.capabilities import ServerCapabilities
from llm.exceptions import LLMConnectionError
from llm.llm_client import ClientOptions, LLMClient
from utils.metrics import Metrics

if TYPE_CHECKING:
    from llm.models import ModelCatalog, Purpose, ResolvedModel

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BACKEND = "lmstudio"


@dataclass
class Backend:
    """One model server: its name, its client (breaker inside), what its API can do, its queue size."""

    name: str
    client: LLMClient
    capabilities: ServerCapabilities
    max_concurrency: int | None = None

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def reachable(self) -> bool:
        """False while the breaker is open (recent calls all failed to connect): route elsewhere."""
        return self.client.breaker_state != "open"


async def open_backends(settings: Settings, metrics: Metrics, stack: AsyncExitStack) -> list[Backend]:
    """The backends the settings describe, their clients entered into `stack` (closed with it)."""
    base = ClientOptions.from_settings(settings)
    specs = settings.lmstudio_backends
    if not specs:
        client = await stack.enter_async_context(LLMClient(replace(base, name=DEFAULT_BACKEND), metrics=metrics))
        capabilities = ServerCapabilities(client.base_url, settings.lmstudio_api_mode)
        return [Backend(DEFAULT_BACKEND, client, capabilities, settings.lmstudio_max_concurrency)]
    backends = []
    for spec in specs:
        options = replace(
            base,
            name=spec.name,
            base_url=spec.url,
            api_key=spec.api_key.get_secret_value() if spec.api_key else None,
            max_connections=(spec.max_concurrency or 4) * 4 + 4,
        )
        client = await stack.enter_async_context(LLMClient(options, metrics=metrics))
        capabilities = ServerCapabilities(client.base_url, settings.lmstudio_api_mode)
        backends.append(Backend(spec.name, client, capabilities, spec.max_concurrency or settings.lmstudio_max_concurrency))
    return backends


async def with_failover(
    catalog: ModelCatalog,
    name: str | None,
    call: Callable[[ResolvedModel], Awaitable[T]],
    *,
    purpose: Purpose = "chat",
) -> T:
    """`call(model)` on the server the catalog routes `name` to; if that server cannot be reached and
    another has the same model (and the call was not pinned with `model@server`), once more there.

    Raises:
        LLMConnectionError: the server could not be reached, and no other has the model.
        whatever `catalog.resolve` and `call` raise otherwise.
    """
    resolved = await catalog.resolve(name, purpose=purpose)
    try:
        return await call(resolved)
    except LLMConnectionError:
        other = await catalog.elsewhere(resolved, purpose=purpose)
        if other is None:
            raise
        logger.warning(
            "model server %r cannot be reached: %s goes to %r instead", resolved.backend.name, resolved.id,
            other.backend.name,
        )
        return await call(other)


class ResponseChains:
    """Which server and model hold each stored response (a `/v1/responses` chain lives on one server).

    `create_response` remembers where each response it made went; a continuation
    (`previous_response_id`) goes back there. Bounded: the oldest are forgotten past `limit`.
    """

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._where: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def remember(self, response_id: str, model: ResolvedModel) -> None:
        if not response_id or model.server is None:
            return
        self._where[response_id] = (model.server, model.id)
        self._where.move_to_end(response_id)
        while len(self._where) > self._limit:
            self._where.popitem(last=False)

    def pinned_name(self, response_id: str | None, model: str | None) -> str | None:
        """The name to resolve for a continuation: `model@server` of the stored response, else `model`."""
        where = self._where.get(response_id or "")
        if where is None:
            return model
        server, stored_model = where
        return f"{model or stored_model}@{server}"
