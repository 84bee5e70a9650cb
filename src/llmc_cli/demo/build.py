"""Build a small LLaMA-architecture model and a tokenizer locally, with nothing to download.

Used by ``llmc train --demo`` and by the tests: the tokenizer is a byte-level BPE trained
in about a second on the given texts; the model is a randomly initialised LlamaConfig
of a few million parameters (fixed seed, so it is the same on every machine).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from llmc_cli.config.families import ZEPHYR_TEMPLATE

DATA_DIR = Path(__file__).with_name("data")
DEMO_DATA = DATA_DIR / "gsm8k_sample.jsonl"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class TinyShape:
    """The shape of a LlamaConfig built from scratch."""

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 688
    max_position_embeddings: int = 2048


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 2048):
    """Train a byte-level BPE tokenizer on ``texts`` and save it in Hugging Face format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", core.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_llama(out_dir: Path, vocab_size: int, shape: TinyShape = TinyShape(), seed: int = 0):
    """Save a randomly initialised Llama model of ``shape`` to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=3, **asdict(shape))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return model


def demo_texts(path: Path = DEMO_DATA) -> list[str]:
    """The question and answer texts of the demo data (tokenizer training corpus)."""
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            texts += [record["question"], record["answer"]]
    return texts


def ensure_demo_model(cache_dir: Path) -> Path:
    """Build the demo model and tokenizer once into ``cache_dir`` and return its folder."""
    folder = cache_dir / "demo-llama-v1"
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    # Build beside the final folder and rename, so an interrupted build is never reused.
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = train_tokenizer(demo_texts(), staging)
    build_tiny_llama(staging, len(tokenizer))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder
