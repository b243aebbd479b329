"""The ``openai`` critic's recipe options, checked when the recipe is (``cgrpo check``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cgrpo.builtins.critics.endpoint import endpoint_problem
from cgrpo.builtins.critics.options import CoTOptions

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class OpenAICriticOptions(CoTOptions):
    model: str = Field(
        "gpt-4o-mini", description="model name at the endpoint (Azure: the deployment name)"
    )
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint (None = api.openai.com); an Azure OpenAI "
        "resource as https://NAME.openai.azure.com with api_version, or its v1 API "
        "https://NAME.openai.azure.com/openai/v1/",
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="environment variable holding the key (None: no key)"
    )
    api_version: str | None = Field(
        None,
        description="Azure OpenAI's api-version (e.g. 2024-10-21): base_url is then an Azure "
        "resource, the key goes in the api-key header and model names the deployment",
    )
    token_limit_param: Literal["auto", "max_completion_tokens", "max_tokens"] = Field(
        "auto",
        description="how max_tokens is sent. auto: max_completion_tokens to OpenAI and Azure, "
        "max_tokens to other servers (some ignore max_completion_tokens), switching once "
        "if the endpoint's 400 names the parameter as unsupported",
    )
    reasoning_effort: ReasoningEffort | None = Field(
        None, description="sent as reasoning_effort when set (reasoning models only)"
    )
    truncated_retry_tokens: int | None = Field(
        None,
        ge=1,
        description="a reply cut at max_tokens is asked once more with this larger limit "
        "(billed, within the budget); None: the cut reply is a failure",
    )
    concurrency: int = Field(
        128,
        ge=1,
        description="requests in flight at once: 128 finishes a step's ~500 critiques of ~1 s "
        "in ~7 s (8 took 66 s); set requests_per_minute to stay under a key's limit",
    )
    requests_per_minute: int | None = Field(None, ge=1, description="rate limit; None = off")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_retries: int = Field(4, ge=0, description="retries after the first attempt")
    backoff_s: float = Field(1.0, ge=0, description="first backoff; doubles per retry")
    max_backoff_s: float = Field(30.0, ge=0, description="longest single backoff")
    input_price_per_million: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    output_price_per_million: float = Field(
        0.0, ge=0, description="USD per 1M completion tokens (reasoning tokens included)"
    )
    budget_usd: float | None = Field(
        None,
        gt=0,
        description="hard cap on spend (needs the prices): each request reserves its worst "
        "case before it is sent and waits for requests in flight to settle when the cap is "
        "near, so spend never exceeds it; then the fallback critique is used",
    )
    cache: bool = Field(True, description="reuse critiques from the on-disk cache")
    cache_dir: str = Field(
        "~/.cache/cgrpo/critiques", description="where cached critiques live (shareable)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> OpenAICriticOptions:
        """Every problem at once (one recipe edit fixes them all)."""
        problems = []
        if (
            self.budget_usd is not None
            and self.input_price_per_million == 0
            and self.output_price_per_million == 0
        ):
            problems.append(
                "budget_usd is set but input_price_per_million and output_price_per_million "
                "are both 0, so nothing would ever count against it; set the model's prices "
                "(USD per million tokens) or remove budget_usd"
            )
        retry = self.truncated_retry_tokens
        if retry is not None and retry <= self.max_tokens:
            problems.append(
                f"truncated_retry_tokens ({retry}) must be larger than max_tokens "
                f"({self.max_tokens}): the second request would be cut the same way; raise "
                "it or remove it"
            )
        endpoint = endpoint_problem(self.base_url, self.api_version)
        if endpoint:
            problems.append(endpoint)
        if problems:
            raise ValueError("; and ".join(problems))
        return self
