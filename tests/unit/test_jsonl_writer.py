"""One record per line in the run's JSONL files, whatever a sampled response holds."""

import json

from cgrpo.train.metrics import JsonlWriter


def test_a_response_with_unicode_line_breaks_stays_one_line(tmp_path):
    """Found by a pipelined run: a tiny model sampled U+0085, which json.dumps keeps raw
    and str.splitlines() splits on, so reading samples.jsonl line by line broke."""
    text = "a\x85b\u2028c\u2029d\x1ce\r\nf é"
    out = JsonlWriter(tmp_path / "s.jsonl")
    out.write({"response": text})
    out.write({"response": "next"})
    out.close()
    raw = (tmp_path / "s.jsonl").read_text(encoding="utf-8")
    lines = raw.splitlines()
    assert [json.loads(line)["response"] for line in lines] == [text, "next"]
    assert "é" in raw  # readable text is kept, not \u-escaped
