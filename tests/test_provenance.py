"""What a run records about the machine it ran on (the same commit scored differently on an AMD EPYC and on an
Intel Xeon with AMX)."""

from __future__ import annotations

from harness.provenance import hardware, hardware_line, parse_cpuinfo

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse avx2 fma
"""


def test_cpuinfo_gives_the_model_and_the_flags_that_change_results():
    assert parse_cpuinfo(XEON) == ("Intel(R) Xeon(R) Platinum 8480+", ["avx512f", "avx512_bf16", "amx_bf16",
                                                                         "amx_tile"])
    assert parse_cpuinfo(EPYC) == ("AMD EPYC 7763 64-Core Processor", [])
    assert parse_cpuinfo("") == ("unknown", [])
    # whole flags only: avx512fp16 is not avx512f
    assert parse_cpuinfo("flags\t: avx512fp16 avx512vl\n")[1] == []


def test_this_machine_is_recorded_with_a_readable_line():
    info = hardware()
    assert info["cpu"] and info["cpu"] != "unknown" and info["cores"] >= 1
    assert isinstance(info["cpu_native_bf16"], bool)
    line = hardware_line(info)
    assert line.startswith(f"hardware: {info['cpu']} (") and f"{info['cores']} cores" in line
    expected_gpu = "no GPU" if info["gpu"] is None else f"GPU {info['gpu']['name']}"
    assert expected_gpu in line


def test_hardware_line_without_flags_or_gpu():
    line = hardware_line({"cpu": "AMD EPYC 7763", "cpu_flags": [], "cores": 4, "gpu": None})
    assert line == "hardware: AMD EPYC 7763 (no bf16/AMX/AVX-512 flags), 4 cores; no GPU"
