"""The documentation cannot drift from the code.

- docs/API_REFERENCE.md has a heading per registered tool (### `name`) and, under it, a table row per
  parameter whose default and bounds match the live input schema; README's configuration table lists
  exactly the settings of `config.Settings`, as environment variable names.
- Every example call in docs/API_REFERENCE.md, docs/MULTI_MODEL_GUIDE.md and README.md is a fenced block with the
  info string `json tool=<tool name>`. Each is checked against the live tool's input schema, and run
  against the scripted LM Studio stand-in and real MCP servers (filesystem, memory, time):
    * `expect=error`: the call must fail; the ```text``` block that follows holds its exact message
      (with the stand-in's URL shown as http://localhost:1234 and the config file as /home/you/.mcp.json);
    * `expect=invalid`: the arguments break the schema on purpose, and the bridge must refuse them;
    * otherwise the call must succeed (an autonomous run must complete, its tool calls all ok), and a
      following ```json result=<tool name>``` block must have the same shape (keys) as the live result.
    * `env=NAME=value` on the call block: that call runs on a bridge with that setting added.
  `json env=MODEL_ALIASES` in the guide is the alias map its examples use.

The stand-in plays a model that calls one harmless tool (the time, or the allowed directories, or the
memory graph) and then answers; asked for JSON (a structured-output field in the request) it answers
a value made from the schema. The docs' own example results were captured from richer scripts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import jsonschema
import pytest

from config import Settings
from tests.support.bridge import (
    ROOT,
    bridge_settings,
    in_process_bridge,
    text_of,
    tool_outputs,
    write_mcp_json,
)
from tests.support.fake_lmstudio import FakeLMStudio, FakeModel, RecordedRequest, Turn
from tests.support.mcp_servers import entry_config
from tools.downstream.entries import ServerEntry

API_REFERENCE = ROOT / "docs" / "API_REFERENCE.md"
GUIDE = ROOT / "docs" / "MULTI_MODEL_GUIDE.md"
README = ROOT / "README.md"
EXAMPLE_DOCS = (API_REFERENCE, GUIDE, README)

# The models the docs' examples name; the stand-in offers exactly these, in this order (the order
# shows in the documented "Available: ..." messages).
DOC_MODELS: tuple[FakeModel, ...] = (
    FakeModel("qwen/qwen3-coder-30b", "llm", loaded=True, max_context_length=262144, loaded_context_length=32768),
    FakeModel("mistralai/magistral-small-2509", "llm", loaded=False, max_context_length=131072),
    FakeModel("qwen/qwen3-4b-thinking-2507", "llm", loaded=False, max_context_length=262144),
    FakeModel("qwen/qwen3-4b-2507", "llm", loaded=False, max_context_length=262144),
    FakeModel("google/gemma-3-12b", "vlm", loaded=False, max_context_length=131072),
    FakeModel("text-embedding-nomic-embed-text-v1.5", "embeddings", loaded=False, max_context_length=2048),
)
DOC_URL = "http://localhost:1234"
DOC_CONFIG_PATH = "/home/you/.mcp.json"

# The tools whose result is a run's: it must have completed, its tool calls all ok.
RUN_RESULTS = {
    "autonomous_with_mcp", "autonomous_with_multiple_mcps", "autonomous_discover_and_execute", "autonomous_result"
}

# Harmless calls the scripted model may make, by the server's own tool name.
SAFE_CALLS: dict[str, dict[str, object]] = {
    "get_current_time": {"timezone": "UTC"},
    "list_allowed_directories": {},
    "read_graph": {},
}


# --- reading the markdown -------------------------------------------------------------------------

FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, `key=value` attributes and body."""

    doc: str
    line: int
    lang: str
    attrs: dict[str, str]
    body: str


@dataclass
class Example:
    """A documented call and what the docs say it returns."""

    call: Block
    tool: str
    arguments: dict[str, object]
    result: Block | None = None
    error_text: str | None = None
    expect: str = "ok"
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = f"{self.call.doc}:{self.call.line} {self.tool}"


def fenced_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        words = match["info"].split()
        lang = words[0] if words else ""
        attrs = dict(w.split("=", 1) if "=" in w else (w, "") for w in words[1:])
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(path.name, line, lang, attrs, match["body"]))
    return found


