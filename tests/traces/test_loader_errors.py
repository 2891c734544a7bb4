"""Malformed trace files: each error names the file, the 1-based line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from traces import TraceFormatError, load_file

AZ_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZ_ROW1 = "2023-11-16 18:15:46.6805900,374,44\n"
AZ_ROW2 = "2023-11-16 18:15:50.9951690,396,109\n"
BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def _mooncake_line(**fields: object) -> str:
    obj = {"timestamp": 0, "input_length": 600, "output_length": 3, "hash_ids": [1, 2]}
    obj.update(fields)
    return str(obj).replace("'", '"').replace("True", "true") + "\n"


GOOD_MOON = _mooncake_line()

# (file name, content, fragments the message must contain after "<name> line <n>: ")
CASES = [
    (
        "azure.csv",
        AZ_HEADER + AZ_ROW1 + AZ_ROW2 + "2023-11-16 18:15:51.0,397,abc\n",
        4,
        "GeneratedTokens is 'abc'",
    ),
    ("azure.csv", AZ_HEADER + AZ_ROW1 + "2023-11-16 18:15:51.0,-3,12\n", 3, "ContextTokens is '-3'"),
    ("azure.csv", AZ_HEADER + AZ_ROW1 + "2023-11-16 18:15:51.0,1.5,12\n", 3, "ContextTokens is '1.5'"),
    ("azure.csv", AZ_HEADER + AZ_ROW1 + "2023-11-16 18:15:51.0,,12\n", 3, "ContextTokens is ''"),
    ("azure.csv", AZ_HEADER + AZ_ROW1 + "yesterday,3,12\n", 3, "TIMESTAMP is 'yesterday'"),
    ("azure.csv", AZ_HEADER + AZ_ROW2 + AZ_ROW1, 3, "is earlier than the first row"),
    ("azure.csv", AZ_HEADER + AZ_ROW1 + "\n" + "2023-11-16 18:15:51.0,x,12\n", 4, "ContextTokens is 'x'"),
    ("azure.csv", "\n \n" + AZ_HEADER + AZ_ROW1 + "2023-11-16 18:15:51.0,7,x\n", 5, "GeneratedTokens is 'x'"),
    ("azure.csv", "TIMESTAMP,ContextTokens\n" + "2023-11-16 18:15:46.6805900,374\n", 1, "GeneratedTokens"),
    ("burst.csv", BURST_HEADER + "1,m,10,5,15,x\n-2,m,10,5,15,x\n", 3, "Timestamp is '-2'"),
    ("burst.csv", BURST_HEADER + "1,m,10,5,15,x\nnan,m,10,5,15,x\n", 3, "Timestamp is 'nan'"),
    ("burst.csv", BURST_HEADER + "1,m,10,5,15,x\n2,m,10,lots,15,x\n", 3, "Response tokens is 'lots'"),
    ("burst.csv", "Timestamp,Model,Response tokens\n1,m,3\n", 1, "Request tokens"),
    ("moon.jsonl", GOOD_MOON + '{"timestamp": 1, "input_length": \n', 2, "not valid JSON"),
    ("moon.jsonl", GOOD_MOON + "[1, 2]\n", 2, "expected a JSON object"),
    ("moon.jsonl", GOOD_MOON + _mooncake_line(timestamp=-4), 2, "timestamp is -4"),
    ("moon.jsonl", GOOD_MOON + _mooncake_line(input_length=-1), 2, "input_length is -1"),
    ("moon.jsonl", GOOD_MOON + _mooncake_line(output_length=2.5), 2, "output_length is 2.5"),
    ("moon.jsonl", GOOD_MOON + _mooncake_line(output_length=True), 2, "output_length is True"),
    ("moon.jsonl", GOOD_MOON + _mooncake_line(hash_ids=5), 2, "hash_ids is 5, expected a list of integers"),
    ("moon.jsonl", GOOD_MOON + _mooncake_line(hash_ids=[1, "a"]), 2, "hash_ids is [1, 'a']"),
    ("moon.jsonl", GOOD_MOON + "\n" + _mooncake_line(hash_ids=[1]), 3, "do not cover input_length 600"),
    ("moon.jsonl", GOOD_MOON + '{"timestamp": 0, "input_length": 5, "hash_ids": []}\n', 2, "'output_length'"),
    ("moon.jsonl", '{"timestamp": 0, "input_length": 5}\n', 1, "'output_length', 'hash_ids'"),
]


@pytest.mark.parametrize(("name", "content", "line", "fragment"), CASES)
def test_malformed_row_names_file_line_and_field(
    tmp_path: Path, name: str, content: str, line: int, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TraceFormatError) as info:
        load_file(path)
    message = str(info.value)
    assert f"{name} line {line}: " in message
    assert fragment in message


def test_messages_have_the_documented_shape(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(AZ_HEADER + AZ_ROW1 * 15 + "2023-11-16 18:15:51.0,397,abc\n")
    with pytest.raises(TraceFormatError) as info:
        load_file(path)
    assert str(info.value) == f"{path} line 17: GeneratedTokens is 'abc', expected an integer >= 0"


def test_wrong_number_of_fields(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(AZ_HEADER + AZ_ROW1 + "2023-11-16 18:15:51.0,3,4,5\n")
    with pytest.raises(TraceFormatError, match=r"azure\.csv: cannot parse as CSV.*line 3"):
        load_file(path)
    path.write_text("\n" + AZ_HEADER + AZ_ROW1 + "2023-11-16 18:15:51.0,3,4,5\n")
    with pytest.raises(TraceFormatError, match=r"azure\.csv: cannot parse as CSV.*line 4"):
        load_file(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "the file is empty"),
        ("\n  \n", "the file is empty"),
        (AZ_HEADER, "no requests"),
        ("\n" + "hello,world\n1,2\n", "line 2: unknown trace format, first line is 'hello,world'"),
        ('{"prompt": "hi"}\n', "line 1: a JSON line is read as a Mooncake trace, but it lacks key(s)"),
        ("{broken\n", "line 1: not valid JSON"),
    ],
)
def test_whole_file_errors(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "t.txt"
    path.write_text(content)
    with pytest.raises(TraceFormatError) as info:
        load_file(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_trace_format_error_is_a_value_error() -> None:
    assert issubclass(TraceFormatError, ValueError)
