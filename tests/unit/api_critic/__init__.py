"""The ``openai`` critic tested with the real ``openai`` SDK against the local
chat-completions server of tests/fake_openai.py on 127.0.0.1."""

from cgrpo.types import CritiqueRequest, Problem, Verdict

KEY_ENV = "CGRPO_TEST_API_KEY"
PROBLEM = Problem("p1", "What is 3 + 4?", "7")


def request(response="3 + 4 = 8. \\boxed{8}", correct=False, problem=PROBLEM):
    return CritiqueRequest(problem, response, Verdict(float(correct), correct, None))