def examples(path: Path) -> list[Example]:
    """The `json tool=` blocks of `path`, each with the result or error block that follows it."""
    blocks = fenced_blocks(path)
    found = []
    for index, block in enumerate(blocks):
        if "tool" not in block.attrs:
            continue
        assert block.lang == "json", f"{path.name}:{block.line}: an example call must be a json block"
        example = Example(block, block.attrs["tool"], json.loads(block.body), expect=block.attrs.get("expect", "ok"))
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        if following is not None and following.attrs.get("result") == example.tool:
            example.result = following
        if example.expect == "error":
            assert following is not None and following.lang == "text", (
                f"{example.label}: an expect=error example must be followed by a ```text block with the message"
            )
            example.error_text = following.body.strip()
        found.append(example)
    return found


def all_examples() -> list[Example]:
    return [e for doc in EXAMPLE_DOCS for e in examples(doc)]


def doc_aliases() -> dict[str, str]:
    for block in fenced_blocks(GUIDE):
        if block.attrs.get("env") == "MODEL_ALIASES":
            return json.loads(block.body)
    return {}


def tool_sections(text: str) -> dict[str, str]:
    """Tool name -> the text under its `### \\`name\\`` heading (up to the next heading)."""
    sections: dict[str, str] = {}
    for match in re.finditer(r"^(#{2,4}) `(\w+)`\s*$", text, re.M):
        # The section runs to the next heading of the same or a higher level.
        following = re.compile(rf"^#{{1,{len(match[1])}}} ", re.M).search(text, match.end())
        sections[match[2]] = text[match.end() : following.start() if following else len(text)]
    return sections


def parameter_rows(section: str) -> dict[str, list[str]]:
    """Parameter name -> the cells of its row in the table headed `| parameter | ...`."""
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in section.splitlines():
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "parameter":
            in_table = True
        elif in_table and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def bounds_of(schema: dict[str, object]) -> set[str]:
    """Every numeric bound in a property's schema, as the text the table shows."""
    found: set[str] = set()
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                "minLength", "maxLength", "minItems", "maxItems"):
        if key in schema:
            found.add(f"{schema[key]:g}" if isinstance(schema[key], float) else str(schema[key]))
    nested = [*schema.get("anyOf", []), *([schema["items"]] if "items" in schema else [])]  # type: ignore[misc]
    for part in nested:
        if isinstance(part, dict):
            found |= bounds_of(part)
    return found


def same_shape(documented: object, live: object, where: str = "result") -> list[str]:
    """Differences in keys between a documented result and a live one (values may differ)."""
    if isinstance(documented, dict) and isinstance(live, dict):
        problems = []
        if set(documented) != set(live):
            problems.append(
                f"{where}: documented keys {sorted(documented)} != live keys {sorted(live)}"
            )
        for key in set(documented) & set(live):
            problems += same_shape(documented[key], live[key], f"{where}.{key}")
        return problems
    if isinstance(documented, list) and isinstance(live, list) and documented and live:
        return same_shape(documented[0], live[0], f"{where}[0]")
    return []


# --- the live bridge --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_tools() -> dict[str, dict[str, object]]:
    """Tool name -> {"description", "input_schema"}, from a bridge's list_tools (no servers started)."""

    async def fetch() -> dict[str, dict[str, object]]:
        with FakeLMStudio(models=DOC_MODELS) as fake:
            async with in_process_bridge(bridge_settings(fake.url)) as client:
                listed = (await client.list_tools()).tools
        return {t.name: {"description": t.description, "input_schema": t.input_schema} for t in listed}

    return anyio.run(fetch)


def value_for(schema: dict[str, object]) -> object:
    """A small value valid for a simple schema (the types the documented schemas use)."""
    kind = schema.get("type")
    if kind == "object":
        properties: dict[str, dict[str, object]] = schema.get("properties", {})  # type: ignore[assignment]
        return {name: value_for(sub) for name, sub in properties.items()}
    if "enum" in schema:
        return schema["enum"][0]  # type: ignore[index]
    defaults: dict[object, object] = {"string": "text", "integer": 1, "number": 1.5, "boolean": True, "array": []}
    return defaults.get(kind)


