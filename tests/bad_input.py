"""A JSONL file with one of each kind of bad input, and what ingest must make of it."""

import json

GOOD = {"prompt": "What is 2+2?", "completion": "2+2 equals 4."}


def write_bad_jsonl(path):
    lines = [
        b"\xef\xbb\xbf" + json.dumps(GOOD).encode(),  # 1 BOM: ok
        json.dumps({"prompt": "Name a colour.\r\n", "completion": "Blue.\r\n"}).encode(),  # 2 CRLF inside: ok
        b'{"prompt": "unterminated", "completion": ',  # 3 malformed JSON
        json.dumps({"prompt": "no answer here"}).encode(),  # 4 missing completion
        json.dumps({"prompt": "   ", "completion": "blank prompt"}).encode(),  # 5 empty prompt
        json.dumps({"prompt": 42, "completion": "a number"}).encode(),  # 6 wrong type
        b'{"prompt": "caf\xe9", "completion": "latin-1 byte"}',  # 7 not UTF-8
        json.dumps({"prompt": "a\u0000b", "completion": "NUL inside"}).encode(),  # 8 NUL
        json.dumps({"prompt": "x" * 300_000, "completion": "huge"}).encode(),  # 9 huge row
        json.dumps(GOOD).encode(),  # 10 exact duplicate of 1
        json.dumps(
            {"prompt": "What is 2+2?  ", "completion": "2+2 equals 4.\r\n"}
        ).encode(),  # 11 duplicate after normalising
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris."},
                ]
            }
        ).encode(),  # 12 chat: ok
        json.dumps({"instruction": "Translate to French", "input": "cat", "output": "chat"}).encode(),  # 13 alpaca: ok
        b"[1, 2]",  # 14 not an object
        b"",  # 15 blank line: layout, not a row
        json.dumps({"messages": [{"role": "user", "content": "hello?"}]}).encode(),  # 16 no assistant turn
    ]
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path


# line number -> a fragment of the reason ingest must give
EXPECTED_REJECTIONS = {
    3: "malformed JSON",
    4: "missing completion",
    5: "empty prompt",
    6: "prompt has type int",
    7: "not valid UTF-8",
    8: "NUL",
    9: "over the 200,000 limit",
    14: "record is a list",
    16: "no assistant turn",
}
EXPECTED_INPUT_ROWS = 15
EXPECTED_INGESTED = 4
EXPECTED_DUPLICATES = 2


def write_good_jsonl(path, n=2):
    """``n`` distinct, valid prompt/completion rows."""
    path.write_bytes(
        b"".join(
            json.dumps({"prompt": f"Question {i}?", "completion": f"Answer {i}."}).encode() + b"\n"
            for i in range(1, n + 1)
        )
    )
    return path
