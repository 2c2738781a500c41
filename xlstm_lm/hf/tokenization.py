"""``XLSTMLMSentencePieceTokenizer``: a transformers tokenizer over the exact sentencepiece model.

Shipped as remote code (``tokenization_xlstm_lm.py``) with exported models whose
tokenizer is sentencepiece. A conversion to a ``tokenizers`` Unigram model is not
exact (tie-breaking between equal-score segmentations differs), so this class
calls sentencepiece itself: ids equal ``SentencePieceTokenizer.encode`` and
``decode(encode(text)) == text``. Special-token strings in the text are not parsed
(``split_special_tokens=True``): text is always encoded as text. Chat templates are
the exception: ``apply_chat_template`` parses them, as the end-of-document token the
exported template writes after every assistant message (a sentencepiece control
symbol, which no text encodes to) must become its id.

This module imports only transformers (and sentencepiece, when instantiated).
"""

from __future__ import annotations

import os

from transformers import PreTrainedTokenizer


class XLSTMLMSentencePieceTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "sentencepiece.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, unk_token="<unk>", eos_token="</s>", pad_token=None, bos_token=None, **kwargs):
        import sentencepiece as spm

        self.vocab_file = vocab_file
        self.sp_model = spm.SentencePieceProcessor(model_file=str(vocab_file))
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(unk_token=unk_token, eos_token=eos_token, pad_token=pad_token, bos_token=bos_token, **kwargs)

    @property
    def vocab_size(self) -> int:
        return int(self.sp_model.get_piece_size())

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return list(self.sp_model.encode(text, out_type=str))

    def _convert_token_to_id(self, token: str) -> int:
        return int(self.sp_model.piece_to_id(token))

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp_model.id_to_piece(int(index))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.sp_model.decode_pieces(list(tokens))

    def apply_chat_template(self, conversation, *args, tokenizer_kwargs=None, **kwargs):
        # The template's special tokens (eos after an assistant message) are tokens, not text.
        tokenizer_kwargs = {"split_special_tokens": False, **(tokenizer_kwargs or {})}
        return super().apply_chat_template(conversation, *args, tokenizer_kwargs=tokenizer_kwargs, **kwargs)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        path = os.path.join(save_directory, name)
        with open(path, "wb") as f:
            f.write(self.sp_model.serialized_model_proto())
        return (path,)


__all__ = ["XLSTMLMSentencePieceTokenizer"]
