"""The autonomous agent: a local model's tool-calling loop over the user's MCP servers.

    agent.py           DynamicAutonomousAgent: prepares a run (model, servers, tools) and runs it
    runner.py          the loop only: ask the model, run the calls, decide to go on
    events.py          the run's state and the typed events the runner emits; RunHooks
    hooks.py           progress, metrics, tracing and logging, as hooks
    tool_execution.py  one tool call: look-up, arguments, approval, call, rendering, truncation
    approval.py        which calls need the user's approval, and asking through elicitation
    typed_answer.py    the last step with an output_schema: the final answer, typed
    loop_guard.py      repeated-call detection
    schema_probe.py    finding the tool schemas a model server refuses
    result.py          RunResult and its parts
"""

from tools.agent.agent import DEFAULT_MAX_ROUNDS, DynamicAutonomousAgent, RunRequestError
from tools.agent.result import RunResult, StopReason, ToolCallRecord

__all__ = [
    "DEFAULT_MAX_ROUNDS",
    "DynamicAutonomousAgent",
    "RunRequestError",
    "RunResult",
    "StopReason",
    "ToolCallRecord",
]
