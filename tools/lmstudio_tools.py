"""The direct LM Studio tools: health, models, chat and text completion, embeddings, responses.

Every tool that runs a model takes an optional `model`, resolved by the model catalog
(aliases resolved; an unknown name fails with the available list; a model LM Studio would
substitute is loaded first) before any generation starts. `model` left out means the default
model (DEFAULT_MODEL, else the loaded one). After the call the catalog checks the model the
reply names (`check_answer`): another model than the one named is an error, or a `note`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from llm.backends import with_failover
from llm.listing import ModelInfo
from llm.llm_client import LLMClient
from llm.models import ResolvedModel
from llm.reasoning import split_reasoning
from llm.results import ChatResult, CompletionResult, EmbeddingsResult, StreamEvent, Usage
from llm.structured import TypedAnswer
from tools.app import AppState, app_state
from tools.progress import ProgressReporter
from tools.results import as_json, reports_errors, success
from tools.typed_results import OutputSchema, checked_schema, typed_fields
from tools.typed_results import chat as typed_or_plain_chat
from tools.typed_results import respond as typed_or_plain_response

ModelParam = Annotated[
    str | None,
    Field(
        description=(
            "Optional model id from list_models, e.g. 'qwen/qwen3-coder-30b', or an alias from "
            "MODEL_ALIASES. Leave out to use the default model."
        ),
        max_length=300,
    ),
]
Temperature = Annotated[float, Field(description="Sampling temperature, 0 to 2; e.g. 0.2 for code.", ge=0, le=2)]
# Integers are strict: "100", 100.0 and true are refused, not read as numbers.
MaxTokens = Annotated[int, Field(description="Most tokens to generate, e.g. 1024.", ge=1, le=131072, strict=True)]

_READ_ONLY = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
_GENERATES = ToolAnnotations(readOnlyHint=True, idempotentHint=False, openWorldHint=False)


_SOURCES = {
    "DEFAULT_MODEL": "DEFAULT_MODEL",
    "loaded": "loaded model",
    "first listed": "first model listed: none is loaded, LM Studio loads it on first use",
}


def _model_row(info: ModelInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "server": info.server,
        "type": info.type,
        "state": info.state,
        "max_context_length": info.max_context_length,
        "loaded_context_length": info.loaded_context_length,
        "loaded_instances": _instances(info),
        "trained_for_tool_use": info.trained_for_tool_use,
    }


def _server_rows(state: AppState) -> list[dict[str, object]]:
    return [
        {"name": h.name, "base_url": h.base_url, "ok": h.ok, "models": h.models, "latency_ms": h.latency_ms,
         "error": h.error}
        for h in state.catalog.health()
    ]


def _instances(info: ModelInfo) -> list[dict[str, object]]:
    return [{"id": i.id, "context_length": i.context_length} for i in info.instances]


def _checked(state: AppState, resolved: ResolvedModel, answered: str | None, text: str,
             data: dict[str, object]) -> CallToolResult:
    """The result, after the catalog checked who answered: a `note` (and a line of text) when another model did.

    Raises:
        ModelMismatchError: the call named the model, and MODEL_MISMATCH is `error`.
    """
    note = state.catalog.check_answer(resolved, answered)
    if note is not None:
        text, data = f"{text}\n\n[Note: {note}]", {**data, "note": note}
    return success(text, data)


def register_lmstudio_tools(mcp: MCPServer[AppState]) -> None:
    """Add the direct LM Studio tools to `mcp`."""

    @mcp.tool(annotations=_READ_ONLY)
    @reports_errors
    async def health_check(ctx: Context) -> CallToolResult:
        """Check that LM Studio's server (each model server) answers, and how many models it offers and has loaded."""
        state = app_state(ctx)
        started = time.perf_counter()
        models = await state.catalog.models(refresh=True)
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        loaded = [m.id for m in models if m.is_loaded]
        servers = _server_rows(state)
        instances = [row for m in models for row in _instances(m)]
        shown = [f"{i['id']} (context {i['context_length']})" if i["context_length"] else str(i["id"]) for i in instances]
        if len(servers) == 1:
            text = f"LM Studio is reachable at {state.catalog.base_url} ({latency_ms} ms): {len(models)} models"
        else:
            up = [s for s in servers if s["ok"]]
            text = f"{len(up)} of {len(servers)} model servers reachable ({latency_ms} ms): {len(models)} models"
        text += f", loaded: {', '.join(shown or loaded)}" if loaded else " (loaded state not reported or none loaded)"
        if len(servers) > 1:
            text += "".join(
                f"; {s['name']} ({s['base_url']}): " + (f"{s['models']} models" if s["ok"] else f"DOWN: {s['error']}")
                for s in servers
            )
        return success(
            text,
            {
                "ok": True,
                "base_url": state.catalog.base_url,
                "latency_ms": latency_ms,
                "models": len(models),
                "loaded": loaded,
                "loaded_instances": instances,
                "servers": servers,
            },
        )

    @mcp.tool(annotations=_READ_ONLY)
    @reports_errors
    async def list_models(ctx: Context) -> CallToolResult:
        """List the models LM Studio offers: id, server, type (llm, vlm, embeddings), loaded state, context length.

        Use an id from here as the `model` of any other tool (`id@server` to pin one of several servers).
        """
        models = await app_state(ctx).catalog.models(refresh=True)
        rows = [_model_row(m) for m in models]
        return success(as_json(rows), {"models": rows})

    @mcp.tool(annotations=_READ_ONLY)
    @reports_errors
    async def get_current_model(ctx: Context) -> CallToolResult:
        """Show which model a call without `model` would use, from LM Studio's model state (no generation)."""
        catalog = app_state(ctx).catalog
        models = await catalog.models(refresh=True)
        current = await catalog.resolve(None)
        loaded = [m.id for m in models if m.is_loaded]
        source = _SOURCES[current.source]
        return success(
            f"Current model: {current.id} (from {source})",
            {"model": current.id, "source": source, "loaded": loaded},
        )

    @mcp.tool(annotations=_GENERATES)
    @reports_errors
    async def chat_completion(
        prompt: Annotated[str, Field(description="The user message, e.g. 'Explain this regex: ^a+$'.", min_length=1)],
        ctx: Context,
        system_prompt: Annotated[
            str | None, Field(description="Optional system message, e.g. 'You are a terse reviewer.'")
        ] = None,
        temperature: Temperature = 0.7,
        max_tokens: MaxTokens = 1024,
        model: ModelParam = None,
        output_schema: OutputSchema = None,
    ) -> CallToolResult:
        """Ask a local model one question and get its answer (reasoning kept out of the answer).

        With `output_schema` the answer is JSON matching it, also returned parsed as `result`.
        """
        state = app_state(ctx)
        schema = checked_schema(output_schema)
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        progress = ProgressReporter(ctx)

        async def ask(resolved: ResolvedModel) -> tuple[ResolvedModel, ChatResult, TypedAnswer | None]:
            async def on_event(event: StreamEvent) -> None:
                await progress.report(f"{resolved.id}: generating ({event.chars_so_far} chars)")

            return resolved, *await typed_or_plain_chat(
                messages, model=resolved, schema=schema, temperature=temperature, max_tokens=max_tokens,
                on_event=on_event,
            )

        resolved, result, typed = await with_failover(state.catalog, model, ask)
        answer, inline_reasoning = split_reasoning(result.content)
        reasoning = _joined(result.reasoning, inline_reasoning)
        return _checked(
            state,
            resolved,
            result.model,
            answer,
            {
                "answer": answer,
                "model": result.model or resolved.id,
                "finish_reason": result.finish_reason,
                "reasoning": reasoning,
                "usage": _usage(result.usage),
                **typed_fields(typed),
            },
        )

    @mcp.tool(annotations=_GENERATES)
    @reports_errors
    async def text_completion(
        prompt: Annotated[str, Field(description="Text to continue, e.g. 'def fibonacci(n):'.", min_length=1)],
        ctx: Context,
        temperature: Temperature = 0.7,
        max_tokens: MaxTokens = 512,
        stop: Annotated[
            list[str] | None, Field(description="Optional stop sequences, e.g. ['\\n\\n'].", max_length=16)
        ] = None,
        model: ModelParam = None,
    ) -> CallToolResult:
        """Continue raw text with a local model (no chat template)."""
        state = app_state(ctx)

        async def complete(resolved: ResolvedModel) -> tuple[ResolvedModel, CompletionResult]:
            return resolved, await _client(resolved).text_completion(
                prompt, model=resolved, temperature=temperature, max_tokens=max_tokens, stop=stop
            )

        resolved, result = await with_failover(state.catalog, model, complete)
        return _checked(
            state,
            resolved,
            result.model,
            result.text,
            {
                "text": result.text,
                "model": result.model or resolved.id,
                "finish_reason": result.finish_reason,
                "usage": _usage(result.usage),
            },
        )

    @mcp.tool(annotations=_READ_ONLY)
    @reports_errors
    async def generate_embeddings(
        text: Annotated[
            Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=256)],
            Field(description="A text or a list of up to 256 texts to embed, e.g. ['first', 'second']."),
        ],
        ctx: Context,
        model: Annotated[
            str | None,
            Field(
                description="Optional embedding model id, e.g. 'text-embedding-nomic-embed-text-v1.5'. "
                "Leave out to use the first embedding model LM Studio offers.",
                max_length=300,
            ),
        ] = None,
    ) -> CallToolResult:
        """Turn text into embedding vectors with a local embedding model."""
        state = app_state(ctx)

        async def embed(resolved: ResolvedModel) -> tuple[ResolvedModel, EmbeddingsResult]:
            return resolved, await _client(resolved).generate_embeddings(text, model=resolved)

        resolved, result = await with_failover(state.catalog, model, embed, purpose="embeddings")
        dims = len(result.embeddings[0]) if result.embeddings else 0
        used = result.model or resolved.id
        return _checked(
            state,
            resolved,
            result.model,
            f"{len(result.embeddings)} embedding(s) of {dims} dimensions from {used}",
            {"model": used, "dimensions": dims, "embeddings": result.embeddings},
        )

    @mcp.tool(annotations=_GENERATES)
    @reports_errors
    async def create_response(
        input: Annotated[str, Field(description="The message for this turn, e.g. 'Now make it shorter.'", min_length=1)],
        ctx: Context,
        previous_response_id: Annotated[
            str | None,
            Field(description="Continue a conversation: the response_id a previous call returned, e.g. 'resp_abc123'."),
        ] = None,
        instructions: Annotated[str | None, Field(description="Optional system-style instructions.")] = None,
        temperature: Annotated[float | None, Field(description="Optional temperature, 0 to 2.", ge=0, le=2)] = None,
        max_output_tokens: Annotated[
            int | None, Field(description="Optional cap on output tokens.", ge=1, strict=True)
        ] = None,
        model: ModelParam = None,
        output_schema: OutputSchema = None,
    ) -> CallToolResult:
        """Stateful conversation through LM Studio's /v1/responses: pass the returned response_id to continue.

        With `output_schema` the answer is JSON matching it (validated here: LM Studio does not enforce
        it on this route), also returned parsed as `result`.
        """
        state = app_state(ctx)
        schema = checked_schema(output_schema)
        # A response chain lives on the server that stored it: a continuation goes back there.
        name = state.responses.pinned_name(previous_response_id, model) if len(state.backends) > 1 else model
        resolved = await state.catalog.resolve(name)
        result, typed = await typed_or_plain_response(
            input,
            model=resolved,
            schema=schema,
            previous_response_id=previous_response_id,
            instructions=instructions,
            temperature=temperature,
            max_output_tokens=max_output_tokens,
        )
        state.responses.remember(result.id, resolved)
        answer, inline_reasoning = split_reasoning(result.text)
        reasoning = _joined(result.reasoning, inline_reasoning)
        return _checked(
            state,
            resolved,
            result.model,
            f"{answer}\n\n(response_id: {result.id})",
            {
                "text": answer,
                "response_id": result.id,
                "model": result.model or resolved.id,
                "reasoning": reasoning,
                "usage": _usage(result.usage),
                **typed_fields(typed),
            },
        )


def _client(resolved: ResolvedModel) -> LLMClient:
    assert resolved.backend is not None, "the catalog always routes a model to a server"
    return resolved.backend.client


def _usage(usage: Usage | None) -> dict[str, int | None] | None:
    return dataclasses.asdict(usage) if usage is not None else None


def _joined(*reasoning: str) -> str | None:
    """Reasoning from the separate field and from `<think>` in the text, together (None if neither)."""
    return "\n\n".join(r for r in reasoning if r) or None
