"""An Agno model that answers from a script: no network, known token counts, tool calls on cue.

Each step of the script is one model response: its text, or a tool call (a team leader
delegating to a member), and the usage Agno records for it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from agno.metrics import MessageMetrics
from agno.models.base import Model
from agno.models.response import ModelResponse


@dataclass
class Step:
    content: str | None = None
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    input_tokens: int = 10
    output_tokens: int = 5
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass
class ScriptedModel(Model):
    id: str = "scripted"
    name: str = "ScriptedModel"
    provider: str = "Scripted"
    script: list[Step] = field(default_factory=list)

    def _next(self) -> ModelResponse:
        if not self.script:
            raise AssertionError(f"the script of {self.id} ran out")
        step = self.script.pop(0)
        response = ModelResponse(role="assistant", content=step.content)
        if step.tool is not None:
            response.tool_calls = [
                {
                    "id": f"call-{len(self.script)}",
                    "type": "function",
                    "function": {"name": step.tool, "arguments": json.dumps(step.arguments or {})},
                }
            ]
        response.response_usage = MessageMetrics(
            input_tokens=step.input_tokens,
            output_tokens=step.output_tokens,
            total_tokens=step.input_tokens + step.output_tokens,
            cache_read_tokens=step.cache_read_tokens,
            reasoning_tokens=step.reasoning_tokens,
        )
        return response

    def invoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self._next()

    async def ainvoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self._next()

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[ModelResponse]:
        yield self._next()

    async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ModelResponse]:
        yield self._next()

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]


def delegate(member_id: str, task: str, input_tokens: int, output_tokens: int) -> Step:
    """A team leader's step handing `task` to the member `member_id`."""
    return Step(
        tool="delegate_task_to_member",
        arguments={"member_id": member_id, "task": task},
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
