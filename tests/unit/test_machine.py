from llmc_cli.optimize.machine import GPU, Machine, advise, family_report, read_cpuinfo


def machine(gpus=(), flags=("avx2",), ram_gib=16, bitsandbytes="0.45.0"):
    return Machine(
        cpu_model="Test CPU",
        cpu_cores=4,
        cpu_logical=8,
        cpu_flags={flag: True for flag in flags},
        ram_total_bytes=ram_gib * 2**30,
        ram_available_bytes=ram_gib * 2**30,
        gpus=list(gpus),
        disk_free_bytes={"runs": 50 * 2**30, "cache": None},
        python="3.11",
        torch="2.13.0",
        cuda="12.4" if gpus else None,
        bitsandbytes=bitsandbytes,
    )


def answers(m):
    return {a.topic: a.answer for a in advise(m)}


def test_cpuinfo_gives_model_and_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Fancy CPU 9000\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\n"
                    "processor\t: 1\nmodel name\t: Fancy CPU 9000\nflags\t\t: fpu avx2\n")  # fmt: skip
    model, flags = read_cpuinfo(info)
    assert model == "Fancy CPU 9000" and {"avx2", "avx512_bf16", "amx_tile"} <= flags
    assert read_cpuinfo(tmp_path / "missing")[1] == set()


def test_a_cpu_machine_gets_fp32_or_bf16_by_its_flags_and_no_qlora():
    plain = answers(machine(flags=("avx2",)))
    assert plain["precision"] == "fp32" and plain["QLoRA (--quantize 4bit)"] == "not possible here"
    assert answers(machine(flags=("avx2", "avx512_bf16")))["precision"] == "bf16"
    # 7.2B fp32 weights (27 GiB) cannot fit 16 GiB of RAM; 1.1B can, at every preset.
    report = family_report(machine(flags=("avx2",)), "fp32")
    assert not any(fit.fits for fit in report.fits if fit.family == "mistral")
    assert all(fit.fits for fit in report.fits if fit.family == "tinyllama")
    best = report.largest()
    assert plain["largest family and preset that fit"].startswith(f"{best.family} with --preset {best.preset}")
    assert report.fits_4bit == [] and report.budget_rule.endswith("available RAM, libraries loaded")
    assert answers(machine(ram_gib=2))["largest family and preset that fit"] == "none of the families"
    assert plain["disk at runs"] == "50.0 GiB free" and plain["disk at cache"] == "unknown"


def test_a_gpu_machine_gets_its_precision_qlora_and_a_family_for_its_memory():
    t4 = GPU(0, "Tesla T4", 16 * 2**30, 15 * 2**30, "7.5", bf16=False)
    a100 = GPU(0, "A100", 80 * 2**30, 79 * 2**30, "8.0", bf16=True)
    on_t4 = answers(machine(gpus=[t4]))
    assert on_t4["precision"] == "fp16" and on_t4["QLoRA (--quantize 4bit)"] == "possible"
    assert on_t4["--model auto"].startswith("phi")
    t4_report = family_report(machine(gpus=[t4]), "fp16")
    assert t4_report.budget_rule == "90% of free GPU memory" and t4_report.budget_bytes == int(15 * 2**30 * 0.9)
    fits = {(f.family, f.preset): f.fits for f in t4_report.fits}
    fits_4bit = {(f.family, f.preset): f.fits for f in t4_report.fits_4bit}
    assert not fits["mistral", "highspeed"] and fits_4bit["mistral", "highspeed"]  # QLoRA makes 7B fit 16 GB
    on_a100 = answers(machine(gpus=[a100]))
    assert on_a100["precision"] == "bf16" and on_a100["--model auto"].startswith("mistral")
    no_bnb = answers(machine(gpus=[a100], bitsandbytes=None))
    assert no_bnb["QLoRA (--quantize 4bit)"] == "not possible here"
