"""Offline tokenizers for the tiny pipelines: real tokenizer classes with small vocabularies built here."""

from __future__ import annotations

import string


def clip_tokenizer(max_length: int = 77):
    """A byte-level CLIP tokenizer (every byte is a token; no merges), as edgegen's embedded default uses."""
    from transformers import CLIPTokenizer

    from edgegen.embedded.builders import byte_level_vocab

    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=max_length, pad_token="<|endoftext|>")


def _unigram_pieces() -> list[tuple[str, float]]:
    # Word-start and inner pieces for lowercase letters, digits and punctuation, plus a few whole
    # words so that real prompts tokenize into more than single characters.
    words = ["▁a", "▁the", "▁of", "▁and", "▁red", "▁blue", "▁green", "▁circle", "▁square", "▁dot", "▁on", "▁white"]
    chars = string.ascii_lowercase + string.digits + string.punctuation
    pieces = [(word, -2.0) for word in words]
    pieces += [("▁" + char, -4.0) for char in chars] + [(char, -5.0) for char in chars]
    return pieces


def t5_tokenizer(max_length: int = 32):
    """A T5 (SentencePiece Unigram) tokenizer: <pad>=0, </s>=1, <unk>=2, then the pieces, no sentinels."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0), *_unigram_pieces()]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def vocabulary_size(tokenizer) -> int:
    return len(tokenizer.get_vocab())


def gemma_tokenizer(texts: tuple[str, ...] = (), max_length: int = 512):
    """A Gemma (byte-fallback BPE) tokenizer: the specials, 256 byte tokens, single characters, and
    every word of ``texts`` as one token (merged letter by letter), so long instructions stay short."""
    from transformers import GemmaTokenizer

    vocab = {token: index for index, token in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "▁" + string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        vocab.setdefault(char, len(vocab))
    merges = []
    for text in texts:
        for word in text.replace("\n", " ").split(" "):
            piece = "▁"
            for char in word:
                if char not in vocab:
                    break
                if piece + char not in vocab:
                    vocab[piece + char] = len(vocab)
                    merges.append((piece, char))
                piece += char
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, add_bos_token=True)
