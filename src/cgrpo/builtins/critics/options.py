"""Options shared by the chain-of-thought critics (self, local, openai)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cgrpo.builtins.critics.prompts import TEMPLATES, check_template_text


class CoTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str = Field("cot", description=f"critique template: {', '.join(TEMPLATES)}")
    template_text: str | None = Field(
        None, description="your own user message with {question}, {answer}, {response}"
    )
    system: str | None = Field(None, description="system message replacing the template's")
    max_tokens: int = Field(
        512,
        ge=1,
        description="longest critique in tokens (an API reasoning model's thinking counts too)",
    )
    temperature: float = Field(0.0, ge=0, description="critic sampling temperature")
    on_disagreement: Literal["keep", "retry", "fallback"] = Field(
        "keep",
        description="when the critic's verdict line disagrees with the verifier: keep the "
        "critique, retry once, or use the ground-truth fallback critique",
    )

    def ignored_settings(self) -> dict[str, str]:
        if self.on_disagreement == "retry" and self.temperature == 0:
            return {
                "on_disagreement": "retry re-asks the critic, which at temperature 0 answers "
                "the same way again (an API critic bills the second request too); set "
                "temperature > 0, or on_disagreement: fallback"
            }
        return {}

    @field_validator("template")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in TEMPLATES:
            raise ValueError(f"unknown template {v!r}; known: {', '.join(TEMPLATES)}")
        return v

    @field_validator("template_text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return None if v is None else check_template_text(v)
