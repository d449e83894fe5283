"""Tokenize stage: a byte-level BPE trained on the train split, and both splits encoded into flat
token files (`train.bin`, `val.bin`) that training reads through numpy.memmap."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from corpus.config import TokenizeConfig
from corpus.jsonl import file_sha256, read_jsonl

EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
TOKEN_DTYPE = np.uint16
ENCODE_BATCH = 64


@dataclass
class TokenizeResult:
    tokenizer_file: Path
    bin_files: dict[str, Path]
    manifest_file: Path
    manifest: dict


def _texts(path: Path) -> Iterator[str]:
    for doc in read_jsonl(path):
        yield doc["text"]


def train_tokenizer(train_file: Path, config: TokenizeConfig) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(train_file), trainer)
    return tokenizer


def encode_split(tokenizer: Tokenizer, docs_file: Path, bin_file: Path) -> dict:
    """Encode documents, each followed by EOT, appending to `bin_file` batch by batch."""
    eot_id = tokenizer.token_to_id(EOT)
    docs = tokens = text_bytes = 0
    batch: list[str] = []

    def write(out, texts: list[str]) -> int:
        ids = [np.append(np.asarray(enc.ids, dtype=TOKEN_DTYPE), TOKEN_DTYPE(eot_id))
               for enc in tokenizer.encode_batch(texts)]
        flat = np.concatenate(ids)
        flat.tofile(out)
        return len(flat)

    with open(bin_file, "wb") as out:
        for text in _texts(docs_file):
            batch.append(text)
            docs += 1
            text_bytes += len(text.encode("utf-8"))
            if len(batch) == ENCODE_BATCH:
                tokens += write(out, batch)
                batch = []
        if batch:
            tokens += write(out, batch)
    return {"docs": docs, "tokens": tokens, "bytes": text_bytes, "sha256": file_sha256(bin_file)}


def tokenize(split_files: dict[str, Path], out_dir: Path, config: TokenizeConfig) -> TokenizeResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(split_files["train"], config)
    tokenizer_file = out_dir / TOKENIZER_FILE
    tokenizer.save(str(tokenizer_file))
    bin_files = {name: out_dir / f"{name}.bin" for name in split_files}
    splits = {name: encode_split(tokenizer, path, bin_files[name]) for name, path in split_files.items()}
    manifest = {
        "vocab_size": tokenizer.get_vocab_size(),
        "eot_id": tokenizer.token_to_id(EOT),
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "splits": splits,
        "tokenizer_sha256": file_sha256(tokenizer_file),
    }
    manifest_file = out_dir / MANIFEST_FILE
    manifest_file.write_text(json.dumps(manifest, indent=2))
    return TokenizeResult(tokenizer_file, bin_files, manifest_file, manifest)
