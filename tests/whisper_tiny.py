"""A tiny random-weight multilingual Whisper model in CTranslate2 format, built offline for tests.

faster-whisper loads it like a converted checkpoint: model.bin, config.json, vocabulary.json and a
byte-level BPE tokenizer.json (without one it would fetch openai/whisper-tiny from the hub).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ctranslate2.specs import WhisperSpec
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# Whisper's language-token order (as in the real tokenizer), not faster-whisper's alphabetical one.
LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur "
    "hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si "
    "km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha "
    "ba jw su"
).split()
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES),
    "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
    "<|notimestamps|>",
]
TIMESTAMP_TOKENS = ["<|%.2f|>" % (i * 0.02) for i in range(1501)]
# CTranslate2 >= 4.7 calls a Whisper model multilingual iff its vocabulary holds the empty token ""
# (the last text token, 50256, in the real one); older versions demanded exactly 51865 tokens.
TEXT_TOKENS = [*sorted(pre_tokenizers.ByteLevel.alphabet()), ""]
VOCAB_SIZE = len(TEXT_TOKENS) + len(SPECIAL_TOKENS) + len(TIMESTAMP_TOKENS)

N_MELS, D_MODEL, HEADS, LAYERS = 80, 64, 4, 2
MAX_SOURCE_POSITIONS, MAX_TARGET_POSITIONS = 1500, 448


def build_tokenizer() -> Tokenizer:
    """Byte-level BPE without merges: any Unicode text encodes to byte symbols; then Whisper's specials."""
    vocab = {token: i for i, token in enumerate(TEXT_TOKENS)}
    tokenizer = Tokenizer(models.BPE(vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens(TIMESTAMP_TOKENS)
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    return tokenizer


class _Init:
    """Seeded float32 initialisers, scaled so random activations stay O(1)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, *shape: int, std: float | None = None) -> np.ndarray:
        std = 1.0 / np.sqrt(np.prod(shape[1:])) if std is None else std  # 1/sqrt(fan_in)
        return self.rng.normal(0.0, std, size=shape).astype(np.float32)

    def linear(self, spec, out_dim: int, in_dim: int) -> None:
        spec.weight = self.normal(out_dim, in_dim)
        spec.bias = self.normal(out_dim, std=0.02)

    @staticmethod
    def layer_norm(spec) -> None:
        spec.gamma = np.ones(D_MODEL, np.float32)
        spec.beta = np.zeros(D_MODEL, np.float32)

    def attention(self, spec, self_attention: bool) -> None:
        # CTranslate2 fuses q/k/v (self-attention) or k/v (cross-attention) into one projection.
        out_dims = [3 * D_MODEL, D_MODEL] if self_attention else [D_MODEL, 2 * D_MODEL, D_MODEL]
        for linear, out_dim in zip(spec.linear, out_dims):
            self.linear(linear, out_dim, D_MODEL)
        self.layer_norm(spec.layer_norm)

    def ffn(self, spec) -> None:
        self.linear(spec.linear_0, 4 * D_MODEL, D_MODEL)
        self.linear(spec.linear_1, D_MODEL, 4 * D_MODEL)
        self.layer_norm(spec.layer_norm)


def _fill_weights(spec: WhisperSpec, init: _Init) -> None:
    enc, dec = spec.encoder, spec.decoder
    enc.conv1.weight, enc.conv1.bias = init.normal(D_MODEL, N_MELS, 3), init.normal(D_MODEL, std=0.02)
    enc.conv2.weight, enc.conv2.bias = init.normal(D_MODEL, D_MODEL, 3), init.normal(D_MODEL, std=0.02)
    enc.position_encodings.encodings = init.normal(MAX_SOURCE_POSITIONS, D_MODEL, std=0.1)
    for layer in enc.layer:
        init.attention(layer.self_attention, self_attention=True)
        init.ffn(layer.ffn)
    init.layer_norm(enc.layer_norm)

    dec.embeddings.weight = init.normal(VOCAB_SIZE, D_MODEL, std=0.1)
    # Tied like Whisper's proj_out: spec.optimize() then saves the projection as an alias, not a copy.
    dec.projection.weight = dec.embeddings.weight
    dec.position_encodings.encodings = init.normal(MAX_TARGET_POSITIONS, D_MODEL, std=0.1)
    for layer in dec.layer:
        init.attention(layer.self_attention, self_attention=True)
        init.attention(layer.attention, self_attention=False)
        init.ffn(layer.ffn)
    init.layer_norm(dec.layer_norm)


def _set_config(spec: WhisperSpec, tokenizer: Tokenizer) -> None:
    ids = tokenizer.token_to_id
    config = spec.config
    config.lang_ids = [ids(f"<|{code}|>") for code in LANGUAGES]
    config.suppress_ids = [ids(t) for t in ("<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                                            "<|startoflm|>", "<|startofprev|>", "<|nospeech|>")]
    # As in Whisper: no leading blank (the byte-level space symbol) or <|endoftext|> at the first step.
    config.suppress_ids_begin = [ids("\u0120"), ids("<|endoftext|>")]
    # The converter's default when a checkpoint names none: every head of the last half of the layers.
    config.alignment_heads = [[layer, head] for layer in range(LAYERS // 2, LAYERS) for head in range(HEADS)]


def build_tiny_whisper(folder: Path, seed: int = 0) -> Path:
    """Write the model into ``folder`` (created if missing); same seed, same weights. Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    spec = WhisperSpec(LAYERS, HEADS, LAYERS, HEADS)
    _fill_weights(spec, _Init(seed))
    _set_config(spec, tokenizer)
    spec.register_vocabulary([tokenizer.id_to_token(i) for i in range(VOCAB_SIZE)])
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(folder))
    # Written after save(): register_file() copies into the folder and refuses an existing file.
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder
