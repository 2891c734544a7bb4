"""benchmarks.decode_ab's command line: one flags dict per value, with typed values (no GPU needed)."""

import pytest

from benchmarks.decode_ab import parse_variants


def test_values_are_typed_and_fixed_flags_join_every_variant() -> None:
    variants, model = parse_variants(["verify_group_rows=1,4", "--set", "decode_lookahead=true",
                                      "--model", "llama-3.2-3b", "--set", "gpu_memory_utilization=0.5"])
    assert model == "llama-3.2-3b"
    assert variants == ({"decode_lookahead": True, "gpu_memory_utilization": 0.5, "verify_group_rows": 1},
                        {"decode_lookahead": True, "gpu_memory_utilization": 0.5, "verify_group_rows": 4})
    assert parse_variants(["quantization=none,int4"])[0] == ({"quantization": None}, {"quantization": "int4"})


@pytest.mark.parametrize("args", [[], ["decode_lookahead"], ["a=1", "b=2"], ["a=1", "--set"], ["a=1", "--set", "b"]])
def test_malformed_command_lines_exit_with_the_usage(args: list[str]) -> None:
    with pytest.raises(SystemExit, match="usage: python -m benchmarks.bench_engine --decode-ab"):
        parse_variants(args)
