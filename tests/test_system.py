"""What a benchmark result says it was measured on."""

from __future__ import annotations

from edgescreen.benchmarks import system


def test_cpu_features_name_the_int8_instruction_sets_best_first():
    xeon = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8\n"
    assert system.cpu_features(xeon) == ["amx", "avx512vnni", "avx512", "avx2"]
    orin = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp lrcpc\n"
    assert system.cpu_features(orin) == ["dotprod", "neon"]
    assert system.cpu_features("processor\t: 0\n") == []


def test_the_machine_tag_tells_two_xeons_apart_by_their_best_int8_isa(monkeypatch):
    monkeypatch.setattr(system, "gpu_name", lambda: None)
    monkeypatch.setattr(system, "cpu_name", lambda: "Intel(R) Xeon(R) Processor")
    monkeypatch.setattr(system.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(system, "cpu_features", lambda: ["amx", "avx512vnni"])
    assert system.machine_tag() == "intel-xeon-processor-amx-2c"
    monkeypatch.setattr(system, "cpu_features", lambda: ["avx512", "avx2"])
    assert system.machine_tag() == "intel-xeon-processor-avx512-2c"
    monkeypatch.setattr(system, "cpu_features", lambda: [])
    assert system.machine_tag() == "intel-xeon-processor-2c"
