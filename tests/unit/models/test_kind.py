"""Which models llmc accepts: causal LMs only, told apart from their config alone."""

import pytest
from transformers import BertConfig, DistilBertConfig, GPT2Config, LlamaConfig, Qwen2Config, T5Config

from llmc_cli.errors import ModelError
from llmc_cli.models.kind import check_causal, check_vocabulary


@pytest.mark.parametrize(
    "config",
    [LlamaConfig(), Qwen2Config(), GPT2Config(), BertConfig(is_decoder=True, architectures=["BertLMHeadModel"])],
    ids=["llama", "qwen2", "gpt2", "bert-as-decoder"],
)
def test_causal_models_pass(config):
    check_causal(config, "m")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (BertConfig(architectures=["BertForMaskedLM"]), r"bidirectional encoder \(BertForMaskedLM\)"),
        (DistilBertConfig(), "no causal language-model head"),
        (T5Config(), "encoder-decoder"),
        (LlamaConfig(architectures=["LlamaForSequenceClassification"]), "not a language-model head"),
    ],
    ids=["bert", "distilbert", "t5", "classifier"],
)
def test_other_kinds_get_one_message_naming_the_architecture(config, message):
    with pytest.raises(ModelError, match=message) as caught:
        check_causal(config, "m")
    assert caught.value.exit_code == 4 and "ForCausalLM" in caught.value.hint


class Tokenizer:
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size


def test_the_tokenizer_must_fit_the_embedding():
    check_vocabulary(LlamaConfig(vocab_size=32000), Tokenizer(32000), "m")
    check_vocabulary(LlamaConfig(vocab_size=32064), Tokenizer(32000), "m")  # a padded embedding is fine
    with pytest.raises(ModelError, match="has 32,001 tokens but the model embeds only 32,000"):
        check_vocabulary(LlamaConfig(vocab_size=32000), Tokenizer(32001), "m")
