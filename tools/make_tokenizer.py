"""Writes model/testdata/tiny-maverick/tokenizer.json: a byte-level BPE tokenizer with 320
tokens (tiny-maverick's vocabulary), trained on a few fixed sentences, so that
`l4 generate --model model/testdata/tiny-maverick --prompt "..."` has a real tokenizer to use.

Run from the repository root with the fixture venv: python tools/make_tokenizer.py
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SENTENCES = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Llama 4 uses interleaved RoPE and NoPE layers with chunked attention.",
    "Mixture of experts routes each token to one expert plus a shared expert.",
] * 20


def main() -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(SENTENCES, trainer)
    assert tokenizer.get_vocab_size() == 320
    tokenizer.save("model/testdata/tiny-maverick/tokenizer.json")


if __name__ == "__main__":
    main()
