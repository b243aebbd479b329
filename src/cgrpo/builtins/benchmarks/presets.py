"""The paper's nine benchmarks as presets: the public datasets' names, splits and field
names, and the settings their published numbers usually use.

Math (macro average ``eval/avg_math``): MATH-500, Minerva-Math, OlympiadBench, AMC23,
AIME24, AIME25. General/STEM: GPQA-Diamond, MMLU-Pro, TheoremQA. AIME and AMC are small
(30 and 40 problems), so their numbers are usually reported as avg@k over sampled runs:
these presets sample k = 16 at temperature 0.6, top-p 0.95 (DeepSeek-R1's reporting
settings); the others are greedy. Every option can be changed in the recipe, and ``path``
points a preset at a local copy (the hub is not needed).

``verl`` reads a validation file in verl's row format (the Critique-GRPO authors' and
LUFFY's ``valid.parquet``: five sources in one file, AMC rows repeated 4x and AIME 8x):
one metric set per ``data_source``, repeated rows as that many samples at T=0.6, top-p 1.0
(avg@4, avg@8; verl's mean@k over the repeats), the other sources greedy.
"""

from __future__ import annotations

from typing import Any

MC_TEMPLATE = "{question}\n\n{choices}\n\nAnswer with the letter of the correct option."
SAMPLED = {"k": 16, "temperature": 0.6, "top_p": 0.95}

PRESETS: dict[str, dict[str, Any]] = {
    "math-500": {
        "summary": "MATH-500 (HuggingFaceH4/MATH-500): 500 competition problems, greedy",
        "dataset": "HuggingFaceH4/MATH-500",
        "split": "test",
        "question_field": "problem",
        "answer_field": "answer",
        "id_field": "unique_id",
    },
    "minerva-math": {
        "summary": "Minerva-Math (math-ai/minervamath): 272 STEM problems, greedy",
        "dataset": "math-ai/minervamath",
        "split": "test",
        "question_field": "question",
        "answer_field": "answer",
    },
    "olympiadbench": {
        "summary": "OlympiadBench, English text-only math (Hothan/OlympiadBench), greedy",
        "dataset": "Hothan/OlympiadBench",
        "subset": "OE_TO_maths_en_COMP",
        "split": "train",
        "question_field": "question",
        "answer_field": "final_answer",
        "id_field": "id",
    },
    "amc23": {
        "summary": "AMC 2023 (math-ai/amc23): 40 problems, avg@16 at T=0.6",
        "dataset": "math-ai/amc23",
        "split": "test",
        "question_field": "question",
        "answer_field": "answer",
        "id_field": "id",
        **SAMPLED,
    },
    "aime24": {
        "summary": "AIME 2024 (HuggingFaceH4/aime_2024): 30 problems, avg@16 at T=0.6",
        "dataset": "HuggingFaceH4/aime_2024",
        "split": "train",
        "question_field": "problem",
        "answer_field": "answer",
        "id_field": "id",
        **SAMPLED,
    },
    "aime25": {
        "summary": "AIME 2025 (math-ai/aime25): 30 problems, avg@16 at T=0.6",
        "dataset": "math-ai/aime25",
        "split": "test",
        "question_field": "problem",
        "answer_field": "answer",
        "id_field": "id",
        **SAMPLED,
    },
    "gpqa-diamond": {
        "summary": "GPQA-Diamond (Idavidrein/gpqa): 198 science questions, 4 options, greedy",
        "dataset": "Idavidrein/gpqa",
        "subset": "gpqa_diamond",
        "split": "train",
        "question_field": "Question",
        "correct_field": "Correct Answer",
        "incorrect_fields": ["Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"],
        "id_field": "Record ID",
        "template": MC_TEMPLATE,
        "verifier": {"name": "choice", "options": {"letters": "ABCD"}},
        "category": "general",
    },
    "mmlu-pro": {
        "summary": "MMLU-Pro (TIGER-Lab/MMLU-Pro): 12k questions, up to 10 options, greedy",
        "dataset": "TIGER-Lab/MMLU-Pro",
        "split": "test",
        "question_field": "question",
        "choices_field": "options",
        "answer_field": "answer",
        "id_field": "question_id",
        "template": MC_TEMPLATE,
        "verifier": {"name": "choice", "options": {"letters": "ABCDEFGHIJ"}},
        "category": "general",
    },
    "theoremqa": {
        "summary": "TheoremQA (TIGER-Lab/TheoremQA): 800 STEM questions, greedy",
        "dataset": "TIGER-Lab/TheoremQA",
        "split": "test",
        "question_field": "Question",
        "answer_field": "Answer",
        "category": "general",
    },
    "verl": {
        "summary": "a verl/LUFFY parquet (the authors' valid.parquet): one metric set per "
        "data_source; repeated rows = samples (avg@k at T=0.6), the rest greedy",
        "messages_field": "prompt",
        "question_field": "reward_model.question",  # else the prompt's last user message
        "answer_field": "reward_model.ground_truth",
        "id_field": "extra_info.index",
        "source_field": "data_source",
        "repeats": "samples",
        "temperature": 0.6,
        "top_p": 1.0,
    },
}
