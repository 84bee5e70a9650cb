"""bitsandbytes stays out of runs that cannot use it (2 s of startup each on a small CPU)."""

import subprocess
import sys

CHECK = """
import sys, torch
from llmc_cli.models.optional import skip_unused_bitsandbytes
skipped = skip_unused_bitsandbytes(sys.argv[1])
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
model = get_peft_model(LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    num_hidden_layers=1, num_attention_heads=2)), LoraConfig(r=2, target_modules="all-linear"))
print(skipped, sys.modules.get("bitsandbytes") is not None, torch.cuda.is_available(),
      sum(p.numel() for p in model.parameters() if p.requires_grad))
"""


def test_a_plain_run_without_cuda_never_imports_bitsandbytes_and_peft_still_works():
    out = subprocess.run([sys.executable, "-c", CHECK, "none"], capture_output=True, text=True, check=True)
    *flags, trainable = out.stdout.split()
    skipped, imported, cuda = (flag == "True" for flag in flags)
    assert int(trainable) > 0
    if cuda:  # a CUDA machine keeps it: QLoRA may follow in the same process
        assert not skipped
    else:
        assert skipped and not imported


def test_a_quantised_run_keeps_bitsandbytes():
    from llmc_cli.models.optional import skip_unused_bitsandbytes

    before = sys.modules.get("bitsandbytes", "absent")
    assert not skip_unused_bitsandbytes("4bit") and sys.modules.get("bitsandbytes", "absent") is before
