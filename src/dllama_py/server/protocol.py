"""The OpenAI request bodies the server accepts, as pydantic models (strict: "0.5" is not a number, 1.5 is
not an integer, NaN and Infinity are refused) and errors in OpenAI's shape."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(ge=1)]
# Names a chat template may not receive through chat_template_kwargs: the server passes them itself.
RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools", "add_generation_prompt", "documents"})


class ApiError(Exception):
    """An answer other than 200: status, message and, for bad input, the parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    @property
    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def validation_error(error: ValidationError) -> ApiError:
    """The first problem pydantic found, as a 400 naming the parameter (e.g. `messages.0.role`)."""
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first['msg']}")
    param = ".".join(str(p) for p in first["loc"]) or None
    if first["type"] == "model_type" and not first["loc"]:
        return ApiError(400, "the request body must be a JSON object")
    return ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionSpec


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaSpec(_Strict):
    name: Optional[str] = None
    schema_: Union[dict[str, Any], bool, None] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaSpec] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self


class SamplingRequest(_Strict):
    """What chat and text completions share."""

    model: Optional[str] = None
    max_tokens: Optional[PositiveInt] = None
    temperature: Optional[Temperature] = None
    top_p: Optional[TopP] = None
    top_k: Optional[Annotated[int, Field(ge=0)]] = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    seed: Optional[int] = None
    stop: Union[Annotated[str, Field(max_length=256)], Annotated[list[Annotated[str, Field(max_length=256)]],
                                                                 Field(max_length=16)], None] = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: Optional[dict[str, Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    return_tokens_as_token_ids: bool = False  # vLLM's extension: logprobs name tokens "token_id:<id>"
    ignore_eos: bool = False  # vLLM's and llama.cpp's extension: generate past end-of-sequence (benchmarks)


class ContentPart(_Strict):
    type: str
    text: Optional[str] = None


class ToolCallFunction(_Strict):
    name: str
    arguments: Union[str, dict[str, Any]] = "{}"


class AssistantToolCall(_Strict):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Message(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[AssistantToolCall]] = None
    tool_call_id: Optional[str] = None
    name: Optional[str] = None


class ChatRequest(SamplingRequest):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Optional[PositiveInt] = None
    logprobs: bool = False
    top_logprobs: Optional[Annotated[int, Field(ge=0, le=20)]] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None

    @field_validator("chat_template_kwargs")
    @classmethod
    def _not_reserved(cls, kwargs):
        reserved = RESERVED_TEMPLATE_KWARGS & set(kwargs or {})
        if reserved:
            raise ValueError(f"may not set {', '.join(sorted(reserved))} (the server passes them)")
        return kwargs

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top, info: ValidationInfo):
        if top and not info.data.get("logprobs"):
            raise ValueError("needs logprobs: true")
        return top

    @field_validator("tool_choice")
    @classmethod
    def _tool_exists(cls, choice, info: ValidationInfo):
        tools = info.data.get("tools") or []
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in tools}:
            raise ValueError(f"names {choice.function.name!r}, which is not in tools")
        if choice == "required" and not tools:
            raise ValueError("'required' needs tools")
        return choice


class CompletionRequest(SamplingRequest):
    prompt: Union[Annotated[str, Field(min_length=1)], Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)],
                  Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=16)]]
    logprobs: Optional[Annotated[int, Field(ge=0, le=20)]] = None
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[Annotated[int, Field(ge=1)]] = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix):
        if suffix:
            raise ValueError("fill-in-the-middle is not supported")
        return suffix

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, best_of, info: ValidationInfo):
        if best_of is not None and best_of != info.data.get("n", 1):
            raise ValueError("only best_of == n is supported")
        return best_of