def requested_schema(body: dict[str, object]) -> dict[str, object] | None:
    """The JSON Schema a request asks the answer to match, from its structured-output field."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        return response_format.get("json_schema", {}).get("schema") or response_format.get("schema")
    text = body.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        return text["format"].get("schema")
    return None


def scripted_model(request: RecordedRequest) -> Turn:
    """A model that, offered tools, calls one harmless tool once and then answers."""
    body = request.body or {}
    if request.path == "/v1/completions":
        return Turn(text="    return n")
    if (schema := requested_schema(body)) is not None:
        return Turn(text=json.dumps(value_for(schema)))
    outputs = tool_outputs(request) if ("messages" in body or "input" in body) else []
    if outputs:
        return Turn(text=f"Done. The tool said: {outputs[-1][:60]}")
    offered = [t.get("name") or t.get("function", {}).get("name") for t in body.get("tools") or []]
    for name in offered:
        own_name = str(name).rsplit("__", 1)[-1]
        if own_name in SAFE_CALLS:
            return Turn(tool_calls=[(str(name), SAFE_CALLS[own_name])])
    if offered:
        return Turn(text=f"(no harmless tool among {offered})")
    return Turn(text="A scripted answer.")


# --- (1) the reference covers every tool and parameter; README covers every setting -----------------


def test_the_api_reference_has_a_section_per_tool_with_every_parameter(live_tools: dict) -> None:
    sections = tool_sections(API_REFERENCE.read_text(encoding="utf-8"))
    assert set(live_tools) <= set(sections), f"tools without a section: {sorted(set(live_tools) - set(sections))}"
    unknown = sorted(set(sections) - set(live_tools))
    assert not unknown, f"sections for tools that do not exist: {unknown}"
    problems = []
    for name, tool in live_tools.items():
        schema = tool["input_schema"]
        properties: dict[str, dict] = schema.get("properties", {})
        required = set(schema.get("required", []))
        rows = parameter_rows(sections[name])
        if set(rows) != set(properties):
            problems.append(f"{name}: table lists {sorted(rows)}, the tool takes {sorted(properties)}")
            continue
        for param, prop in properties.items():
            cells = rows[param]
            if len(cells) < 5:
                problems.append(f"{name}.{param}: row needs | name | type | default | bounds | meaning |")
                continue
            default = "required" if param in required else f"`{json.dumps(prop.get('default'))}`"
            if default not in cells[2]:
                problems.append(f"{name}.{param}: default cell {cells[2]!r} should show {default}")
            missing = {b for b in bounds_of(prop) if not re.search(rf"(?<![\d.]){re.escape(b)}(?![\d.])", cells[3])}
            if missing:
                problems.append(f"{name}.{param}: bounds cell {cells[3]!r} lacks {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_every_tool_in_the_reference_has_an_example_call(live_tools: dict) -> None:
    called = {e.tool for e in examples(API_REFERENCE) if e.expect == "ok"}
    assert set(live_tools) <= called, f"no example call for {sorted(set(live_tools) - called)}"


def test_readme_configuration_table_lists_exactly_the_settings() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]+)`\s*\|", section, re.M))
    settings = {name.upper() for name in Settings.model_fields}
    assert settings - documented == set(), f"settings missing from README's table: {sorted(settings - documented)}"
    assert documented - settings == set(), f"README documents unknown variables: {sorted(documented - settings)}"


# --- (2) the documented example calls ---------------------------------------------------------------


EXAMPLES = all_examples()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.label for e in EXAMPLES])
def test_example_arguments_match_the_live_schema(example: Example, live_tools: dict) -> None:
    assert example.tool in live_tools, f"{example.label}: no tool named {example.tool}"
    schema = live_tools[example.tool]["input_schema"]
    if example.expect == "invalid":
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(example.arguments, schema)
        return
    jsonschema.validate(example.arguments, schema)


def test_examples_name_only_models_the_stand_in_offers_or_documented_aliases() -> None:
    ids = {m.id for m in DOC_MODELS}
    aliases = doc_aliases()
    assert set(aliases.values()) <= ids, f"aliases point to unknown models: {aliases}"
    for example in all_examples():
        model = example.arguments.get("model")
        if model is None or example.expect != "ok":
            continue
        assert model in ids or model in aliases, f"{example.label}: model {model!r} is not offered"


def test_the_guide_has_at_least_ten_runnable_examples_with_a_model() -> None:
    with_model = [e for e in examples(GUIDE) if e.expect == "ok" and "model" in e.arguments]
    assert len(with_model) >= 10, [e.label for e in with_model]


@pytest.mark.slow
@pytest.mark.parametrize("doc", EXAMPLE_DOCS, ids=lambda p: p.name)
async def test_documented_examples_run_against_the_stand_in_and_real_servers(
    doc: Path,
    tmp_path: Path,
    filesystem_entry: Callable[..., ServerEntry],
    memory_entry: Callable[..., ServerEntry],
    time_entry: ServerEntry,
) -> None:
    workspace = tmp_path / "demo"
    (workspace / "src").mkdir(parents=True)
    (workspace / "README.md").write_text("# demo\n\nSettings: `APP_PORT` (default 8080).\n")
    (workspace / "src" / "app.py").write_text("PORT = 8080\n")
    mcp_json = write_mcp_json(
        tmp_path / ".mcp.json",
        {
            "filesystem": entry_config(filesystem_entry(workspace)),
            "memory": entry_config(memory_entry(tmp_path / "memory.jsonl")),
            "time": entry_config(time_entry),
            "github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"], "disabled": True},
        },
    )
    problems: list[str] = []
    with FakeLMStudio(scripted_model, models=DOC_MODELS) as fake:
        # The documented world: models loaded with a 32K context (LM Studio reports it for the loaded one;
        # MODEL_CONTEXT_TOKENS says it for those loaded just in time).
        documented_env = {"MODEL_ALIASES": json.dumps(doc_aliases()), "MODEL_CONTEXT_TOKENS": "32768"}
        settings = bridge_settings(fake.url, mcp_json, **documented_env)

        def shown(text: str) -> str:
            return text.replace(fake.url, DOC_URL).replace(str(mcp_json), DOC_CONFIG_PATH)

        with anyio.fail_after(50):
            async with in_process_bridge(settings) as client:
                last_response_id: str | None = None
                last_run_id: str | None = None
                for example in examples(doc):
                    arguments = dict(example.arguments)
                    if "previous_response_id" in arguments and example.expect == "ok":
                        # The docs show the id the previous call returned; use this run's.
                        assert last_response_id, f"{example.label}: no earlier create_response to continue"
                        arguments["previous_response_id"] = last_response_id
                    if "run_id" in arguments and example.expect == "ok":
                        assert last_run_id, f"{example.label}: no earlier autonomous_start"
                        arguments["run_id"] = last_run_id
                    if "env" in example.call.attrs:
                        name, value = example.call.attrs["env"].split("=", 1)
                        with_env = bridge_settings(fake.url, mcp_json, **documented_env, **{name: value})
                        async with in_process_bridge(with_env) as other:
                            result = await other.call_tool(example.tool, arguments)
                    else:
                        result = await client.call_tool(example.tool, arguments)
                    text = shown(text_of(result))
                    data = result.structured_content
                    if example.expect == "invalid":
                        if not result.is_error:
                            problems.append(f"{example.label}: invalid arguments were accepted")
                        continue
                    if example.expect == "error":
                        if not result.is_error or text != example.error_text:
                            problems.append(f"{example.label}: expected error\n  {example.error_text}\ngot\n  {text}")
                        continue
                    if result.is_error:
                        problems.append(f"{example.label}: failed: {text}")
                        continue
                    if example.tool == "create_response":
                        last_response_id = data["response_id"]
                    if example.tool == "autonomous_start":
                        last_run_id = data["run_id"]
                    if example.tool in RUN_RESULTS:
                        calls = data["tool_calls"]
                        if data["stop_reason"] != "completed" or not calls or not all(c["ok"] for c in calls):
                            problems.append(f"{example.label}: run did not complete cleanly: {data}")
                    if example.result is not None:
                        problems += [
                            f"{example.label}: {p}" for p in same_shape(json.loads(example.result.body), data)
                        ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("models", "default_model"),
    [
        ((FakeModel("qwen/qwen3-coder-30b", loaded=True),), None),
        ((FakeModel("qwen/qwen3-coder-30b", loaded=False), FakeModel("qwen/qwen3-4b-2507", loaded=False)), None),
        ((FakeModel("qwen/qwen3-coder-30b", loaded=True),), "qwen/qwen3-coder-30b"),
    ],
    ids=["loaded", "none-loaded", "default-model"],
)
async def test_every_source_get_current_model_gives_is_in_the_api_reference(
    models: tuple[FakeModel, ...], default_model: str | None
) -> None:
    extra = {"DEFAULT_MODEL": default_model} if default_model else {}
    with FakeLMStudio(models=models) as fake:
        async with in_process_bridge(bridge_settings(fake.url, **extra)) as client:
            result = await client.call_tool("get_current_model", {})
    source = result.structured_content["source"]
    section = tool_sections(API_REFERENCE.read_text(encoding="utf-8"))["get_current_model"]
    (row,) = [line for line in section.splitlines() if line.startswith("| `source` |")]
    assert f"`{source}`" in row, (source, row)
