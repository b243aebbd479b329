"""A fake OpenAI-compatible server per test, and critics pointed at it (closed after)."""

import pytest

from cgrpo.builtins.critics.api import OpenAICritic
from tests.fake_openai import FakeOpenAI
from tests.unit.api_critic import KEY_ENV


@pytest.fixture
def server():
    with FakeOpenAI(hang_s=2.0) as srv:
        yield srv


@pytest.fixture
def make_critic(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-secret")
    made = []

    def make(**options):
        opts = dict(
            model="critic-model",
            base_url=server.base_url,
            api_key_env=KEY_ENV,
            backoff_s=0.01,
            timeout_s=1.0,
            cache_dir=str(tmp_path / "cache"),
        )
        opts.update(options)
        critic = OpenAICritic(OpenAICritic.Options(**opts))
        made.append(critic)
        return critic

    yield make
    for critic in made:
        critic.close()
