"""Where the ``openai`` critic sends its requests, and in which shape each endpoint takes
them.

The client: ``AsyncOpenAI`` for OpenAI and every OpenAI-compatible server;
``AsyncAzureOpenAI`` (the SDK's own) for an Azure OpenAI resource given with
``api_version``: the key goes in the ``api-key`` header, ``?api-version=`` on every request,
and the model name is the deployment's. Azure's v1 API
(``https://NAME.openai.azure.com/openai/v1/``) takes no api-version; it gets
``AsyncOpenAI`` with the key in ``api-key`` as well.

The request: the completion-token limit as ``max_completion_tokens`` (OpenAI's current
models reject ``max_tokens``) or ``max_tokens`` (what every OpenAI-compatible server reads;
Ollama and llama-cpp-python accept ``max_completion_tokens`` and silently ignore it);
temperature, unless the model accepts only its default (OpenAI's reasoning models);
``reasoning_effort`` when the recipe sets it. A 400 that names the limit's parameter as
unsupported switches to the other one (with ``token_limit_param: auto``), and one that
refuses the temperature drops it: each change at most once, logged, and the refused
request (not billed) is sent again in the new shape. Any other 400 is final.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
UNSUPPORTED_CODES = ("unsupported_parameter", "unsupported_value")
OTHER_LIMIT = {"max_tokens": "max_completion_tokens", "max_completion_tokens": "max_tokens"}
_REFUSED = re.compile(
    r"unsupported|not supported|unrecognized|unknown|does not support|not allowed|"
    r"extra inputs|not permitted",
    re.I,
)


def endpoint_kind(base_url: str | None, api_version: str | None) -> str:
    """``openai`` (api.openai.com), ``azure`` (deployments + api-version), ``azure_v1``,
    ``azure_unversioned`` (an Azure resource without api_version: a recipe error) or
    ``compatible`` (any other OpenAI-compatible server)."""
    if api_version is not None:
        return "azure"
    if base_url is None:
        return "openai"
    parsed = urlparse(base_url)
    host = (parsed.hostname or "").lower()
    if host == "api.openai.com":
        return "openai"
    if host.endswith(AZURE_HOSTS):
        return "azure_v1" if parsed.path.rstrip("/").endswith("/openai/v1") else "azure_unversioned"
    return "compatible"


def endpoint_problem(base_url: str | None, api_version: str | None) -> str | None:
    """Why this endpoint cannot work as given (with the fix), or None."""
    kind = endpoint_kind(base_url, api_version)
    if kind == "azure" and base_url is None:
        return (
            "api_version is set (Azure OpenAI) but base_url is not; set base_url to the "
            "resource, e.g. https://NAME.openai.azure.com, or remove api_version"
        )
    if kind == "azure" and "/openai/v1" in urlparse(str(base_url)).path:
        return (
            "base_url is Azure's v1 API (/openai/v1), which takes no api-version; remove "
            "api_version, or give the resource https://NAME.openai.azure.com instead"
        )
    if kind == "azure_unversioned":
        return (
            f"base_url {base_url} is an Azure OpenAI resource: set api_version (e.g. "
            "2024-10-21) for its deployments, or use its v1 API: "
            "https://NAME.openai.azure.com/openai/v1/"
        )
    return None


def client_spec(
    base_url: str | None, api_version: str | None, key: str, timeout_s: float
) -> tuple[str, dict[str, Any]]:
    """The SDK client class's name and its keyword arguments (retries are ours)."""
    kind = endpoint_kind(base_url, api_version)
    common: dict[str, Any] = {"api_key": key, "max_retries": 0, "timeout": timeout_s}
    if kind == "azure":
        url = str(base_url).rstrip("/")
        if "/openai/deployments/" in urlparse(url).path:  # one deployment's URL
            return "AsyncAzureOpenAI", {**common, "base_url": url, "api_version": api_version}
        url = url.removesuffix("/openai")  # the SDK appends /openai itself
        return "AsyncAzureOpenAI", {**common, "azure_endpoint": url, "api_version": api_version}
    if kind == "azure_v1":
        return "AsyncOpenAI", {**common, "base_url": base_url, "default_headers": {"api-key": key}}
    return "AsyncOpenAI", {**common, "base_url": base_url}


def make_client(base_url: str | None, api_version: str | None, key: str, timeout_s: float):
    import openai

    name, kwargs = client_spec(base_url, api_version, key, timeout_s)
    return getattr(openai, name)(**kwargs)


def _names(exc: Any, param: str) -> bool:
    """Whether a 400 refuses ``param`` as unsupported (not merely a bad value of it, such
    as a limit over the context): named in its ``param`` field, or else in its message,
    and refused in OpenAI's codes or in words."""
    message = str(getattr(exc, "message", "") or exc)
    refused = getattr(exc, "code", None) in UNSUPPORTED_CODES or bool(_REFUSED.search(message))
    named = getattr(exc, "param", None)
    if named:
        return named == param and refused
    return refused and bool(re.search(rf"(?<![\w]){param}(?![\w])", message))


class RequestShape:
    """The parameters every request carries, adapted once to what the endpoint accepts.

    ``confirmed`` turns true once a first request has settled: until then the critic
    sends one request at a time, so a shape the endpoint refuses costs one refused
    request, not one per request in flight. A refusal that reaches several requests in
    flight anyway changes the shape once; the others are sent again in it."""

    def __init__(self, options: Any, kind: str):
        self.options = options
        self.auto = options.token_limit_param == "auto"
        if not self.auto:
            self.limit_param = options.token_limit_param
        elif kind in ("openai", "azure", "azure_v1"):
            self.limit_param = "max_completion_tokens"
        else:
            self.limit_param = "max_tokens"
        self.send_temperature = True
        self.switched_limit = False
        self.confirmed = False

    def params(self, limit: int) -> dict[str, Any]:
        out: dict[str, Any] = {self.limit_param: limit}
        if self.send_temperature:
            out["temperature"] = self.options.temperature
        if self.options.reasoning_effort is not None:
            out["reasoning_effort"] = self.options.reasoning_effort
        return out

    def adapt(self, exc: Any, sent: dict[str, Any]) -> str | None:
        """Change the shape as a 400 to a request sent with ``sent`` asks: how (a line for
        the log; "" when another request already made that change), or None when the
        refusal is final."""
        model = self.options.model
        if "temperature" in sent and _names(exc, "temperature"):
            if not self.send_temperature:
                return ""
            self.send_temperature = False
            return (
                f"{model} accepts only its default temperature; sending none from now on "
                f"(critic.options.temperature {self.options.temperature} is not used)"
            )
        limit = next(p for p in OTHER_LIMIT if p in sent)
        if not (self.auto and _names(exc, limit)):
            return None
        if limit != self.limit_param:
            return ""
        if self.switched_limit:
            return None
        self.limit_param, self.switched_limit = OTHER_LIMIT[limit], True
        return (
            f"the endpoint refused {limit} for {model}; sending the token limit as "
            f"{self.limit_param} from now on (set critic.options.token_limit_param: "
            f"{self.limit_param} to skip this)"
        )

    def hint(self, exc: Any) -> str:
        """A fix for a final 400 that names one of the parameters the recipe controls."""
        if _names(exc, self.limit_param):
            other = OTHER_LIMIT[self.limit_param]
            if self.switched_limit:
                return f"; the endpoint refused both {other} and {self.limit_param}"
            return f"; set critic.options.token_limit_param: {other} (or auto)"
        if self.options.reasoning_effort is not None and _names(exc, "reasoning_effort"):
            return "; remove critic.options.reasoning_effort (this model does not take it)"
        return ""
